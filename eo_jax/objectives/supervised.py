"""Supervised image classification: one label per image.

Cross-entropy (with label smoothing and class weights) or focal loss from
`config.loss`; evaluation reports accuracy, macro-F1, per-class F1, mAP and
the confusion matrix, computed exactly over the whole split.
Models that expose per-location class evidence (features['local_logits']
and a receptive field `rf`, e.g. BagNets) also get evidence heatmaps at
every evaluation, in workdir/heatmaps/. `config.evals` entries without a
type use the 'classification' evaluator.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.data.datasets.base import CLASSIFICATION, DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.models import build_model
from eo_jax.objectives import losses
from eo_jax.objectives.base import (OBJECTIVES, Objective, StepOutput,
                                    TrainState, Variables)
from eo_jax.visualize import heatmaps


def apply_model(model, params, model_state, image, *, train: bool,
                rng: jax.Array | None = None, **kwargs) -> tuple[Any, dict, Any]:
  """Runs a model; in training mode also returns its updated collections."""
  variables = {"params": params, **model_state}
  rngs = {"dropout": rng} if rng is not None else {}
  if train and model_state:
    (output, features), new_state = model.apply(
        variables, image, train=True, rngs=rngs, mutable=list(model_state), **kwargs)
    return output, features, dict(new_state)
  output, features = model.apply(variables, image, train=train, rngs=rngs, **kwargs)
  return output, features, model_state


def init_model(model, rng: jax.Array, image: jax.Array) -> Variables:
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, image,
                         train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return Variables(params=params, model_state=variables)


@OBJECTIVES.register("supervised")
class Supervised(Objective):
  """Classifies whole images; the model's output is class logits."""

  main_metric = "accuracy"
  default_evaluator = "classification"

  def __init__(self, config, info: DatasetInfo,
               run_length: tuple[int, int] | None = None):
    super().__init__(config, info, run_length)
    if info.task != CLASSIFICATION:
      raise ConfigValueError(
          f"objective 'supervised' classifies images, but dataset {info.name!r} "
          f"is a {info.task} dataset. Pick another objective or dataset.")
    if info.num_classes < 2:
      raise ConfigValueError(f"Dataset {info.name!r} declares {info.num_classes} classes; "
                       "classification needs at least 2.")
    self.model = build_model(config.model, bands=info.bands,
                             num_classes=info.num_classes)
    # Set on the first `visualize` call.
    self._has_local_logits: bool | None = None
    self._local_logits_fn = None

  def init(self, rng, batch) -> Variables:
    return init_model(self.model, rng, batch["image"])

  def loss(self, params, state: TrainState, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, StepOutput]:
    logits, _, model_state = apply_model(self.model, params, state.model_state,
                                         batch["image"], train=True, rng=rng)
    per_example = losses.classification_loss(logits, batch["label"], self.config.loss)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return per_example.mean(), StepOutput(
        metrics={"accuracy": accuracy}, model_state=model_state, extra=state.extra)

  def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    logits, _, _ = apply_model(self.model, state.params, state.model_state,
                               batch["image"], train=False)
    # Plain cross-entropy: smoothing and weights are training devices, and an
    # unmodified loss keeps validation losses comparable across configs.
    loss = losses.cross_entropy(logits, batch["label"])
    return {"logits": logits.astype(jnp.float32), "label": batch["label"], "loss": loss}

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    _, features, _ = apply_model(self.model, state.params, state.model_state,
                                 image, train=False)
    return features["pre_logits"].astype(jnp.float32)

  def predict(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, K) class logits of normalised images."""
    logits, _, _ = apply_model(self.model, state.params, state.model_state,
                               image, train=False)
    return logits.astype(jnp.float32)

  def backbones(self) -> dict[str, Any]:
    return {"": self.model}

  def loss_note(self) -> str:
    return losses.describe_loss(self.config.loss)

  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    """Evidence heatmaps of the first examples, for models with local logits.

    Applies when the model's features hold 'local_logits' (B, h, w, K) and
    the model reports where those locations look as `rf` = (size, jump,
    offset) in input pixels (BagNets do). For each of the first
    `HEATMAP_EXAMPLES` examples it writes the evidence for the true class
    (ex<i>_true_<class>.png) and for the predicted one (ex<i>_pred_<class>.png),
    or one ex<i>_true_pred_<class>.png when they agree, over an RGB composite
    of `info.rgb_bands` (else the first bands), named
    heatmaps/<split>_step_<step>/... Other models: no pictures.
    """
    if self._has_local_logits is None:
      self._has_local_logits = _has_local_logits(self.model, state, batch)
    if not self._has_local_logits:
      return {}
    rf = getattr(self.model, "rf", None)
    if rf is None:
      logging.warning("The model returns 'local_logits' but no receptive "
                      "field (`rf`); drawing no evidence heatmaps.")
      self._has_local_logits = False
      return {}
    images = np.asarray(batch["image"][:HEATMAP_EXAMPLES], np.float32)
    labels = np.asarray(batch["label"][:HEATMAP_EXAMPLES])
    if self._local_logits_fn is None:
      self._local_logits_fn = jax.jit(lambda p, s, x: apply_model(
          self.model, p, s, x, train=False)[1]["local_logits"])
    local = np.asarray(self._local_logits_fn(
        _host_copy(state.params), _host_copy(state.model_state), images))

    folder = f"heatmaps/{split}_step_{step:06d}"
    bands = self.info.bands
    rgb = self.info.rgb_bands or tuple(range(3 if len(bands) >= 3 else 1))
    names = self.info.class_names
    probs = np.asarray(jax.nn.softmax(local.mean(axis=(1, 2)), axis=-1))
    figures = {}
    for i, (image, label) in enumerate(zip(images, labels)):
      pred = int(np.argmax(probs[i]))
      # A correct prediction's map is the true class's: one file, not two.
      drawn = ([("true_pred", int(label))] if pred == int(label)
               else [("true", int(label)), ("pred", pred)])
      for kind, k in drawn:
        heat = heatmaps.evidence_map(local[i], k, image.shape[:2], rf.jump,
                                     rf.offset, rf.size)
        role = {"true": "true", "pred": "predicted",
                "true_pred": "true = predicted"}[kind]
        slug = re.sub(r"[^A-Za-z0-9]+", "_", names[k]).strip("_")
        figures[f"{folder}/ex{i}_{kind}_{slug}.png"] = heatmaps.plot_evidence(
            image, rgb, heat, class_name=f"{names[k]} ({role}, p={probs[i, k]:.2f})",
            bands=bands)
    return figures


#: Examples of the first eval batch drawn by `Supervised.visualize`.
HEATMAP_EXAMPLES = 4


def _has_local_logits(model, state: TrainState, batch: Mapping[str, Any]) -> bool:
  """Whether the model's features include 'local_logits' (shapes only)."""
  image = jax.ShapeDtypeStruct(np.shape(batch["image"][:1]), jnp.float32)
  _, features, _ = jax.eval_shape(
      lambda p, s, x: apply_model(model, p, s, x, train=False),
      _host_copy(state.params), _host_copy(state.model_state), image)
  return "local_logits" in features


def _host_copy(tree: Any) -> Any:
  # Replicated arrays of a multi-process run are not fully addressable, and
  # only process 0 draws; its own replica is the whole array.
  return jax.tree.map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
