"""Exact evaluation metrics over a whole split, in numpy.

Everything is computed from integer counts (a confusion matrix) or from the
full list of scores, so a split evaluated in any number of batches gives the
same numbers as one evaluated at once.

Conventions for classes that have no examples:

* precision, recall and F1 of a class whose denominator is zero take the
  value `zero_division` (0.0 by default), as scikit-learn's
  `zero_division=0`. F1 is computed as 2 TP / (2 TP + FP + FN), so a class
  never predicted but present in the labels has F1 = 0.
* `macro_f1(cm, over='present')` averages over classes that occur in the
  labels or the predictions (scikit-learn's `f1_score(average='macro')`
  without `labels=`); `over='labels'` over classes in the labels only;
  `over='all'` over every class (scikit-learn with `labels=range(K)`).
* average precision of a class without positives is NaN; `mean_average_
  precision` averages over classes that have positives.
* IoU of a class absent from both ground truth and predictions is NaN;
  `mean_iou` averages over classes present in either. `mean_class_accuracy`
  averages recall over classes present in the ground truth.
"""
from __future__ import annotations

import numpy as np

_OVER = ("present", "labels", "all")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
  """Counts of (true class, predicted class) pairs.

  Args:
    labels: integer true classes, any shape.
    preds: integer predicted classes, the same shape as `labels`.
    num_classes: K; classes are 0..K-1.
    ignore_index: label value whose positions are not counted (e.g. 255 for
      unlabelled pixels); predictions there are not checked.

  Returns:
    (K, K) int64 array, rows = true class, columns = predicted class.
  """
  labels = np.asarray(labels)
  preds = np.asarray(preds)
  if labels.shape != preds.shape:
    raise ValueError(f"labels {labels.shape} and preds {preds.shape} must have "
                     "the same shape.")
  if num_classes <= 0:
    raise ValueError(f"num_classes must be positive, got {num_classes}.")
  labels = labels.reshape(-1).astype(np.int64)
  preds = preds.reshape(-1).astype(np.int64)
  if ignore_index is not None:
    keep = labels != ignore_index
    labels, preds = labels[keep], preds[keep]
  for name, values in (("labels", labels), ("preds", preds)):
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
      hint = ("" if name == "preds" or ignore_index is not None else
              " If it marks unlabelled pixels, pass it as ignore_index.")
      raise ValueError(
          f"{name} contain {np.unique(values[bad])[:10].tolist()}, outside "
          f"[0, {num_classes}) for num_classes={num_classes}.{hint}")
  flat = np.bincount(labels * num_classes + preds,
                     minlength=num_classes * num_classes)
  return flat.reshape(num_classes, num_classes).astype(np.int64)


def _check_cm(cm: np.ndarray) -> np.ndarray:
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"Expected a square (K, K) confusion matrix, got {cm.shape}.")
  return cm.astype(np.float64)


def _divide(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
  out = np.full(num.shape, fill, dtype=np.float64)
  np.divide(num, den, out=out, where=den > 0)
  return out


def accuracy(cm: np.ndarray) -> float:
  """Fraction of correctly classified examples (or pixels); NaN if empty."""
  cm = _check_cm(cm)
  total = cm.sum()
  return float(np.trace(cm) / total) if total > 0 else float("nan")


def precision_recall_f1(cm: np.ndarray, zero_division: float = 0.0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-class precision, recall and F1, each (K,) float64."""
  cm = _check_cm(cm)
  tp = np.diag(cm)
  predicted = cm.sum(axis=0)
  actual = cm.sum(axis=1)
  precision = _divide(tp, predicted, zero_division)
  recall = _divide(tp, actual, zero_division)
  f1 = _divide(2 * tp, predicted + actual, zero_division)
  return precision, recall, f1


def _classes(cm: np.ndarray, over: str) -> np.ndarray:
  if over not in _OVER:
    raise ValueError(f"over={over!r}; use one of {list(_OVER)}.")
  if over == "all":
    return np.ones(cm.shape[0], bool)
  in_labels = cm.sum(axis=1) > 0
  if over == "labels":
    return in_labels
  return in_labels | (cm.sum(axis=0) > 0)


def macro_f1(cm: np.ndarray, over: str = "present",
             zero_division: float = 0.0) -> float:
  """Unweighted mean of per-class F1 over the classes chosen by `over`."""
  cm = _check_cm(cm)
  _, _, f1 = precision_recall_f1(cm, zero_division)
  chosen = _classes(cm, over)
  return float(f1[chosen].mean()) if chosen.any() else float("nan")


def average_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """One-vs-rest average precision of each class from ranking scores.

  AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in
  decreasing order, tied scores entering together: the same definition as
  scikit-learn's `average_precision_score` (no interpolation).

  Args:
    labels: (n,) integer classes.
    scores: (n, K) scores where higher means more likely; for multi-class
      models use probabilities (softmax), since logits are not comparable
      across examples for one class.

  Returns:
    (K,) float64; NaN for classes without positive examples.
  """
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64)
  if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
    raise ValueError(f"scores must be (n, K) with n = len(labels) = "
                     f"{labels.shape[0]}; got {scores.shape}.")
  return np.array([binary_average_precision(labels == k, scores[:, k])
                   for k in range(scores.shape[1])])


def binary_average_precision(positive: np.ndarray, score: np.ndarray) -> float:
  """Average precision of one binary ranking problem; NaN without positives."""
  positive = np.asarray(positive, bool).reshape(-1)
  score = np.asarray(score, np.float64).reshape(-1)
  num_pos = positive.sum()
  if num_pos == 0:
    return float("nan")
  order = np.argsort(-score, kind="stable")
  score, positive = score[order], positive[order]
  # Last index of each run of equal scores: a threshold admits the whole run.
  ends = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
  tp = np.cumsum(positive)[ends]
  fp = (ends + 1) - tp
  precision = tp / (tp + fp)
  recall = tp / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
  """Mean AP over the classes that have at least one positive example."""
  ap = average_precision(labels, scores)
  return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


def iou_per_class(cm: np.ndarray) -> np.ndarray:
  """TP / (TP + FP + FN) per class; NaN where a class is in neither GT nor preds."""
  cm = _check_cm(cm)
  tp = np.diag(cm)
  union = cm.sum(axis=0) + cm.sum(axis=1) - tp
  return _divide(tp, union, float("nan"))


def mean_iou(cm: np.ndarray) -> float:
  """Mean IoU over classes present in the ground truth or the predictions."""
  iou = iou_per_class(cm)
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def mean_class_accuracy(cm: np.ndarray) -> float:
  """Mean per-class recall over classes present in the ground truth."""
  cm = _check_cm(cm)
  recall = _divide(np.diag(cm), cm.sum(axis=1), float("nan"))
  return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")
