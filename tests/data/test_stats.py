"""Tests of the streaming per-band statistics and of the class counts and
class weights."""
import numpy as np
import pytest

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import stats
from eo_jax.data.datasets.base import (ArraySource, DataError, Dataset,
                                       DatasetInfo)


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


# --- class pixel counts and class weights ----------------------------------


def _segmentation(masks, ignore_index=255, k=3):
  info = DatasetInfo("seg", bands_lib.RGB, class_names=tuple("abcdefgh"[:k]),
                     task="segmentation", ignore_index=ignore_index)
  images = np.zeros(masks.shape + (3,), np.float32)
  return Dataset(info, {"train": ArraySource(image=images, mask=masks),
                        "val": ArraySource(image=images[:1], mask=masks[:1])})


def test_class_pixel_counts_are_exact_and_skip_the_ignore_index():
  rng = np.random.default_rng(0)
  masks = rng.choice([0, 1, 2, 255], size=(9, 6, 5), p=[0.5, 0.3, 0.1, 0.1])
  counts = stats.class_pixel_counts(_segmentation(masks.astype(np.int32)))
  np.testing.assert_array_equal(counts, [(masks == c).sum() for c in range(3)])
  assert counts.dtype == np.int64
  val = stats.class_pixel_counts(_segmentation(masks), split="val")
  np.testing.assert_array_equal(val, [(masks[0] == c).sum() for c in range(3)])
  # Classification: examples per class; an absent class counts 0.
  info = DatasetInfo("cls", bands_lib.RGB, class_names=("a", "b", "c", "d"))
  labels = np.array([0, 2, 2, 0, 0], np.int32)
  dataset = Dataset(info, {"train": ArraySource(
      image=np.zeros((5, 2, 2, 3), np.float32), label=labels)})
  np.testing.assert_array_equal(stats.class_pixel_counts(dataset), [3, 0, 2, 0])
  bad = masks.copy()
  bad[4, 0, 0] = 3
  with pytest.raises(DataError, match=r"'train' example 4: mask value\(s\) "
                                      r"\[3\] outside 0..2"):
    stats.class_pixel_counts(_segmentation(bad))
  unlabelled = Dataset(DatasetInfo("u", bands_lib.RGB, task="unlabelled"),
                       {"train": ArraySource(image=np.zeros((1, 2, 2, 3)))})
  with pytest.raises(errors.ConfigValueError, match="no classes"):
    stats.class_pixel_counts(unlabelled)


def test_class_weights_inverse_and_median_frequency():
  counts = np.array([600, 300, 0, 100])
  inverse = stats.class_weights_from_counts(counts)
  # 1 / frequency: 1/0.6, 1/0.3, 1/0.1 -> scaled to mean 1 over present.
  raw = np.array([1 / 0.6, 1 / 0.3, 1 / 0.1])
  np.testing.assert_allclose(inverse[[0, 1, 3]], raw / raw.mean())
  assert inverse[2] == 0.0 and inverse[[0, 1, 3]].mean() == pytest.approx(1.0)
  median = stats.class_weights_from_counts(counts, mode="median")
  # Frequencies 0.6, 0.3, 0.1: median 0.3.
  np.testing.assert_allclose(median, [0.5, 1.0, 0.0, 3.0])
  np.testing.assert_allclose(stats.class_weights_from_counts([5, 5, 5]), 1.0)
  with pytest.raises(errors.ConfigValueError, match="mode"):
    stats.class_weights_from_counts(counts, mode="sqrt")
  with pytest.raises(errors.ConfigValueError, match="no labelled pixel"):
    stats.class_weights_from_counts([0, 0])
  with pytest.raises(errors.ConfigValueError, match=">= 0"):
    stats.class_weights_from_counts([3, -1])
