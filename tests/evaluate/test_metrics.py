"""Tests for eo_jax.evaluate.metrics against hand-computed values and sklearn."""
import numpy as np
import pytest

from eo_jax.evaluate import metrics


# --- Hand-computed cases ---------------------------------------------------

# 3 classes, class 2 absent from the labels but predicted once.
LABELS = np.array([0, 0, 0, 1, 1, 1, 1])
PREDS = np.array([0, 0, 1, 1, 1, 2, 0])


def test_confusion_matrix_by_hand():
  cm = metrics.confusion_matrix(LABELS, PREDS, 3)
  np.testing.assert_array_equal(cm, [[2, 1, 0], [1, 2, 1], [0, 0, 0]])
  assert cm.dtype == np.int64


def test_confusion_matrix_ignore_index_and_bad_labels():
  labels = np.array([[0, 255], [1, 1]])
  preds = np.array([[0, 7], [1, 0]])  # the 7 sits on an ignored pixel
  cm = metrics.confusion_matrix(labels, preds, 2, ignore_index=255)
  np.testing.assert_array_equal(cm, [[1, 0], [1, 1]])
  with pytest.raises(ValueError, match="ignore_index"):
    metrics.confusion_matrix(labels, preds, 2)
  with pytest.raises(ValueError, match="preds contain"):
    metrics.confusion_matrix(np.array([0]), np.array([3]), 2)
  with pytest.raises(ValueError, match="same shape"):
    metrics.confusion_matrix(np.array([0, 1]), np.array([0]), 2)


def test_precision_recall_f1_with_absent_class_by_hand():
  cm = metrics.confusion_matrix(LABELS, PREDS, 3)
  p, r, f1 = metrics.precision_recall_f1(cm)
  np.testing.assert_allclose(p, [2 / 3, 2 / 3, 0.0])
  np.testing.assert_allclose(r, [2 / 3, 2 / 4, 0.0])  # class 2: 0/0 -> 0
  np.testing.assert_allclose(f1, [4 / 6, 4 / 7, 0.0])
  assert metrics.accuracy(cm) == pytest.approx(4 / 7)
  # Class 2 was predicted, so it is "present" and counts with F1 0.
  assert metrics.macro_f1(cm) == pytest.approx((4 / 6 + 4 / 7 + 0) / 3)
  assert metrics.macro_f1(cm, over="labels") == pytest.approx((4 / 6 + 4 / 7) / 2)
  # A class absent from labels and predictions drops out of "present".
  cm4 = np.pad(cm, ((0, 1), (0, 1)))
  assert metrics.macro_f1(cm4) == pytest.approx(metrics.macro_f1(cm))
  assert metrics.macro_f1(cm4, over="all") == pytest.approx((4 / 6 + 4 / 7) / 4)
  assert metrics.macro_f1(cm4, over="all", zero_division=1.0) == pytest.approx(
      (4 / 6 + 4 / 7 + 0 + 1) / 4)
  with pytest.raises(ValueError, match="present"):
    metrics.macro_f1(cm, over="some")


def test_average_precision_by_hand_with_ties():
  # Scores 0.9(+) 0.8(-) 0.8(+) 0.1(-): thresholds 0.9 -> P=1, R=1/2;
  # 0.8 (tied pair enters together) -> P=2/3, R=1; AP = 1/2*1 + 1/2*2/3.
  ap = metrics.binary_average_precision([1, 0, 1, 0], [0.9, 0.8, 0.8, 0.1])
  assert ap == pytest.approx(0.5 + 1 / 3)
  # The order of tied examples must not matter.
  ap2 = metrics.binary_average_precision([1, 1, 0, 0], [0.9, 0.8, 0.8, 0.1])
  assert ap2 == pytest.approx(ap)
  # All scores tied: AP is the positive rate.
  assert metrics.binary_average_precision([1, 0, 0, 0], [0.5] * 4) == 0.25
  assert np.isnan(metrics.binary_average_precision([0, 0], [0.1, 0.2]))


def test_map_skips_classes_without_positives():
  labels = np.array([0, 1, 0])
  scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
  ap = metrics.average_precision(labels, scores)
  # class 0: ranking 0.9(+) 0.3(+) 0.2(-) -> 1; class 1: 0.7(+) first -> 1.
  np.testing.assert_allclose(ap[:2], [1.0, 1.0])
  assert np.isnan(ap[2])
  assert metrics.mean_average_precision(labels, scores) == 1.0


def test_segmentation_scores_by_hand():
  # rows = GT, cols = pred; class 3 absent from both.
  cm = np.array([[3, 1, 0, 0], [2, 4, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
  iou = metrics.iou_per_class(cm)
  np.testing.assert_allclose(iou[:3], [3 / 6, 4 / 8, 0.0])
  assert np.isnan(iou[3])
  assert metrics.mean_iou(cm) == pytest.approx((0.5 + 0.5 + 0) / 3)
  assert metrics.mean_class_accuracy(cm) == pytest.approx((3 / 4 + 4 / 6 + 0) / 3)
  assert metrics.accuracy(cm) == pytest.approx(7 / 11)


# --- Against scikit-learn --------------------------------------------------


def _random_case(seed, n=200, k=6):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k - 1, n)  # class k-1 never appears in the labels
  # Quantised scores create many ties.
  scores = np.round(rng.random((n, k)) + 0.5 * np.eye(k)[labels], 1)
  return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
  skm = pytest.importorskip("sklearn.metrics")
  k = 6
  labels, scores = _random_case(seed, k=k)
  preds = scores.argmax(1)
  cm = metrics.confusion_matrix(labels, preds, k)
  np.testing.assert_array_equal(
      cm, skm.confusion_matrix(labels, preds, labels=range(k)))
  assert metrics.accuracy(cm) == pytest.approx(skm.accuracy_score(labels, preds))
  p, r, f1 = metrics.precision_recall_f1(cm)
  sk_p, sk_r, sk_f1, _ = skm.precision_recall_fscore_support(
      labels, preds, labels=range(k), zero_division=0)
  np.testing.assert_allclose(p, sk_p)
  np.testing.assert_allclose(r, sk_r)
  np.testing.assert_allclose(f1, sk_f1)
  assert metrics.macro_f1(cm) == pytest.approx(
      skm.f1_score(labels, preds, average="macro", zero_division=0))
  assert metrics.macro_f1(cm, over="all") == pytest.approx(
      skm.f1_score(labels, preds, average="macro", labels=range(k),
                   zero_division=0))
  ap = metrics.average_precision(labels, scores)
  for c in range(k - 1):
    assert ap[c] == pytest.approx(
        skm.average_precision_score(labels == c, scores[:, c]))
  assert np.isnan(ap[k - 1])
  cm_seg = skm.confusion_matrix(labels, preds, labels=range(k))
  sk_iou = skm.jaccard_score(labels, preds, labels=range(k), average=None,
                             zero_division=0)
  iou = metrics.iou_per_class(cm_seg)
  present = (cm_seg.sum(0) + cm_seg.sum(1)) > 0
  np.testing.assert_allclose(iou[present], sk_iou[present])
  assert np.isnan(iou[~present]).all()
  assert metrics.mean_class_accuracy(cm) == pytest.approx(
      skm.balanced_accuracy_score(labels, preds))
