"""Tests for eo_jax.evaluate.classification.ClassificationMetrics."""
import numpy as np
import pytest
import scipy.special

from eo_jax.evaluate import metrics
from eo_jax.evaluate.classification import ClassificationMetrics

NAMES = ("Forest", "River", "Crop")


def _split(n=11, k=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"logits": rng.normal(size=(n, k)).astype(np.float32),
          "label": rng.integers(0, k, n).astype(np.int32),
          "loss": rng.random(n).astype(np.float32)}


def _feed(chunks):
  ev = ClassificationMetrics(3, NAMES)
  for chunk in chunks:
    ev.update(chunk)
  return ev.result()


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_uneven_chunks_give_exactly_the_metrics_of_one_batch():
  split = _split()
  whole = _feed([split])
  cuts = [(0, 7), (7, 10), (10, 11)]
  chunked = _feed([{k: v[a:b] for k, v in split.items()} for a, b in cuts])
  _assert_same(whole, chunked)
  # An empty chunk (a batch that was all padding) changes nothing.
  with_empty = _feed([{k: v[:0] for k, v in split.items()}, split])
  _assert_same(whole, with_empty)


def test_result_values_against_metrics_module():
  split = _split()
  got = _feed([split])
  preds = split["logits"].argmax(1)
  cm = metrics.confusion_matrix(split["label"], preds, 3)
  np.testing.assert_array_equal(got["confusion_matrix"], cm)
  assert got["accuracy"] == pytest.approx(np.mean(preds == split["label"]))
  assert got["loss"] == pytest.approx(split["loss"].mean())
  _, _, f1 = metrics.precision_recall_f1(cm)
  for name, value in zip(NAMES, f1):
    assert got[f"f1/{name}"] == pytest.approx(value)
  probs = scipy.special.softmax(split["logits"].astype(np.float64), axis=1)
  assert got["map"] == pytest.approx(
      metrics.mean_average_precision(split["label"], probs))


def test_logits_are_ranked_as_probabilities_for_map():
  # Class 1's logit is higher for example 0, but its probability is higher
  # for example 1 (example 0 has a dominant class 0).
  logits = np.array([[10.0, 2.0], [0.0, 1.0]])
  labels = np.array([0, 1])
  ev = ClassificationMetrics(2)
  ev.update({"logits": logits, "label": labels})
  assert ev.result()["map"] == 1.0
  ev = ClassificationMetrics(2)
  ev.update({"scores": logits, "label": labels})
  assert ev.result()["map"] == pytest.approx((1.0 + 0.5) / 2)


def test_hand_computed_small_case():
  ev = ClassificationMetrics(3, NAMES)
  scores = np.eye(3)[[0, 0, 1, 1]]  # predicts 0, 0, 1, 1
  ev.update({"scores": scores, "label": np.array([0, 1, 1, 1])})
  r = ev.result()
  assert r["accuracy"] == 0.75
  assert r["f1/Forest"] == pytest.approx(2 / 3)
  assert r["f1/River"] == pytest.approx(0.8)
  assert r["f1/Crop"] == 0.0
  assert r["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # Crop absent
  assert "loss" not in r


def test_bad_input_errors():
  ev = ClassificationMetrics(3, NAMES)
  with pytest.raises(ValueError, match="before any example"):
    ev.result()
  with pytest.raises(ValueError, match="shape"):
    ev.update({"logits": np.zeros((2, 4)), "label": np.zeros(2, int)})
  with pytest.raises(KeyError, match="logits"):
    ev.update({"label": np.zeros(2, int)})
  with pytest.raises(ValueError, match="outside"):
    ev.update({"logits": np.zeros((1, 3)), "label": np.array([5])})
  with pytest.raises(ValueError, match="class names"):
    ClassificationMetrics(2, NAMES)
  ev = ClassificationMetrics(3, NAMES)
  ev.update({"logits": np.zeros((1, 3)), "label": np.array([0]),
             "loss": np.ones(1)})
  with pytest.raises(ValueError, match="loss"):
    ev.update({"logits": np.zeros((1, 3)), "label": np.array([0])})
