"""The objective interface shared by every training objective.

The trainer knows nothing about what it trains. An objective owns its
modules (model, decoder, teacher, heads) and tells the trainer:

* `init(rng, batch)` -> `Variables(params, model_state, extra)`: trainable
  parameters, non-trainable model collections (e.g. BatchNorm statistics) and
  objective state the optimiser never touches (teacher parameters, centres).
* `loss(params, state, batch, rng)` -> `(loss, StepOutput)`: differentiated
  with respect to `params` only; `StepOutput` carries scalar metrics and the
  new model state / extra state.
* `after_update(state)` -> new `extra` once the optimiser has stepped (EMA
  teachers live here). Default: unchanged.
* `eval_step(state, batch)` -> dict of per-example arrays (leading axis =
  batch); the evaluator named `default_evaluator` (eo_jax/evaluate/)
  accumulates them exactly over a whole split. `eval_fn(name)` gives the
  functions evaluators may ask for by name: 'eval' (`eval_step`) and, for
  objectives that can `embed`, 'embed' ({'features': (B, D)}).
* `embed(state, image)` -> (B, D) features for frozen-feature probes
  (optional; `has_embed` says whether the objective has it).
* `diagnostics(state, image)` -> per-example arrays for the 'collapse'
  evaluator (eo_jax/evaluate/collapse.py): 'cls' (B, D) and 'patch'
  (B, N, D) embeddings, plus any per-example scalars and a 'prototype'
  index (optional; `has_diagnostics`); `eval_fn('diagnostics')` gives it.
* `predict(state, image)` -> what the model predicts for images (class
  logits, label-map logits, reconstructions); optional, for `Run.predict`.
* `visualize(state, batch, step, split)` -> {path relative to the workdir:
  matplotlib Figure}, pictures drawn from the first eval batch of `split`
  (optional); the trainer saves them as PNGs.
* `train_views()` -> `views_fn(image, rng) -> {name: array}` or None
  (default). Objectives that train on several views of each example (DINO's
  global and local crops, `data.multicrop.MultiCrop`) return one; the
  training pipeline then feeds it each normalised, un-augmented image and
  that example's generator, and training batches carry the stacked views
  (e.g. 'global_crops' (B, 2, G, G, C)) instead of 'image'. Eval batches are
  unchanged.
* `backbones()` -> {parameter prefix: backbone module}: where the networks
  that meet the backbone contract (eo_jax/models/backbone.py) sit in
  `params`, for `config.init_from` and layer-wise learning-rate decay.

Objectives register with `@OBJECTIVES.register('name')`; the factory is
called as `factory(config, info, run_length=(steps per epoch, total steps))`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import ml_collections
import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.errors import ConfigError
from eo_jax.models import build_model
from eo_jax.models.backbone import TokenBackbone, require_token_backbone
from eo_jax.registry import Registry

PyTree = Any


class UnsupportedError(ValueError):
  """An optional part of the objective contract that this objective lacks."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree
  extra: PyTree


@dataclasses.dataclass
class Variables:
  params: PyTree
  model_state: PyTree = dataclasses.field(default_factory=dict)
  extra: PyTree = dataclasses.field(default_factory=dict)


@flax.struct.dataclass
class StepOutput:
  metrics: dict[str, jax.Array]
  model_state: PyTree
  extra: PyTree


def objective_settings(section: str, given: Mapping[str, Any] | None,
                       defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`defaults` updated by `given` (config.<section>); unknown keys fail.

  The error names the section, the unknown keys and the known ones.
  """
  given = dict(given) if given is not None else {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ConfigError(f"Unknown config.{section} keys {unknown}; "
                   f"known: {sorted(defaults)}.")
  return {**defaults, **given}


def token_backbone(config: ml_collections.ConfigDict, info: DatasetInfo,
                   objective: str, why: str) -> TokenBackbone:
  """`config.model` built for `info`'s bands without a head; it must be a
  token backbone (a ViT or another token model).

  Args:
    config: the experiment config.
    info: the training data's description.
    objective: the objective's registered name, for the error.
    why: what the objective does with patch tokens, for the error.
  """
  model = build_model(config.model, bands=info.bands, num_classes=0)
  return require_token_backbone(model, f"objective {objective!r}", why)


def prefixed_layer_id(backbones: Mapping[str, Any], path: str) -> int:
  """Layer-wise decay depth of `path` in an objective's parameter tree.

  Parameters under a backbone's prefix take the backbone's own `layer_id`;
  everything else (heads, decoders, prototypes) sits at the top depth of
  the deepest backbone, so it trains at the undecayed rate.
  """
  for prefix, model in backbones.items():
    if not prefix:
      return model.layer_id(path)
    if path.startswith(prefix + "/"):
      return model.layer_id(path[len(prefix) + 1:])
  return max(model.num_layers() for model in backbones.values())


def png_name(stem: str, split: str) -> str:
  """'<stem>.png' for the validation split, '<stem>_<split>.png' otherwise.

  Every evaluation of 'val' refreshes the same picture; a final evaluation of
  another split (e.g. 'test') gets its own file instead of overwriting it.
  """
  return f"{stem}.png" if split == "val" else f"{stem}_{split}.png"


def display_bands(info: DatasetInfo) -> tuple[list[int], str]:
  """Band indices to draw as RGB (or one grey band) and a label for titles."""
  rgb = info.rgb_bands
  if len(rgb) == 3:
    return list(bands_lib.indices(info.bands, rgb)), ", ".join(rgb)
  return [0], f"band {info.bands[0].name}"


class Objective(abc.ABC):
  """Base class; see the module docstring for the contract."""

  #: Metric the trainer uses as "the" validation score by default.
  main_metric: str = "loss"
  #: The evaluator (eo_jax/evaluate/) of `config.evals` entries without a type.
  default_evaluator: str = "mean"
  #: Where a downstream run finds the encoder in this objective's params
  #: (`config.init_from.source_prefix`); '' = the whole tree.
  encoder_prefix: str = ""

  @classmethod
  def encoder_model_config(cls, model_config: Any) -> Any:
    """The model config that builds the encoder at `encoder_prefix`: the
    run's `config.model` itself, unless the objective nests it."""
    return model_config

  def __init__(self, config: ml_collections.ConfigDict, info: DatasetInfo,
               run_length: tuple[int, int] | None = None):
    """Builds the objective's modules.

    Args:
      config: the experiment config.
      info: the training dataset's description (bands, classes).
      run_length: (steps per epoch, total steps) as the trainer counts them,
        for objectives with schedules of their own; None lets them count
        (which builds the dataset again).
    """
    self.config = config
    self.info = info
    self.run_length = run_length
    self._eval_fns: dict[str, Callable] = {}

  @abc.abstractmethod
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Variables:
    """The initial variables, shaped for `batch` (a training batch)."""

  @abc.abstractmethod
  def loss(self, params: PyTree, state: TrainState,
           batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, StepOutput]:
    """The training loss of `batch` and what the step reports and carries."""

  def after_update(self, state: TrainState) -> PyTree:
    return state.extra

  def after_init_from(self, params: PyTree, extra: PyTree) -> PyTree:
    """`extra` for `params` that `config.init_from` has just overwritten.

    Extra state derived from the parameters at init (an EMA teacher that
    starts as the student) must follow them, or it would keep the random
    initial values. The default has nothing to derive.
    """
    del params
    return extra

  @abc.abstractmethod
  def eval_step(self, state: TrainState,
                batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-example evaluation outputs of an eval batch."""

  @abc.abstractmethod
  def backbones(self) -> dict[str, Any]:
    """{parameter prefix ('' = the whole tree): backbone module}."""

  def layer_id(self, path: str) -> int:
    """Depth of parameter `path` for layer-wise lr decay (see
    `prefixed_layer_id`)."""
    return prefixed_layer_id(self.backbones(), path)

  def loss_note(self) -> str:
    """How the training loss differs from the validation loss, for the loss
    panel of curves.png ('' when they are the same quantity)."""
    return ""

  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    """Pictures for a human from `split`'s first batch: {relative path: Figure}."""
    del state, batch, step, split
    return {}

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, D) image features for frozen-feature probes (kNN, linear).

    Optional (see `has_embed`): objectives without it are not probed.
    """
    raise UnsupportedError(f"objective {type(self).__name__} has no embed.")

  def predict(self, state: TrainState, image: jax.Array) -> jax.Array:
    """What the model predicts for normalised images (optional)."""
    raise UnsupportedError(f"objective {type(self).__name__} does not predict; "
                           "use embed() for features.")

  def diagnostics(self, state: TrainState, image: jax.Array) -> dict[str, jax.Array]:
    """Per-example collapse diagnostics inputs (optional, see the module
    docstring and `has_diagnostics`)."""
    raise UnsupportedError(f"objective {type(self).__name__} has no diagnostics.")

  @property
  def has_embed(self) -> bool:
    return type(self).embed is not Objective.embed

  @property
  def has_diagnostics(self) -> bool:
    return type(self).diagnostics is not Objective.diagnostics

  def eval_fn(self, name: str) -> Callable:
    """The per-example function evaluators call by name, one object per name
    (so the evaluation runner compiles it once)."""
    if name not in self._eval_fns:
      if name == "eval":
        self._eval_fns[name] = self.eval_step
      elif name == "embed" and self.has_embed:
        self._eval_fns[name] = lambda state, batch: {
            "features": self.embed(state, batch["image"])}
      elif name == "diagnostics" and self.has_diagnostics:
        self._eval_fns[name] = lambda state, batch: self.diagnostics(
            state, batch["image"])
      else:
        known = (["eval"] + (["embed"] if self.has_embed else [])
                 + (["diagnostics"] if self.has_diagnostics else []))
        raise ConfigError(f"objective {type(self).__name__} has no eval function "
                       f"{name!r}; it has {known}.")
    return self._eval_fns[name]

  def train_views(self) -> Callable[[np.ndarray, np.random.Generator],
                                    dict[str, np.ndarray]] | None:
    """The per-example views function of the training pipeline, or None.

    None (the default) keeps the standard batches: 'image' with the
    config's augmentations. A function `views_fn(image, rng)` receives one
    resized, normalised (H, W, C) float32 training image and its
    deterministic generator and returns fixed-shape arrays (e.g.
    `MultiCrop(...)`: 'global_crops' (2, G, G, C), 'local_crops'
    (L, l, l, C)); batches then hold those stacked along a leading batch axis,
    plus 'label' / 'mask' when the dataset has them, and no 'image'. It runs
    in the input pipeline's threads or worker processes, so it must be
    picklable and must not touch jax.
    """
    return None


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective")
