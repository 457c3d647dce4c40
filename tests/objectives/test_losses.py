"""Loss values against hand computation."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.objectives import losses


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max()).sum()) - x.max()


def test_cross_entropy_matches_hand_value():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  got = losses.cross_entropy(logits, jnp.array([0]))
  want = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
  np.testing.assert_allclose(got, [want], rtol=1e-6)


def test_label_smoothing_spreads_mass_over_all_classes():
  logits = np.array([1.0, 2.0, 0.5, -0.5])
  eps, k = 0.2, 4
  target = np.full(k, eps / k)
  target[1] += 1 - eps
  want = -(target * _log_softmax(logits)).sum()
  got = losses.cross_entropy(jnp.array([logits]), jnp.array([1]), label_smoothing=eps)
  np.testing.assert_allclose(got, [want], rtol=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_examples():
  logits = jnp.array([[3.0, 0.0], [0.1, 0.0]])
  labels = jnp.array([0, 0])
  ce = losses.cross_entropy(logits, labels)
  np.testing.assert_allclose(losses.focal_loss(logits, labels, gamma=0.0), ce, rtol=1e-6)
  focal = losses.focal_loss(logits, labels, gamma=2.0)
  p = np.exp(_log_softmax([3.0, 0.0]))[0]
  np.testing.assert_allclose(focal[0], -(1 - p) ** 2 * np.log(p), rtol=1e-5)
  # The confident (easy) example loses far more of its weight than the hard one.
  assert focal[0] / ce[0] < 0.01 < focal[1] / ce[1]


def test_ignore_index_and_class_weights():
  logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.2]])
  labels = jnp.array([0, 255, 1])
  got = losses.cross_entropy(logits, labels, ignore_index=255, class_weights=[1.0, 3.0])
  assert got[1] == 0.0
  np.testing.assert_allclose(got[0], -_log_softmax([1.0, 0.0])[0], rtol=1e-6)
  np.testing.assert_allclose(got[2], -3.0 * _log_softmax([0.3, 0.2])[1], rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5), (2, 4, 4, 5)])
def test_per_example_shape(shape):
  logits = jnp.zeros(shape)
  labels = jnp.zeros(shape[:-1], jnp.int32)
  out = losses.cross_entropy(logits, labels)
  assert out.shape == shape[:-1]
  np.testing.assert_allclose(out, math.log(5), rtol=1e-6)
