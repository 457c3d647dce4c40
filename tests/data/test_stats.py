"""Tests of the streaming per-band statistics."""
import numpy as np
import pytest

from eo_jax.data import stats
from eo_jax.data.datasets.base import ArraySource


def _images(n=37, shape=(5, 7, 4), offset=1e4, seed=0):
  rng = np.random.default_rng(seed)
  scale = np.array([1.0, 0.01, 100.0, 3.0])
  return (offset + scale * rng.normal(size=(n,) + shape)).astype(np.float32)


@pytest.mark.parametrize("chunk_pixels", [1, 50, 1 << 18])
def test_band_statistics_equal_numpy(chunk_pixels):
  images = _images()
  mean, std = stats.band_statistics(ArraySource(image=images),
                                    chunk_pixels=chunk_pixels)
  ref = images.astype(np.float64).reshape(-1, 4)
  # A large offset with a tiny spread (band 1) is where sum-of-squares fails.
  np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-12)
  np.testing.assert_allclose(std, ref.std(0), rtol=1e-9)


def test_images_of_different_sizes_weigh_by_pixel_count():
  a = np.full((2, 2, 1), 1.0, np.float32)
  b = np.full((4, 4, 1), 4.0, np.float32)

  class Ragged:
    def __len__(self):
      return 2

    def __getitem__(self, i):
      return {"image": (a, b)[i]}

  mean, std = stats.band_statistics(Ragged(), chunk_pixels=1)
  values = np.concatenate([a.ravel(), b.ravel()])
  np.testing.assert_allclose([mean[0], std[0]], [values.mean(), values.std()])


def test_running_moments_merge_in_any_order():
  x = _images(n=10).reshape(10, -1, 4)
  forward, backward = stats.RunningMoments(4), stats.RunningMoments(4)
  for i in range(10):
    forward.update(x[i])
    backward.update(x[9 - i])
  np.testing.assert_allclose(forward.mean, backward.mean, rtol=1e-13)
  np.testing.assert_allclose(forward.std, backward.std, rtol=1e-10)
  assert forward.count == backward.count == x.size // 4


def test_empty_and_bad_inputs_fail_clearly():
  with pytest.raises(ValueError, match="empty"):
    stats.band_statistics(ArraySource(image=np.zeros((0, 2, 2, 1))))
  with pytest.raises(ValueError, match=r"\(H, W, C\)"):
    stats.band_statistics(ArraySource(image=np.zeros((3, 2, 2))))
