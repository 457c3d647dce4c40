"""Supervised image classification: one label per image.

Cross-entropy (with label smoothing and class weights) or focal loss from
`config.loss`; evaluation reports accuracy, macro-F1, per-class F1, mAP and
the confusion matrix, computed exactly over the whole split.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from eo_jax.data.datasets.base import CLASSIFICATION, DatasetInfo
from eo_jax.evaluate.classification import ClassificationEvaluator
from eo_jax.models import build_model
from eo_jax.objectives import losses
from eo_jax.objectives.base import (OBJECTIVES, Objective, StepOutput,
                                    TrainState, Variables)


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

  def __init__(self, config, info: DatasetInfo):
    super().__init__(config, info)
    if info.task != CLASSIFICATION:
      raise ValueError(
          f"objective 'supervised' classifies images, but dataset {info.name!r} "
          f"is a {info.task} dataset. Pick another objective or dataset.")
    if info.num_classes < 2:
      raise ValueError(f"Dataset {info.name!r} declares {info.num_classes} classes; "
                       "classification needs at least 2.")
    self.model = build_model(config.model, bands=info.bands,
                             num_classes=info.num_classes)
    # Models that map parameter paths to depths (ViTs) enable layer-wise
    # learning-rate decay; the trainer looks for `layer_id` on the objective.
    if hasattr(self.model, "layer_id"):
      self.layer_id = self.model.layer_id

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

  def evaluator(self, split: str) -> ClassificationEvaluator:
    return ClassificationEvaluator(self.info.num_classes, self.info.class_names)
