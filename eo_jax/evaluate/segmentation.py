"""Exact semantic-segmentation metrics over a split, from a confusion matrix.

`SegmentationMetrics` adds each batch's pixels to one (K, K) integer
confusion matrix, so the result is independent of batching, and pixels
whose mask equals `ignore_index` are not counted. The 'segmentation'
evaluator (config.evals) feeds it an objective's eval outputs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from eo_jax.evaluate import metrics
from eo_jax.evaluate.classification import class_names_or_default
from eo_jax.evaluate.common import EVALUATORS, PredictionEvaluator


class SegmentationMetrics:
  """mIoU, mean class accuracy, pixel accuracy, per-class IoU, confusion.

  `update(outputs)` takes a mapping with
    'pred' (n, H, W) integer classes, or 'logits' (n, H, W, K) (arg-maxed);
    'mask' (n, H, W) integer ground truth, `ignore_index` where unlabelled;
    'loss' (n,) per-example losses, optional.

  `result()` returns {'miou' (over classes in GT or predictions), 'mean_acc'
  (over classes in GT), 'overall_acc', 'iou/<class>' (NaN for a class in
  neither), 'loss' (when given), 'confusion_matrix' (K, K) int64, rows = GT}.
  """

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
               ignore_index: int | None = None):
    self.class_names = class_names_or_default(num_classes, class_names)
    self.num_classes = num_classes
    self.ignore_index = ignore_index
    self.reset()

  def reset(self) -> None:
    self._cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    self._losses: list[np.ndarray] = []

  def update(self, outputs: Mapping[str, Any]) -> None:
    if "mask" not in outputs:
      raise KeyError(f"Segmentation outputs need 'mask'; got {sorted(outputs)}.")
    mask = np.asarray(outputs["mask"])
    if "pred" in outputs:
      pred = np.asarray(outputs["pred"])
    elif "logits" in outputs:
      logits = np.asarray(outputs["logits"])
      if logits.shape[-1] != self.num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes in the last "
                         f"axis; expected {self.num_classes}.")
      pred = logits.argmax(axis=-1)
    else:
      raise KeyError("Segmentation outputs need 'pred' or 'logits'; got "
                     f"{sorted(outputs)}.")
    if pred.shape != mask.shape:
      raise ValueError(f"Predictions {pred.shape} and mask {mask.shape} differ "
                       "in shape; resize the prediction to the mask first.")
    self._cm += metrics.confusion_matrix(mask, pred, self.num_classes,
                                         ignore_index=self.ignore_index)
    if "loss" in outputs:
      self._losses.append(np.asarray(outputs["loss"], np.float64).reshape(-1))

  def result(self) -> dict[str, Any]:
    if self._cm.sum() == 0:
      raise ValueError("SegmentationMetrics.result() before any labelled "
                       "pixel was given to update().")
    cm = self._cm.copy()
    out: dict[str, Any] = {
        "miou": metrics.mean_iou(cm),
        "mean_acc": metrics.mean_class_accuracy(cm),
        "overall_acc": metrics.accuracy(cm),
    }
    if self._losses:
      out["loss"] = float(np.concatenate(self._losses).mean())
    for name, value in zip(self.class_names, metrics.iou_per_class(cm)):
      out[f"iou/{name}"] = float(value)
    out["confusion_matrix"] = cm
    return out


@EVALUATORS.register("segmentation")
class SegmentationEvaluator(PredictionEvaluator):
  """mIoU, mean class accuracy, overall accuracy, per-class IoU, confusion.

  The eval function must return 'pred' or 'logits' and 'mask' per example;
  pixels at the dataset's ignore index are not counted.
  """

  def make_metrics(self) -> SegmentationMetrics:
    return SegmentationMetrics(self.info.num_classes, self.info.class_names,
                               ignore_index=self.info.ignore_index)
