"""A generated dataset for smoke tests and examples: no files, any band count.

Each class has its own spectral signature (a random mean per band) and a
random blob pattern, plus Gaussian noise, so a small network learns it in a
few dozen steps while chance stays at 1/K. It exercises every part of the
pipeline with the shapes of a real N-band dataset.
"""
from __future__ import annotations

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import (CLASSIFICATION, SEGMENTATION, UNLABELLED,
                                       ArraySource, DATASETS, Dataset, DatasetInfo,
                                       describe_example)


def _synthetic_bands(num_bands: int) -> tuple[bands_lib.Band, ...]:
  if num_bands == 13:
    return bands_lib.SENTINEL2
  # Evenly spaced over 400-1000 nm, like a hyperspectral imager.
  return tuple(bands_lib.Band(name=f"S{i:03d}", wavelength_nm=float(w))
               for i, w in enumerate(np.linspace(400, 1000, num_bands)))


@DATASETS.register("synthetic")
def synthetic(*, bands=None, num_bands: int = 4, num_classes: int = 3,
              image_size: int = 16, num_train: int = 96, num_val: int = 32,
              num_test: int = 32, task: str = CLASSIFICATION, noise: float = 0.5,
              seed: int = 0) -> Dataset:
  """Builds the dataset (the same for the same arguments)."""
  if task not in (CLASSIFICATION, SEGMENTATION, UNLABELLED):
    raise ValueError(f"Unknown task {task!r}.")
  all_bands = _synthetic_bands(num_bands)
  rng = np.random.default_rng(seed)
  signatures = rng.normal(0, 1, (num_classes, num_bands)).astype(np.float32)

  def make(n: int, split_seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed * 1000 + split_seed)
    labels = r.integers(0, num_classes, n).astype(np.int32)
    yy, xx = np.mgrid[:image_size, :image_size] / image_size
    if task == SEGMENTATION:
      # Left/right halves belong to two classes; the boundary moves.
      other = r.integers(0, num_classes, n).astype(np.int32)
      cut = r.uniform(0.3, 0.7, n)
      mask = np.where(xx[None] < cut[:, None, None], labels[:, None, None],
                      other[:, None, None]).astype(np.int32)
      image = signatures[mask]
    else:
      pattern = np.sin(2 * np.pi * (labels[:, None, None] + 1) * (xx + yy)[None])
      image = signatures[labels][:, None, None, :] * (1 + 0.5 * pattern[..., None])
    image = image + noise * r.normal(0, 1, image.shape)
    out = {"image": (10 + image).astype(np.float32)}
    if task == CLASSIFICATION:
      out["label"] = labels
    elif task == SEGMENTATION:
      out["mask"] = mask
    return out

  train = make(num_train, 1)
  splits = {"train": ArraySource(**train), "val": ArraySource(**make(num_val, 2)),
            "test": ArraySource(**make(num_test, 3))}
  selected = bands_lib.select(all_bands, tuple(bands) if bands else None)
  if bands:
    idx = bands_lib.indices(all_bands, tuple(bands))
    splits = {k: _BandView(v, idx) for k, v in splits.items()}
  info = DatasetInfo(
      name="synthetic", bands=selected,
      class_names=tuple(f"class_{i}" for i in range(num_classes)) if task != UNLABELLED else (),
      task=task, ignore_index=None, image_size=(image_size, image_size),
      rgb_bands=bands_lib.names(selected)[:3])
  return Dataset(info=info, splits=splits)


class _BandView:
  """Presents a subset of a source's channels, in the given order."""

  def __init__(self, source, indices):
    self._source, self._indices = source, list(indices)

  def __len__(self) -> int:
    return len(self._source)

  def describe(self, index: int) -> str:
    """Where the wrapped source's example `index` comes from."""
    return describe_example(self._source, index)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    item = dict(self._source[i])
    item["image"] = item["image"][..., self._indices]
    return item
