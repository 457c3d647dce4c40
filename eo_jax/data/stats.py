"""Statistics of a split: per-band moments, and class frequencies.

Band statistics: exact per-band mean and standard deviation in one pass.
Images are visited one chunk at a time; each chunk's count, mean and sum of
squared deviations (float64) are merged with the running totals by Chan et
al.'s pairwise update. Unlike accumulating sum and sum of squares, this does
not lose precision when the mean is large compared to the spread (raw
Sentinel-2 digital numbers), and memory stays bounded by one chunk.

Class frequencies: `class_pixel_counts` counts the labelled pixels of each
class over a split's examples, exactly, and `class_weights_from_counts`
turns counts into loss weights (inverse frequency, or median frequency
balancing), e.g. for the segmentation objective's class weights.
"""
from __future__ import annotations

import numpy as np

from eo_jax import errors
from eo_jax.data.datasets.base import (CLASSIFICATION, SEGMENTATION, DataError,
                                       Source, describe_example)


class RunningMoments:
  """Streaming count / mean / M2 per channel (channels last)."""

  def __init__(self, num_channels: int):
    self.count = 0
    self.mean = np.zeros(num_channels, np.float64)
    self.m2 = np.zeros(num_channels, np.float64)

  def update(self, values: np.ndarray) -> None:
    """Adds every pixel of `values` (..., C) to the statistics."""
    x = np.asarray(values, np.float64).reshape(-1, self.mean.shape[0])
    n = x.shape[0]
    if n == 0:
      return
    mean = x.mean(axis=0)
    m2 = np.square(x - mean).sum(axis=0)
    total = self.count + n
    delta = mean - self.mean
    self.mean = self.mean + delta * (n / total)
    self.m2 = self.m2 + m2 + np.square(delta) * (self.count * n / total)
    self.count = total

  @property
  def std(self) -> np.ndarray:
    """Population standard deviation (ddof=0)."""
    if self.count == 0:
      raise ValueError("No values were added; cannot compute statistics.")
    return np.sqrt(self.m2 / self.count)


def band_statistics(source: Source, chunk_pixels: int = 1 << 18
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Mean and (population) std of every band over all pixels of `source`.

  Args:
    source: a split (`__len__`, `__getitem__` -> {'image': (H, W, C), ...}).
    chunk_pixels: how many pixels are gathered before each merge; only a
      speed/memory trade-off, the result is the same.

  Returns:
    (mean, std), float64 arrays of shape (C,).
  """
  n = len(source)
  if n == 0:
    raise ValueError("Cannot compute band statistics of an empty split.")
  moments: RunningMoments | None = None
  pending: list[np.ndarray] = []
  pending_pixels = 0
  for i in range(n):
    image = np.asarray(source[i]["image"])
    if image.ndim != 3:
      raise ValueError(f"Example {i} has image shape {image.shape}; expected "
                       "(H, W, C).")
    if moments is None:
      moments = RunningMoments(image.shape[-1])
    pending.append(image.reshape(-1, image.shape[-1]))
    pending_pixels += pending[-1].shape[0]
    if pending_pixels >= chunk_pixels:
      moments.update(np.concatenate(pending))
      pending, pending_pixels = [], 0
  if pending:
    moments.update(np.concatenate(pending))
  return moments.mean, moments.std


def class_pixel_counts(dataset, split: str = "train") -> np.ndarray:
  """(K,) int64: how many labelled pixels of each class `split` holds.

  Segmentation: mask pixels per class over all of the split's examples
  (the ignore index excluded); a pixel that lies in two overlapping
  windows counts twice, as it weighs twice in the loss. Classification:
  examples per class. Exact: every example is read, unless the source can
  count without reading images (`source.class_pixel_counts(K)`, e.g. the
  scene datasets).

  Args:
    dataset: a `Dataset` with classes.
    split: the split to count.

  Raises:
    ConfigValueError: the dataset has no classes (unlabelled).
    DataError: a label outside [0, K) that is not the ignore index, naming
      the example.
  """
  info = dataset.info
  k = info.num_classes
  if not k or info.task not in (CLASSIFICATION, SEGMENTATION):
    raise errors.ConfigValueError(
        f"Dataset {info.name!r} ({info.task}) has no classes to count; class "
        "weights need a classification or segmentation dataset.")
  source = dataset.split(split)
  fast = getattr(source, "class_pixel_counts", None)
  if fast is not None:
    return np.asarray(fast(k), np.int64)
  counts = np.zeros(k, np.int64)
  key = "mask" if info.task == SEGMENTATION else "label"
  for i in range(len(source)):
    values = np.asarray(source[i][key]).ravel()
    if info.ignore_index is not None:
      values = values[values != info.ignore_index]
    bad = (values < 0) | (values >= k)
    if bad.any():
      raise DataError(
          f"{split!r} {describe_example(source, i)}: {key} value(s) "
          f"{np.unique(values[bad])[:8].tolist()} outside 0..{k - 1}"
          + ("" if info.ignore_index is None else
             f" and not the ignore index {info.ignore_index}")
          + "; run eo_jax.data.validate.validate_dataset for every problem.")
    counts += np.bincount(values.astype(np.int64), minlength=k)
  return counts


CLASS_WEIGHT_MODES = ("inverse", "median")


def class_weights_from_counts(counts, mode: str = "inverse") -> np.ndarray:
  """(K,) float64 loss weights from per-class pixel counts.

  Args:
    counts: (K,) labelled pixels (or examples) per class.
    mode: 'inverse': 1 / frequency, scaled to mean 1 over the classes
      present; 'median': median frequency balancing (Eigen & Fergus 2015),
      median(frequency) / frequency, over the classes present (frequency =
      the class's share of all counted pixels).

  Returns:
    The weights; a class with no pixel gets 0 (it never occurs in the
    counted split, so its weight would not act on that split's loss).

  Raises:
    ConfigValueError: an unknown mode, negative counts, or no pixel at all.
  """
  if mode not in CLASS_WEIGHT_MODES:
    raise errors.ConfigValueError(
        f"Class weight mode must be one of {CLASS_WEIGHT_MODES}, got {mode!r}.")
  counts = np.asarray(counts, np.float64).ravel()
  if counts.size == 0 or np.any(~np.isfinite(counts)) or np.any(counts < 0):
    raise errors.ConfigValueError(
        f"Class counts must be finite and >= 0, got {counts.tolist()}.")
  present = counts > 0
  if not present.any():
    raise errors.ConfigValueError(
        "Every class count is 0: the split has no labelled pixel, so there "
        "are no class frequencies to weight by.")
  freq = counts[present] / counts.sum()
  weights = np.zeros_like(counts)
  if mode == "inverse":
    inverse = 1.0 / freq
    weights[present] = inverse / inverse.mean()
  else:
    weights[present] = np.median(freq) / freq
  return weights
