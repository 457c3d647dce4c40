"""Adapts a prepared TFDS dataset (`tfds.data_source`) to the Source contract.

`tfds.data_source` reads ArrayRecord files random-access without TensorFlow.
The adapter renames the dataset's image feature to 'image' (float32, channels
last) and its label to 'label' (int32), and can restrict the source to a
subset of indices so that we can cut our own train/val/test splits from a
TFDS split. Nothing is ever downloaded: the data must be prepared already.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from eo_jax.data.datasets.base import missing_data


def open_data_source(name: str, split: str, data_dir: str | None, *,
                     url: str, decoders: Any = None) -> Any:
  """The random-access source of a prepared TFDS split; never downloads.

  Equivalent to `tfds.data_source(name, split=..., data_dir=...,
  download=False)`, with clear errors.

  Raises:
    MissingDataError: naming the dataset, the folder and where to get it,
      when the prepared dataset is not in `data_dir`.
    ValueError: when it was prepared as TFRecord (not random-access).
  """
  import tensorflow_datasets as tfds  # deferred: only this path needs TFDS

  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
  layout = (f"<data_dir>/{name}/<version>/ as written by `tfds.builder("
            f"{name!r}, data_dir=...).download_and_prepare(file_format="
            "'array_record')`")
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise missing_data(f"Prepared TFDS dataset {name!r}", where, url,
                       "config.data.path", layout)
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except NotImplementedError as e:  # prepared, but not random-access
    raise ValueError(
        f"TFDS dataset {name!r} in {where} is stored as "
        f"{builder.info.file_format}, which cannot be read random-access. "
        f"Prepare it again into another data_dir with {layout}.") from e


def label_names(data_source: Any, label_key: str = "label") -> tuple[str, ...]:
  """Class names of a TFDS ClassLabel feature (() if unknown)."""
  info = getattr(data_source, "dataset_info", None)
  try:
    return tuple(info.features[label_key].names)
  except (AttributeError, KeyError, TypeError):
    return ()


def read_labels(data_source: Any, label_key: str = "label",
                chunk: int = 1024) -> np.ndarray:
  """All labels of a data source, read in chunks (open it with decoders that
  skip the images to make this cheap)."""
  n = len(data_source)
  labels = np.empty(n, np.int32)
  many = getattr(data_source, "__getitems__", None)
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    records = many(idx) if many else [data_source[i] for i in idx]
    labels[start:start + len(idx)] = [int(r[label_key]) for r in records]
  return labels


class TfdsSource:
  """A (subset of a) TFDS data source yielding {'image', 'label'}.

  Args:
    data_source: what `tfds.data_source` returned for one split.
    image_key: the feature holding the image ('image', 'sentinel2', ...).
    label_key: the ClassLabel feature.
    indices: which records (in this order); None for all.
    label_map: optional array mapping the TFDS label to ours.
    name: used in `repr`.
    labels: our labels of all records of `data_source`, if known (exposed
      as `.labels` for the records of this source, like the file sources).
  """

  def __init__(self, data_source: Any, image_key: str, label_key: str = "label",
               indices: Sequence[int] | None = None,
               label_map: np.ndarray | None = None, name: str = "tfds",
               labels: np.ndarray | None = None):
    self._all_labels = labels
    self.labels = None
    if labels is not None:
      self.labels = np.asarray(labels if indices is None
                               else labels[np.asarray(indices)], np.int32)
    self._source = data_source
    self._image_key = image_key
    self._label_key = label_key
    self._indices = None if indices is None else np.asarray(indices, np.int64)
    self._label_map = label_map
    self._name = name

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def __repr__(self) -> str:
    return f"TfdsSource({self._name}, n={len(self)})"

  def describe(self, index: int) -> str:
    """The TFDS record behind example `index`."""
    index = int(index)
    record = index if self._indices is None else int(self._indices[index])
    return f"record {record} of TFDS {self._name.split(':')[0]}"

  def subset(self, indices: Sequence[int], name: str) -> "TfdsSource":
    """The examples at `indices` of this source, as a new source."""
    indices = np.asarray(indices, np.int64)
    if self._indices is not None:
      indices = self._indices[indices]
    return TfdsSource(self._source, self._image_key, self._label_key, indices,
                      self._label_map, f"{self._name}:{name}",
                      self._all_labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} examples.")
    record = self._source[index if self._indices is None
                          else int(self._indices[index])]
    image = np.asarray(record[self._image_key], np.float32)
    if image.ndim == 2:
      image = image[..., None]
    label = int(record[self._label_key])
    if self._label_map is not None:
      label = int(self._label_map[label])
    return {"image": image, "label": np.int32(label)}
