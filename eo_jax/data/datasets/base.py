"""The dataset contract.

A dataset factory takes `config.data` and returns a `Dataset`: what the data
is (`DatasetInfo`: bands, classes, task) and one random-access source per
split. A source is anything with `__len__` and `__getitem__(i)` returning a
dict of numpy arrays in the dataset's raw units:

  classification: {'image': (H, W, C) float32, 'label': () int32}
  segmentation:   {'image': (H, W, C) float32, 'mask': (H, W) int32}
  unlabelled:     {'image': (H, W, C) float32}

A source that reads files may also have `describe(index) -> str`, saying
where example `index` comes from (its file), for error messages;
`data/validate.py` names 'example <index>' for sources without it.

Any other key is allowed and reaches the batch under the same name. An array
of rank 2 or 3 whose first two dimensions are the image's (H, W) is spatial:
it is resized, cropped, flipped and rotated with the image (nearest for
integer / bool arrays, which keep their dtype; bilinear for floating ones,
which become float32). Anything else is stacked unchanged. 'mask' must be
spatial and 'label' never is; both are batched as int32. Only 'image' is
normalised. Every example carries the same keys with the same shapes.
Multi-view training (DINO's crops) drops spatial keys other than 'mask'.

Normalisation with the training split's per-band statistics, augmentation and
batching happen later, in `data/pipeline.py`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data.bands import Band
from eo_jax.registry import Registry

CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
UNLABELLED = "unlabelled"


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset after band selection."""
  name: str
  bands: tuple[Band, ...]
  class_names: tuple[str, ...] = ()
  task: str = CLASSIFICATION
  ignore_index: int | None = None
  image_size: tuple[int, int] | None = None
  rgb_bands: tuple[str, ...] = ()  # band names to render as R, G, B

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_bands(self) -> int:
    return len(self.bands)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["bands"] = [b.to_dict() for b in self.bands]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "DatasetInfo":
    d = dict(d)
    d["bands"] = tuple(Band.from_dict(b) for b in d["bands"])
    for key in ("class_names", "rgb_bands"):
      d[key] = tuple(d.get(key, ()))
    if d.get("image_size") is not None:
      d["image_size"] = tuple(d["image_size"])
    return cls(**d)


@dataclasses.dataclass
class Dataset:
  """A dataset's description and its sources by split name.

  `config_key` is set by `build_dataset`: it identifies the config the
  dataset was built from, and keys the per-process caches of band
  statistics and of validation (None: built directly, never cached).
  """
  info: DatasetInfo
  splits: dict[str, Source]
  config_key: str | None = dataclasses.field(default=None, compare=False)

  def split(self, name: str) -> Source:
    if name not in self.splits:
      raise KeyError(f"Dataset {self.info.name!r} has no split {name!r}; "
                     f"it has {sorted(self.splits)}.")
    source = self.splits[name]
    if len(source) == 0:
      raise ValueError(f"Split {name!r} of dataset {self.info.name!r} is empty. "
                       "Check the data path and the split fractions in config.data.")
    return source


DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


class MissingDataError(errors.UserError, FileNotFoundError):
  """Raised when a dataset is not on disk; the message says where to get it."""


class DataError(errors.UserError, ValueError):
  """Data that is there but unusable: an unreadable or truncated file, an
  image of the wrong shape or band count, NaN / infinite values, labels out
  of range. The message names the split, the example, its file and the fix.
  """


def describe_example(source: Any, index: int) -> str:
  """Where example `index` of `source` comes from: its `describe(index)`
  (a file name) when it has one, else 'example <index>'."""
  fn = getattr(source, "describe", None)
  if fn is not None:
    try:
      return str(fn(index))
    except Exception:  # pylint: disable=broad-except; only a message is at stake
      pass
  return f"example {index}"


def missing_data(name: str, path: Any, url: str, config_key: str,
                 layout: str) -> MissingDataError:
  where = (f"not found at {path!s}" if str(path) not in ("", ".") else
           f"needs a local copy and {config_key} is not set")
  # One line: main.py prints it as the run's single `error: ...` line.
  return MissingDataError(
      f"{name} {where}. Download it from {url} and set {config_key}=/path/to/it "
      f"(expected layout: {layout}).")


class LabelledImageFiles(abc.ABC):
  """A lazy source over labelled image files: {'image': float32, 'label': int32}.

  Subclasses say where example i lives (`_where`) and how to decode it
  (`_decode`); this class turns a decoding failure or an image of the wrong
  shape into an error that names the file and the fix.
  """
  dataset_name = "dataset"
  reread_hint = "re-extract or re-download the dataset"

  def __init__(self, labels: Sequence[int], name: str,
               image_shape: tuple[int, ...] | None = None):
    self.labels = np.asarray(labels, np.int32)
    self._name = name
    self._shape = None if image_shape is None else tuple(image_shape)

  @property
  def image_shape(self) -> tuple[int, ...] | None:
    """The shape every image must have (None: not checked)."""
    return self._shape

  def __len__(self) -> int:
    return len(self.labels)

  @abc.abstractmethod
  def _where(self, index: int) -> str:
    """Where example `index` is stored, for error messages."""

  def describe(self, index: int) -> str:
    """The file of example `index` (for error messages)."""
    return self._where(int(index))

  @abc.abstractmethod
  def _decode(self, index: int) -> np.ndarray:
    """Example `index`'s image, decoded; may raise anything on a bad file."""

  def read_image(self, index: int) -> np.ndarray:
    """Example `index`'s image as stored (H, W, C), checked."""
    try:
      image = self._decode(index)
    except Exception as e:  # pylint: disable=broad-except; decoders raise many types
      raise ValueError(
          f"Could not read {self.dataset_name} image {self._where(index)}: "
          f"{type(e).__name__}: {e}. The file is corrupt or truncated; "
          f"{self.reread_hint}.") from e
    if self._shape is not None and image.shape != self._shape:
      raise ValueError(
          f"{self.dataset_name} image {self._where(index)} has shape "
          f"{image.shape}, expected {self._shape} like the others; the file "
          f"is corrupt or not a {self.dataset_name} image.")
    return image

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} examples.")
    return {"image": self.read_image(index).astype(np.float32),
            "label": np.int32(self.labels[index])}


class ArraySource:
  """A source over in-memory arrays (one entry per example)."""

  def __init__(self, **arrays: np.ndarray):
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"Arrays of different lengths: { {k: len(v) for k, v in arrays.items()} }")
    self._arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self._arrays.values())))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self._arrays.items()}


def stratified_split(labels: Sequence[int], fractions: Sequence[float],
                     seed: int) -> list[np.ndarray]:
  """Deterministic stratified split of example indices.

  Each class's examples are shuffled with `seed` and cut at the cumulative
  `fractions`, so every split keeps the class proportions (up to rounding).
  """
  labels = np.asarray(labels)
  if not np.isclose(sum(fractions), 1.0):
    raise ValueError(f"Split fractions must sum to 1, got {list(fractions)}.")
  rng = np.random.default_rng(seed)
  parts: list[list[np.ndarray]] = [[] for _ in fractions]
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    idx = idx[rng.permutation(len(idx))]
    cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
    for part, chunk in zip(parts, np.split(idx, cuts)):
      part.append(chunk)
  return [np.sort(np.concatenate(p)) if p else np.zeros((0,), int) for p in parts]


def hold_out_val(train: Any, val_fraction: float, split_seed: int) -> dict[str, Any]:
  """{'train', 'val'} from a labelled source: `val_fraction` of each class
  held out as 'val' (`stratified_split`); {'train': train} when it is 0.
  `train` needs `.labels` and `.subset(indices, name)`."""
  if val_fraction <= 0:
    return {"train": train}
  train_idx, val_idx = stratified_split(
      train.labels, (1.0 - val_fraction, val_fraction), split_seed)
  return {"train": train.subset(train_idx, "train"),
          "val": train.subset(val_idx, "val")}
