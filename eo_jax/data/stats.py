"""Exact per-band mean and standard deviation of a split, in one pass.

Images are visited one chunk at a time; each chunk's count, mean and sum of
squared deviations (float64) are merged with the running totals by Chan et
al.'s pairwise update. Unlike accumulating sum and sum of squares, this does
not lose precision when the mean is large compared to the spread (raw
Sentinel-2 digital numbers), and memory stays bounded by one chunk.
"""
from __future__ import annotations

import numpy as np

from eo_jax.data.datasets.base import Source


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
