"""Exact classification metrics over a split, accumulated batch by batch.

`ClassificationMetrics.update` receives one batch of per-example outputs
(already stripped of padding, on the host); `result` summarises the whole
split. Counts and score lists are kept in full, so the result does not
depend on how the split was cut into batches. The 'classification'
evaluator (config.evals) feeds it an objective's eval outputs.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import scipy.special

from eo_jax.errors import ConfigValueError
from eo_jax.evaluate import metrics
from eo_jax.evaluate.common import EVALUATORS, PredictionEvaluator


def class_names_or_default(num_classes: int,
                           class_names: Sequence[str] | None) -> tuple[str, ...]:
  """`class_names` checked against `num_classes`, or '0', '1', ... if None."""
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}.")
  if class_names is None or len(class_names) == 0:
    return tuple(str(i) for i in range(num_classes))
  if len(class_names) != num_classes:
    raise ValueError(f"Got {len(class_names)} class names for {num_classes} "
                     f"classes: {list(class_names)}.")
  return tuple(str(n) for n in class_names)


class ClassificationMetrics:
  """Accuracy, macro-F1, mAP, mean loss, per-class F1 and the confusion matrix.

  `update(outputs)` takes a mapping with
    'logits' (n, K) or 'scores' (n, K): logits are turned into softmax
        probabilities for average precision; scores are ranked as given;
    'label' (n,) integer classes;
    'loss' (n,) per-example losses, optional.

  `result()` returns {'accuracy', 'macro_f1' (over classes present in labels
  or predictions), 'map' (over classes with positives), 'loss' (mean
  per-example loss, when losses were given), 'f1/<class>' for every class,
  'confusion_matrix' (K, K) int64, rows = true class}.
  """

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
    self.class_names = class_names_or_default(num_classes, class_names)
    self.num_classes = num_classes
    self.reset()

  def reset(self) -> None:
    self._cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    self._labels: list[np.ndarray] = []
    self._scores: list[np.ndarray] = []
    self._losses: list[np.ndarray] = []
    self._has_loss: bool | None = None

  def update(self, outputs: Mapping[str, Any]) -> None:
    if "label" not in outputs:
      raise KeyError(f"Classification outputs need 'label'; got {sorted(outputs)}.")
    labels = np.asarray(outputs["label"]).reshape(-1)
    if "logits" in outputs:
      logits = np.asarray(outputs["logits"], np.float64)
      scores = scipy.special.softmax(logits, axis=-1) if logits.size else logits
    elif "scores" in outputs:
      scores = np.asarray(outputs["scores"], np.float64)
    else:
      raise KeyError("Classification outputs need 'logits' or 'scores'; got "
                     f"{sorted(outputs)}.")
    if scores.shape != (labels.shape[0], self.num_classes):
      raise ValueError(
          f"Expected scores of shape ({labels.shape[0]}, {self.num_classes}) "
          f"for {labels.shape[0]} labels and {self.num_classes} classes; got "
          f"{scores.shape}.")
    preds = scores.argmax(axis=-1) if len(labels) else labels
    self._cm += metrics.confusion_matrix(labels, preds, self.num_classes)
    self._labels.append(labels.astype(np.int64))
    self._scores.append(scores)
    self._update_loss(outputs, labels.shape[0])

  def _update_loss(self, outputs: Mapping[str, Any], n: int) -> None:
    has_loss = "loss" in outputs
    if self._has_loss is not None and has_loss != self._has_loss:
      raise ValueError("Some batches carry 'loss' and others do not; the mean "
                       "loss would cover part of the split only.")
    self._has_loss = has_loss
    if has_loss:
      loss = np.asarray(outputs["loss"], np.float64).reshape(-1)
      if loss.shape[0] != n:
        raise ValueError(f"Got {loss.shape[0]} per-example losses for {n} "
                         "examples; 'loss' must be (n,).")
      self._losses.append(loss)

  def result(self) -> dict[str, Any]:
    if self._cm.sum() == 0:
      raise ValueError("ClassificationMetrics.result() before any example "
                       "was given to update().")
    cm = self._cm.copy()
    _, _, f1 = metrics.precision_recall_f1(cm)
    out: dict[str, Any] = {
        "accuracy": metrics.accuracy(cm),
        "macro_f1": metrics.macro_f1(cm, over="present"),
        "map": metrics.mean_average_precision(np.concatenate(self._labels),
                                              np.concatenate(self._scores)),
    }
    if self._has_loss:
      # Mean of the concatenation, so batching cannot change the rounding.
      out["loss"] = float(np.concatenate(self._losses).mean())
    for name, value in zip(self.class_names, f1):
      out[f"f1/{name}"] = float(value)
    out["confusion_matrix"] = cm
    return out


@EVALUATORS.register("classification")
class ClassificationEvaluator(PredictionEvaluator):
  """Accuracy, macro-F1, mAP, loss, per-class F1 and the confusion matrix.

  The eval function must return 'logits' (or 'scores') and 'label' per
  example (the 'supervised' objective's `eval_step` does); see
  `PredictionEvaluator` for the settings.
  """

  def make_metrics(self) -> ClassificationMetrics:
    objective_classes = tuple(self.context.objective.info.class_names)
    if tuple(self.info.class_names) != objective_classes:
      raise ConfigValueError(
          f"config.evals.{self.name}: dataset {self.info.name!r} has classes "
          f"{list(self.info.class_names)}, the model predicts "
          f"{list(objective_classes)}.")
    return ClassificationMetrics(self.info.num_classes, self.info.class_names)
