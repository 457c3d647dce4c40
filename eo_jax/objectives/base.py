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
* `eval_step(state, batch)` -> dict of per-example arrays (leading axis = batch)
  that `evaluator(split)` accumulates exactly over a whole split on the host.
* `visualize(state, batch, workdir, step, split)` writes PNGs at eval time
  (optional) from the first batch of `split`; `png_name` names them.
* `embed(state, image)` -> (B, D) features for the kNN / linear probes that the
  trainer runs on `config.probe.data` at eval time (optional).
* `train_views()` -> `views_fn(image, rng) -> {name: array}` or None
  (default). Objectives that train on several views of each example (DINO's
  global and local crops, `data.multicrop.MultiCrop`) return one; the
  training pipeline then feeds it each normalised, un-augmented image and
  that example's generator, and training batches carry the stacked views
  (e.g. 'global_crops' (B, 2, G, G, C)) instead of 'image'. Eval batches are
  unchanged.

Objectives register with `@OBJECTIVES.register('name')`; the factory is
called as `factory(config, info)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import flax
import jax
import ml_collections
import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.models import build_model
from eo_jax.models import vit as vit_lib
from eo_jax.registry import Registry

PyTree = Any


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


class Evaluator(Protocol):
  """Accumulates per-example eval outputs on the host, then summarises."""

  def update(self, outputs: Mapping[str, Any]) -> None: ...

  def result(self) -> dict[str, Any]:
    """Scalars (written to the metric writers) and arrays (plotted)."""
    ...


def objective_settings(section: str, given: Mapping[str, Any] | None,
                       defaults: Mapping[str, Any]) -> dict[str, Any]:
  """`defaults` updated by `given` (config.<section>); unknown keys fail.

  The error names the section, the unknown keys and the known ones.
  """
  given = dict(given) if given is not None else {}
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise KeyError(f"Unknown config.{section} keys {unknown}; "
                   f"known: {sorted(defaults)}.")
  return {**defaults, **given}


def vit_backbone(config: ml_collections.ConfigDict, info: DatasetInfo,
                 objective: str, why: str) -> vit_lib.ViT:
  """`config.model` built for `info`'s bands without a head; it must be a ViT.

  Args:
    config: the experiment config.
    info: the training data's description.
    objective: the objective's registered name, for the error.
    why: what the objective does with patch tokens, for the error.
  """
  model = build_model(config.model, bands=info.bands, num_classes=0)
  if not isinstance(model, vit_lib.ViT):
    raise ValueError(
        f"objective {objective!r} {why} and needs a ViT; config.model.name="
        f"{config.model.name!r} builds a {type(model).__name__}. Set "
        "config.model.name='vit'.")
  return model


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


class Objective:
  """Base class; see the module docstring for the contract."""

  #: Metric the trainer uses as "the" validation score by default.
  main_metric: str = "loss"

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

  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Variables:
    raise NotImplementedError

  def loss(self, params: PyTree, state: TrainState,
           batch: Mapping[str, jax.Array], rng: jax.Array
           ) -> tuple[jax.Array, StepOutput]:
    raise NotImplementedError

  def after_update(self, state: TrainState) -> PyTree:
    return state.extra

  def eval_step(self, state: TrainState,
                batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    raise NotImplementedError

  def evaluator(self, split: str) -> Evaluator:
    raise NotImplementedError

  def visualize(self, state: TrainState, batch: Mapping[str, Any],
                workdir: str, step: int, split: str = "val") -> list[str]:
    """Writes PNGs for a human from `split`'s first batch; returns their paths."""
    del state, batch, workdir, step, split
    return []

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, D) image features for frozen-feature probes (kNN, linear).

    Optional: objectives without it are not probed.
    """
    raise NotImplementedError

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

  def epoch_hook(self, epoch: float) -> None:
    """Called by the trainer on the host; for schedules driven by epochs."""


OBJECTIVES: Registry[Callable[..., Objective]] = Registry("objective")
