"""Semantic segmentation: a class for every pixel ('segmentation').

The model is any network whose output is per-pixel logits at the image's
resolution, usually `config.model.name = 'segmentation'`: a backbone (built
from the nested `config.model.backbone`) and a decoder
(eo_jax/models/decoders/). Batches carry 'mask' (B, H, W) int32 labels; the
dataset's ignore index marks unlabelled pixels.

Training loss (`config.loss`), over the labelled pixels of the batch:
  * cross-entropy, or focal with `focal_gamma` > 0, with `label_smoothing`;
  * `class_weights`: () for none or a tuple of K weights; or
    `class_weighting` 'inverse' / 'median' to derive them from the training
    split's pixel counts (inverse frequency normalised to mean 1 over present
    classes; median-frequency balancing, Eigen & Fergus 2015). Each pixel's
    loss is multiplied by its
    true class's weight and the sum is divided by the number of labelled
    pixels (mmsegmentation's convention), so weights keep their scale;
  * `dice_weight` x the multi-class soft Dice loss (1 - mean over classes of
    2|P.Y| / (|P| + |Y|) on softmax probabilities, labelled pixels only);
  * `aux_weight` x the same loss on 'aux_logits' for decoders with an
    auxiliary head (DeepLabV3+'s FCN head: 0.4).

Evaluation: plain cross-entropy per example (mean over its labelled
pixels) and the predicted classes as integers, computed inside the jitted
step at the label resolution (no float logits travel to the host); the
'segmentation' evaluator accumulates one exact confusion matrix per split
(mIoU, per-class IoU, mean class accuracy, overall accuracy). `visualize`
draws image | truth | prediction | errors for the first examples.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.data.datasets.base import SEGMENTATION, DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.models import build_model
from eo_jax.objectives import losses
from eo_jax.objectives.base import (OBJECTIVES, Objective, StepOutput,
                                    TrainState, Variables, display_bands,
                                    png_name)
from eo_jax.objectives.supervised import apply_model, init_model

#: Examples drawn by `Segmentation.visualize`.
VIS_EXAMPLES = 4


def soft_dice_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array,
                   eps: float = 1.0) -> jax.Array:
  """1 - mean over classes of the soft Dice coefficient on labelled pixels.

  Args:
    logits: (..., K) scores; labels: (...) ints; valid: (...) bool.
    eps: smoothing, so that a class absent from both counts as a match.
  """
  k = logits.shape[-1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), k, dtype=jnp.float32)
  w = valid.astype(jnp.float32)[..., None]
  axes = tuple(range(logits.ndim - 1))
  overlap = jnp.sum(probs * onehot * w, axis=axes)
  total = jnp.sum(probs * w, axis=axes) + jnp.sum(onehot * w, axis=axes)
  return 1.0 - jnp.mean((2.0 * overlap + eps) / (total + eps))


def resolve_class_weights(loss_config: Any, info: DatasetInfo, data_config: Any
                          ) -> tuple[float, ...] | None:
  """The K class weights `config.loss` asks for (None: unweighted)."""
  mode = loss_config.class_weighting
  if mode:
    if mode not in ("inverse", "median"):
      raise ConfigValueError(
          f"config.loss.class_weighting={mode!r}: use 'inverse', 'median' or '' "
          "(or give the weights in config.loss.class_weights).")
    if tuple(loss_config.class_weights):
      raise ConfigValueError("Set config.loss.class_weights or "
                             "config.loss.class_weighting, not both.")
    # Imported here: only these settings need to read the training labels.
    from eo_jax.data import stats as weights_lib  # pylint: disable=g-import-not-at-top
    from eo_jax.data.datasets import build_dataset  # pylint: disable=g-import-not-at-top
    counts = weights_lib.class_pixel_counts(build_dataset(data_config), "train")
    return tuple(float(w) for w in weights_lib.class_weights_from_counts(
        counts, mode=mode))
  weights = tuple(float(w) for w in loss_config.class_weights)
  if weights and len(weights) != info.num_classes:
    raise ConfigValueError(
        f"config.loss.class_weights has {len(weights)} entries but dataset "
        f"{info.name!r} has {info.num_classes} classes {list(info.class_names)}.")
  return weights or None


@OBJECTIVES.register("segmentation")
class Segmentation(Objective):
  """Per-pixel classification (see the module docstring)."""

  main_metric = "miou"
  default_evaluator = "segmentation"
  encoder_prefix = "backbone"

  def __init__(self, config, info: DatasetInfo,
               run_length: tuple[int, int] | None = None):
    super().__init__(config, info, run_length)
    if info.task != SEGMENTATION:
      raise ConfigValueError(
          f"objective 'segmentation' needs per-pixel labels, but dataset "
          f"{info.name!r} is a {info.task} dataset; set its task to "
          "'segmentation' (config.data.task) or pick another dataset.")
    if info.num_classes < 2:
      raise ConfigValueError(f"Dataset {info.name!r} declares {info.num_classes} "
                             "classes; segmentation needs at least 2.")
    self.model = build_model(config.model, bands=info.bands,
                             num_classes=info.num_classes)
    loss = config.loss
    self.weights = resolve_class_weights(loss, info, config.data)
    self.ignore = info.ignore_index
    self.focal_gamma = float(loss.focal_gamma)
    self.label_smoothing = float(loss.label_smoothing)
    self.dice_weight = float(loss.dice_weight)
    self.aux_weight = float(loss.aux_weight)

  # ------------------------------------------------------------ loss
  def pixel_loss(self, logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Weighted CE / focal of every labelled pixel (0 on ignored ones)."""
    kwargs = dict(label_smoothing=self.label_smoothing,
                  class_weights=self.weights, ignore_index=self.ignore)
    if self.focal_gamma > 0:
      return losses.focal_loss(logits, mask, gamma=self.focal_gamma, **kwargs)
    return losses.cross_entropy(logits, mask, **kwargs)

  def _valid(self, mask: jax.Array) -> jax.Array:
    return (jnp.ones(mask.shape, bool) if self.ignore is None
            else mask != self.ignore)

  def _head_loss(self, logits: jax.Array, mask: jax.Array) -> jax.Array:
    valid = self._valid(mask)
    count = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(self.pixel_loss(logits, mask)) / count
    if self.dice_weight:
      loss = loss + self.dice_weight * soft_dice_loss(logits, mask, valid)
    return loss

  @classmethod
  def encoder_model_config(cls, model_config: Any) -> Any:
    # config.model is the whole segmenter; the encoder is its backbone.
    return model_config.backbone if "backbone" in model_config else model_config

  def init(self, rng, batch) -> Variables:
    return init_model(self.model, rng, batch["image"])

  def loss(self, params, state: TrainState, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, StepOutput]:
    logits, features, model_state = apply_model(
        self.model, params, state.model_state, batch["image"], train=True, rng=rng)
    mask = batch["mask"]
    main = self._head_loss(logits, mask)
    total = main
    metrics = {"pixel_accuracy": _pixel_accuracy(logits, mask, self._valid(mask))}
    if self.aux_weight and "aux_logits" in features:
      aux = self._head_loss(features["aux_logits"], mask)
      total = total + self.aux_weight * aux
      metrics.update(main_loss=main, aux_loss=aux)
    return total, StepOutput(metrics=metrics, model_state=model_state,
                             extra=state.extra)

  # ------------------------------------------------------------ eval
  def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    logits, _, _ = apply_model(self.model, state.params, state.model_state,
                               batch["image"], train=False)
    mask = batch["mask"]
    valid = self._valid(mask)
    # Plain cross-entropy: weights, smoothing and Dice are training devices.
    ce = losses.cross_entropy(logits, mask, ignore_index=self.ignore)
    per_example = (jnp.sum(ce, axis=(1, 2))
                   / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1))
    return {"pred": jnp.argmax(logits, axis=-1).astype(jnp.int32),
            "mask": mask, "loss": per_example}

  def predict(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, H, W, K) float32 class logits of normalised images."""
    logits, _, _ = apply_model(self.model, state.params, state.model_state,
                               image, train=False)
    return logits.astype(jnp.float32)

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    _, features, _ = apply_model(self.model, state.params, state.model_state,
                                 image, train=False)
    return features["pre_logits"].astype(jnp.float32)

  def backbones(self) -> dict[str, Any]:
    return {"": self.model}

  def loss_note(self) -> str:
    note = losses.describe_loss(self.config.loss)
    extras = [f"{w:g} x {name}" for w, name in ((self.dice_weight, "Dice"),
                                                (self.aux_weight, "aux head"))
              if w]
    if extras:
      note = (note or "train: CE, val: plain CE") + " + " + " + ".join(extras)
    return note

  # ------------------------------------------------------- pictures
  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    from eo_jax.visualize import segmentation_maps  # pylint: disable=g-import-not-at-top
    from eo_jax.visualize.figures import rgb_composite  # pylint: disable=g-import-not-at-top
    n = min(VIS_EXAMPLES, len(batch["image"]))
    if n == 0:
      return {}
    if not hasattr(self, "_predict_fn"):
      self._predict_fn = jax.jit(self.eval_step)
    host = lambda tree: jax.tree.map(
        lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)
    out = jax.device_get(self._predict_fn(
        host(state), {"image": np.asarray(batch["image"][:n], np.float32),
                      "mask": np.asarray(batch["mask"][:n], np.int32)}))
    indices, shown = display_bands(self.info)
    figure = segmentation_maps.plot_segmentation(
        rgb_composite(np.asarray(batch["image"][:n]), indices),
        np.asarray(batch["mask"][:n]), np.asarray(out["pred"]),
        list(self.info.class_names), ignore_index=self.ignore, show_errors=True,
        title=(f"{self.info.name} {split}, step {step}: image (RGB = {shown}) | "
               "truth | prediction | errors"))
    return {png_name("segmentation", split): figure}


def _pixel_accuracy(logits: jax.Array, mask: jax.Array, valid: jax.Array) -> jax.Array:
  hits = (jnp.argmax(logits, -1) == mask) & valid
  return jnp.sum(hits) / jnp.maximum(jnp.sum(valid), 1)
