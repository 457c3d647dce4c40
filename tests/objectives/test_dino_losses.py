"""DINO, iBOT and KoLeo losses and the teacher centring against numpy."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.objectives import centering
from eo_jax.objectives.dino_loss import cross_entropy, dino_cls_loss
from eo_jax.objectives.ibot_loss import ibot_patch_loss, patch_weights
from eo_jax.objectives.koleo import koleo_loss


def _log_softmax(x, axis=-1):
  x = np.asarray(x, np.float64)
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def _softmax(x, axis=-1):
  return np.exp(_log_softmax(x, axis))


def _ce(t, s, temp):
  return -(t * _log_softmax(np.asarray(s) / temp)).sum(-1)


# --------------------------------------------------------------- DINO loss
def test_cross_entropy_hand_value():
  t = np.array([0.25, 0.75])
  s = np.array([1.0, 0.0])
  # log_softmax([10, 0]) = [-log(1 + e^-10), -10 - log(1 + e^-10)]
  lse = math.log1p(math.exp(-10))
  want = -(0.25 * -lse + 0.75 * (-10 - lse))
  np.testing.assert_allclose(cross_entropy(jnp.array(t), jnp.array(s), 0.1),
                             want, rtol=1e-6)


def test_dino_loss_averages_every_student_crop_against_every_other_teacher_crop():
  rng = np.random.default_rng(0)
  num_global, num_local, b, k = 2, 3, 4, 6
  student = rng.normal(size=(num_global + num_local, b, k))
  teacher = _softmax(rng.normal(size=(num_global, b, k)) / 0.04)
  terms = []
  for i in range(num_global + num_local):
    for j in range(num_global):
      if i == j:  # a global crop is never its own target
        continue
      terms.append(_ce(teacher[j], student[i], 0.1).mean())
  assert len(terms) == 2 * 1 + 2 * num_local
  got = dino_cls_loss(jnp.array(student, jnp.float32),
                      jnp.array(teacher, jnp.float32), 0.1)
  np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_dino_loss_of_two_global_crops_swaps_them():
  rng = np.random.default_rng(1)
  student = rng.normal(size=(2, 3, 5))
  teacher = _softmax(rng.normal(size=(2, 3, 5)))
  # DINOv2 divides the two pair losses by 2 global terms + max(0 local, 1).
  want = (_ce(teacher[1], student[0], 0.1).mean()
          + _ce(teacher[0], student[1], 0.1).mean()) / 3
  got = dino_cls_loss(jnp.array(student), jnp.array(teacher), 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


# --------------------------------------------------------------- iBOT loss
def test_ibot_loss_is_per_image_mean_over_masked_patches_divided_by_all_images():
  rng = np.random.default_rng(2)
  b, m, k = 3, 4, 5
  student = rng.normal(size=(b, m, k))
  teacher = _softmax(rng.normal(size=(b, m, k)))
  valid = np.array([[1, 1, 1, 0],    # 3 masked patches
                    [1, 0, 0, 0],    # 1 masked patch
                    [0, 0, 0, 0]],   # not masked: counts in the denominator
                   bool)
  per_image = [_ce(teacher[i][valid[i]], student[i][valid[i]], 0.1).mean()
               for i in range(2)]
  want = sum(per_image) / 3
  got = ibot_patch_loss(jnp.array(student), jnp.array(teacher),
                        jnp.array(valid), 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(patch_weights(jnp.array(valid)),
                             valid / np.maximum(valid.sum(1, keepdims=True), 1))


def test_ibot_loss_ignores_padding_slots():
  rng = np.random.default_rng(3)
  student = rng.normal(size=(2, 3, 4))
  teacher = _softmax(rng.normal(size=(2, 3, 4)))
  valid = np.array([[1, 1, 0], [1, 0, 0]], bool)
  changed_student, changed_teacher = student.copy(), teacher.copy()
  changed_student[~valid] = 100.0
  changed_teacher[~valid] = 0.25
  a = ibot_patch_loss(jnp.array(student), jnp.array(teacher), jnp.array(valid))
  b = ibot_patch_loss(jnp.array(changed_student), jnp.array(changed_teacher),
                      jnp.array(valid))
  np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------ KoLeo
def test_koleo_of_points_on_a_circle():
  # Angles 0, 10 and 100 degrees: nearest-neighbour chords 2 sin(5 deg) for
  # the first two, 2 sin(45 deg) for the third. Lengths must not matter.
  angles = np.deg2rad([0.0, 10.0, 100.0])
  points = np.stack([np.cos(angles), np.sin(angles)], 1) * [[1.0], [3.0], [0.5]]
  d = [2 * math.sin(math.radians(5))] * 2 + [2 * math.sin(math.radians(45))]
  want = -np.mean(np.log(d))
  np.testing.assert_allclose(koleo_loss(jnp.array(points, jnp.float32)), want,
                             rtol=1e-5)


def test_koleo_of_square_corners_and_duplicates():
  square = jnp.array([[1, 0], [0, 1], [-1, 0], [0, -1]], jnp.float32)
  np.testing.assert_allclose(koleo_loss(square), -math.log(math.sqrt(2)),
                             rtol=1e-5)
  # Duplicates: distance ~0, a large but finite loss (log of eps).
  dup = jnp.array([[1, 0], [1, 0], [0, 1]], jnp.float32)
  value = float(koleo_loss(dup))
  assert math.isfinite(value) and value > 10


# -------------------------------------------------------------- centring
def _sinkhorn_numpy(logits, temp, iterations, valid=None):
  """DINOv2's algorithm, written with the K x B matrix of the paper."""
  logits = np.asarray(logits, np.float64)
  if valid is not None:
    logits = logits[valid]
  q = np.exp(logits / temp).T
  big_b, big_k = q.shape[1], q.shape[0]
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= big_k
    q /= q.sum(axis=0, keepdims=True)
    q /= big_b
  q *= big_b
  return q.T


def test_sinkhorn_knopp_matches_the_reference_algorithm():
  rng = np.random.default_rng(4)
  logits = rng.uniform(-1, 1, size=(6, 5))  # cosine logits, as DINOHead's
  got = centering.sinkhorn_knopp(jnp.array(logits, jnp.float32), 0.07, 3)
  np.testing.assert_allclose(got, _sinkhorn_numpy(logits, 0.07, 3), rtol=2e-4,
                             atol=1e-6)


def test_sinkhorn_knopp_is_doubly_stochastic():
  rng = np.random.default_rng(5)
  b, k = 12, 4
  logits = jnp.array(rng.uniform(-1, 1, size=(b, k)), jnp.float32)
  q = np.asarray(centering.sinkhorn_knopp(logits, 0.1, 3), np.float64)
  # The last normalisation is over rows: each sample's target sums to 1 ...
  np.testing.assert_allclose(q.sum(1), np.ones(b), rtol=1e-5)
  # ... and with enough iterations every prototype gets B / K of the mass.
  q = np.asarray(centering.sinkhorn_knopp(logits, 0.1, 100), np.float64)
  np.testing.assert_allclose(q.sum(0), np.full(k, b / k), rtol=1e-4)
  # Plain softmax targets are far from equipartition on the same logits.
  p = _softmax(np.asarray(logits) / 0.1)
  assert np.abs(p.sum(0) - b / k).max() > 10 * np.abs(q.sum(0) - b / k).max()


def test_sinkhorn_knopp_padding_rows_are_zero_and_do_not_count():
  rng = np.random.default_rng(6)
  logits = rng.uniform(-1, 1, size=(7, 5))
  valid = np.array([1, 1, 0, 1, 0, 1, 1], bool)
  logits_padded = logits.copy()
  logits_padded[~valid] = 50.0  # would dominate if it counted
  got = np.asarray(centering.sinkhorn_knopp(
      jnp.array(logits_padded, jnp.float32), 0.05, 3, jnp.array(valid)))
  np.testing.assert_array_equal(got[~valid], 0.0)
  np.testing.assert_allclose(got[valid], _sinkhorn_numpy(logits, 0.05, 3, valid),
                             rtol=2e-4, atol=1e-6)


def test_sinkhorn_knopp_is_finite_at_small_temperatures():
  logits = jnp.array([[1.0, -1.0, 0.5], [0.9, 1.0, -1.0]])
  q = centering.sinkhorn_knopp(logits, 0.001, 3)
  assert np.all(np.isfinite(q))
  np.testing.assert_allclose(np.asarray(q).sum(1), [1.0, 1.0], rtol=1e-5)


def test_softmax_centring_and_center_update():
  logits = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [9.0, 9.0, 9.0]])
  center = np.array([0.5, -0.5, 0.0])
  got = centering.softmax_center(jnp.array(logits), jnp.array(center), 0.5)
  np.testing.assert_allclose(got, _softmax((logits - center) / 0.5), rtol=1e-5)
  weights = np.array([1.0, 1.0, 0.0])  # the last row is padding
  new = centering.update_center(jnp.array(center), jnp.array(logits), 0.9,
                                jnp.array(weights))
  np.testing.assert_allclose(new, 0.9 * center + 0.1 * np.array([2.0, 1.0, 0.5]),
                             rtol=1e-6)
  new = centering.update_center(jnp.array(center), jnp.array(logits), 0.9)
  np.testing.assert_allclose(new, 0.9 * center + 0.1 * logits.mean(0), rtol=1e-6)


if __name__ == "__main__":
  pytest.main([__file__])
