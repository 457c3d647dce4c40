"""Tests for eo_jax.evaluate.segmentation.SegmentationMetrics."""
import numpy as np
import pytest

from eo_jax.evaluate import metrics
from eo_jax.evaluate.segmentation import SegmentationMetrics

NAMES = ("water", "field", "urban", "cloud")
IGNORE = 255


def _split(n=5, seed=0):
  rng = np.random.default_rng(seed)
  mask = rng.integers(0, 3, (n, 6, 7))  # 'cloud' never in the ground truth
  mask[rng.random(mask.shape) < 0.2] = IGNORE
  logits = rng.normal(size=(n, 6, 7, 4))
  return {"logits": logits, "mask": mask}


def _feed(chunks):
  ev = SegmentationMetrics(4, NAMES, ignore_index=IGNORE)
  for chunk in chunks:
    ev.update(chunk)
  return ev.result()


def test_chunks_give_exactly_the_metrics_of_one_batch():
  split = _split()
  whole = _feed([split])
  chunked = _feed([{k: v[a:b] for k, v in split.items()}
                   for a, b in ((0, 3), (3, 4), (4, 5))])
  assert whole.keys() == chunked.keys()
  for key in whole:
    np.testing.assert_array_equal(whole[key], chunked[key], err_msg=key)


def test_ignored_pixels_are_not_counted_and_values_match():
  split = _split()
  r = _feed([split])
  valid = split["mask"] != IGNORE
  assert r["confusion_matrix"].sum() == valid.sum()
  pred = split["logits"].argmax(-1)
  assert r["overall_acc"] == pytest.approx(
      np.mean(pred[valid] == split["mask"][valid]))
  cm = r["confusion_matrix"]
  assert r["miou"] == pytest.approx(metrics.mean_iou(cm))
  assert r["mean_acc"] == pytest.approx(metrics.mean_class_accuracy(cm))
  for name, value in zip(NAMES, metrics.iou_per_class(cm)):
    np.testing.assert_equal(r[f"iou/{name}"], value)


def test_pred_input_and_absent_class_by_hand():
  mask = np.array([[[0, 0], [1, IGNORE]]])
  pred = np.array([[[0, 1], [1, 3]]])  # the 3 sits on an ignored pixel
  r = _feed([{"pred": pred, "mask": mask, "loss": np.array([0.5])}])
  assert r["iou/water"] == 0.5       # TP 1, FN 1
  assert r["iou/field"] == 0.5       # TP 1, FP 1
  assert np.isnan(r["iou/urban"]) and np.isnan(r["iou/cloud"])
  assert r["miou"] == 0.5
  assert r["mean_acc"] == pytest.approx((0.5 + 1.0) / 2)
  assert r["overall_acc"] == pytest.approx(2 / 3)
  assert r["loss"] == 0.5


def test_bad_input_errors():
  ev = SegmentationMetrics(4, NAMES, ignore_index=IGNORE)
  with pytest.raises(ValueError, match="before any"):
    ev.result()
  with pytest.raises(ValueError, match="differ"):
    ev.update({"pred": np.zeros((1, 2, 2), int), "mask": np.zeros((1, 3, 2), int)})
  with pytest.raises(ValueError, match="classes"):
    ev.update({"logits": np.zeros((1, 2, 2, 3)), "mask": np.zeros((1, 2, 2), int)})
  with pytest.raises(KeyError, match="pred"):
    ev.update({"mask": np.zeros((1, 2, 2), int)})
