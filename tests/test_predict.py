"""Sliding-window inference of a whole scene (eo_jax/predict.py)."""
import numpy as np
import pytest

from eo_jax import predict


def _per_pixel(batch):
  """Logits that depend on each pixel alone: any window gives the same."""
  x = np.asarray(batch, np.float64)
  return np.stack([x[..., 0], x[..., 1] - x[..., 0], 0.5 * x[..., 0] * x[..., 1]], -1)


def _softmax(z):
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


@pytest.mark.parametrize("blend", predict.BLENDS)
def test_windows_equal_a_single_pass(blend):
  image = np.random.default_rng(0).normal(size=(23, 17, 2)).astype(np.float32)
  single = _softmax(_per_pixel(image[None])[0])
  # The window covers the image: one pass, the same numbers.
  whole = predict.sliding_window_probabilities(
      _per_pixel, image, window=(23, 17), stride=(23, 17), num_classes=3, blend=blend)
  np.testing.assert_allclose(whole, single, rtol=1e-6, atol=1e-7)
  # Overlapping windows blend identical per-pixel answers: still the same.
  tiled = predict.sliding_window_probabilities(
      _per_pixel, image, window=(8, 8), stride=(5, 3), num_classes=3, blend=blend,
      batch_size=4)
  np.testing.assert_allclose(tiled, single, rtol=1e-6, atol=1e-7)


def test_a_scene_smaller_than_the_window_is_padded_and_cropped():
  image = np.random.default_rng(1).normal(size=(5, 6, 2)).astype(np.float32)
  seen = []
  out = predict.sliding_window_probabilities(
      lambda b: seen.append(b.shape) or _per_pixel(b), image, window=(8, 8),
      stride=(4, 4), num_classes=3)
  assert seen == [(1, 8, 8, 2)] and out.shape == (5, 6, 3)
  np.testing.assert_allclose(out, _softmax(_per_pixel(image[None])[0]), rtol=1e-6)


def test_window_corners_cover_the_scene_with_a_flush_last_window():
  assert predict.window_corners(10, 4, 3) == [0, 3, 6]
  assert predict.window_corners(11, 4, 3) == [0, 3, 6, 7]
  assert predict.window_corners(3, 4, 2) == [0]


def test_context_matters_windows_blend_towards_their_centres():
  # A model that sees its window's mean: the gaussian blend weighs each
  # window's centre most, so the result differs from the uniform mean.
  image = np.linspace(0, 1, 40, dtype=np.float32).reshape(1, 40, 1).repeat(3, 0)
  context = lambda b: np.concatenate([b, np.broadcast_to(b.mean((1, 2), keepdims=True),
                                                         b.shape)], -1) * 4
  g = predict.sliding_window_probabilities(context, image, window=(3, 10), stride=(3, 5),
                                           num_classes=2, blend="gaussian")
  m = predict.sliding_window_probabilities(context, image, window=(3, 10), stride=(3, 5),
                                           num_classes=2, blend="mean")
  assert g.shape == m.shape == (3, 40, 2)
  assert not np.allclose(g, m)
  np.testing.assert_allclose(g.sum(-1), 1.0, rtol=1e-6)
