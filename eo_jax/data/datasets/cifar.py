"""'cifar10' and 'cifar10_c': CIFAR-10 and its corrupted test sets, CIFAR-10-C.

Natural RGB images (32 x 32, 10 classes): a reference point for the
corruption benchmark (`python -m eo_jax.robustness`), whose published
CIFAR-10-C numbers (Hendrycks & Dietterich 2019) a run can be compared with.

'cifar10' reads the BINARY release, cifar-10-binary.tar.gz (never the pickled
python one: unpickling a download runs whatever code it holds). `path` is
the .tar.gz itself, the extracted `cifar-10-batches-bin/` folder or the
folder holding either. Each batch file is a run of 3073-byte records: one
label byte, then the 1024 red, 1024 green and 1024 blue bytes of a 32 x 32
image, each plane row-major. `batches.meta.txt` names the classes, one a
line, in label order.

  'train': data_batch_1.bin .. data_batch_5.bin, less the 'val' examples;
  'val':   `val_fraction` of each class of those, chosen with `split_seed`
           (deterministic, stratified; absent when `val_fraction` is 0);
  'test':  test_batch.bin.

With source='tfds', `path` is instead a TFDS data_dir holding TFDS's
'cifar10' prepared as ArrayRecord (read random-access through
tfds_source.py; never downloaded). TFDS stores the records shuffled, but its
'id' feature ('train_00042') keeps each record's place in the binary
release, so the examples are put back in that order: the 'val' rule, the
example order, class names, bands and pixels are then those of the binary
release, and a run does not depend on the source.

'cifar10_c' reads one corruption at one severity of CIFAR-10-C as published
on Zenodo (CIFAR-10-C.tar, extracted; `path` is the `CIFAR-10-C/` folder or
the folder holding it): `<corruption>.npy` holds (50000, 32, 32, 3) uint8,
the 10,000 test images at severity 1, then at severity 2, ... 5, and
`labels.npy` (50000,) their labels. Its only split is 'test', in the order
of CIFAR-10's test_batch.bin. It has no training split, so its bands carry
the published statistics of CIFAR-10's 50,000 training images; a restored
run normalises with the statistics of its own checkpoint instead.

Images come as float32 in [0, 255], bands R, G, B (`bands.RGB`). Batch and
.npy files are memory-mapped and read one example at a time; the .tar.gz is
decompressed into memory once (about 180 MB).
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import tfds_source
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, DataError,
                                       Dataset, DatasetInfo, LabelledImageFiles,
                                       missing_data, hold_out_val)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_C_URL = "https://zenodo.org/records/2535967 (CIFAR-10-C.tar)"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")
# The 15 corruptions of the benchmark (mCE averages over these) and the 4
# held-out ones the release also contains, for validation.
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
               "glass_blur", "motion_blur", "zoom_blur", "snow", "frost", "fog",
               "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
# Per-channel mean and (population) std of the 50,000 training images, in
# [0, 255]: 255 x (0.49140, 0.48216, 0.44653) and 255 x (0.24703, 0.24349,
# 0.26159).
TRAIN_MEAN = (125.3069, 122.9504, 113.8654)
TRAIN_STD = (62.9932, 62.0887, 66.7049)
SOURCES = ("files", "tfds")
TFDS_NAME = "cifar10"
_TFDS_URL = f"{CIFAR10_URL} via tfds.builder({TFDS_NAME!r}).download_and_prepare()"
_FOLDER = "cifar-10-batches-bin"
_ARCHIVE = "cifar-10-binary.tar.gz"
_C_FOLDER = "CIFAR-10-C"
_LAYOUT = (f"cifar-10-binary.tar.gz, or its extracted {_FOLDER}/ with "
           f"{', '.join(TRAIN_FILES)}, {TEST_FILE} and {META_FILE}")
C_LAYOUT = (f"{_C_FOLDER}/<corruption>.npy (50000, 32, 32, 3) uint8 and "
             f"{_C_FOLDER}/labels.npy, as CIFAR-10-C.tar extracts")


def _rgb_bands() -> tuple[bands_lib.Band, ...]:
  return tuple(b.with_stats(m, s)
               for b, m, s in zip(bands_lib.RGB, TRAIN_MEAN, TRAIN_STD))


def decode_record(record: np.ndarray) -> np.ndarray:
  """(32, 32, 3) uint8 image of one 3073-byte record (label byte first)."""
  planes = np.asarray(record[1:]).reshape(3, 32, 32)
  # Row-major like every other reader's images: sums over pixels (the band
  # statistics) then add in the same order whatever the source.
  return np.ascontiguousarray(planes.transpose(1, 2, 0))


class _Records:
  """The (n, 3073) uint8 records of one batch file: memory-mapped from disk
  (opened lazily in each process) or held in memory (read from the .tar.gz)."""

  def __init__(self, where: str, path: Path | None = None,
               data: np.ndarray | None = None):
    self.where = where
    self._path = path
    self._data = data

  def __getstate__(self) -> dict:
    # A memory map pickles as a copy of the whole file; reopen it instead.
    state = dict(self.__dict__)
    if self._path is not None:
      state["_data"] = None
    return state

  @property
  def array(self) -> np.ndarray:
    if self._data is None:
      self._data = np.memmap(self._path, np.uint8, "r").reshape(-1, RECORD_BYTES)
    return self._data


class CifarRecords(LabelledImageFiles):
  """Lazy source over CIFAR-10 batch records: {'image', 'label'}."""
  dataset_name = "CIFAR-10"
  reread_hint = f"re-download {CIFAR10_URL}"

  def __init__(self, files: Sequence[_Records], rows: np.ndarray,
               labels: Sequence[int], name: str):
    super().__init__(labels, name, IMAGE_SHAPE)
    self._files = list(files)
    self._rows = np.asarray(rows, np.int64).reshape(-1, 2)  # (file, record)

  def __repr__(self) -> str:
    return f"CifarRecords({self._name}, n={len(self)})"

  def _where(self, index: int) -> str:
    file, row = self._rows[index]
    return f"{self._files[file].where}, record {row}"

  def _decode(self, index: int) -> np.ndarray:
    file, row = self._rows[index]
    return decode_record(self._files[file].array[row])

  def subset(self, indices: np.ndarray, name: str) -> "CifarRecords":
    return CifarRecords(self._files, self._rows[indices], self.labels[indices],
                        name)


def _check_records(data_bytes: int, where: str) -> None:
  if data_bytes % RECORD_BYTES or not data_bytes:
    raise DataError(
        f"CIFAR-10 batch {where} holds {data_bytes} bytes, not a whole number "
        f"of {RECORD_BYTES}-byte records: it is truncated or not from the "
        f"binary release. Re-download {CIFAR10_URL}.")


def _records_from_folder(folder: Path, name: str) -> _Records:
  path = folder / name
  if not path.is_file():
    raise missing_data(f"CIFAR-10's {name}", path, CIFAR10_URL,
                       "config.data.path", _LAYOUT)
  _check_records(path.stat().st_size, str(path))
  return _Records(str(path), path=path)


def _find_source(path: str | None) -> Path:
  """The batch folder or the .tar.gz that `path` points at (or holds)."""
  if not path:
    raise missing_data("CIFAR-10", path, CIFAR10_URL, "config.data.path", _LAYOUT)
  root = Path(path).expanduser()
  if root.is_file():
    return root
  for candidate in (root, root / _FOLDER):
    if (candidate / TEST_FILE).is_file() or (candidate / META_FILE).is_file():
      return candidate
  if (root / _ARCHIVE).is_file():
    return root / _ARCHIVE
  if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
    raise errors.ConfigValueError(
        f"{root} holds the pickled python version of CIFAR-10, which eo_jax "
        f"does not read (unpickling runs code). Download the binary version, "
        f"{CIFAR10_URL}, and set config.data.path to it.")
  raise missing_data("CIFAR-10", root, CIFAR10_URL, "config.data.path", _LAYOUT)


def _read_archive(path: Path) -> dict[str, bytes]:
  """The wanted members of cifar-10-binary.tar.gz by file name."""
  wanted = set(TRAIN_FILES) | {TEST_FILE, META_FILE}
  found = {}
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        base = os.path.basename(member.name)
        if member.isfile() and base in wanted:
          found[base] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f"{path} is not a readable tar archive ({e}); re-download "
                    f"{CIFAR10_URL} or point config.data.path at the "
                    "extracted folder.") from e
  missing = sorted(wanted - set(found))
  if missing:
    raise missing_data(f"CIFAR-10 files {missing} in {path.name}", path,
                       CIFAR10_URL, "config.data.path", _LAYOUT)
  return found


def _class_names(text: str, where: str) -> tuple[str, ...]:
  names = tuple(line.strip() for line in text.splitlines() if line.strip())
  if len(names) != len(CLASSES):
    raise DataError(f"{where} names {len(names)} classes, CIFAR-10 has "
                    f"{len(CLASSES)}; re-download {CIFAR10_URL}.")
  return names


def _open(path: str | None) -> tuple[dict[str, _Records], tuple[str, ...]]:
  """(records by file name, class names) of the release at `path`."""
  source = _find_source(path)
  if source.is_file():
    members = _read_archive(source)
    files = {}
    for name in TRAIN_FILES + (TEST_FILE,):
      where = f"{source}!{name}"
      _check_records(len(members[name]), where)
      data = np.frombuffer(members[name], np.uint8).reshape(-1, RECORD_BYTES)
      files[name] = _Records(where, data=data)
    meta = members[META_FILE].decode("utf-8", errors="replace")
    return files, _class_names(meta, f"{source}!{META_FILE}")
  files = {name: _records_from_folder(source, name)
           for name in TRAIN_FILES + (TEST_FILE,)}
  meta_path = source / META_FILE
  if not meta_path.is_file():
    raise missing_data(f"CIFAR-10's {META_FILE}", meta_path, CIFAR10_URL,
                       "config.data.path", _LAYOUT)
  return files, _class_names(meta_path.read_text(errors="replace"), str(meta_path))


def _source(files: Sequence[_Records], name: str) -> CifarRecords:
  rows, labels = [], []
  for i, records in enumerate(files):
    label_bytes = np.asarray(records.array[:, 0])
    bad = np.flatnonzero(label_bytes >= len(CLASSES))
    if bad.size:
      raise DataError(
          f"CIFAR-10 batch {records.where}, record {bad[0]}: label "
          f"{label_bytes[bad[0]]} is outside 0..9 ({bad.size} such records); "
          f"the file is corrupt. Re-download {CIFAR10_URL}.")
    rows.append(np.stack([np.full(len(label_bytes), i),
                          np.arange(len(label_bytes))], -1))
    labels.append(label_bytes)
  return CifarRecords(files, np.concatenate(rows), np.concatenate(labels), name)


def _id_number(value: object, prefix: str) -> int:
  """The record number of a TFDS cifar10 id ('train_00042' -> 42), else -1."""
  text = (value.decode("utf-8", "replace") if isinstance(value, bytes)
          else str(value))
  digits = text[len(prefix):]
  return int(digits) if text.startswith(prefix) and digits.isdigit() else -1


def _tfds_split(path: str | None, split: str
                ) -> tuple[tfds_source.TfdsSource, tuple[str, ...]]:
  """One split of TFDS cifar10 in the binary release's record order, and its
  class names."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  full = tfds_source.open_data_source(TFDS_NAME, split, path, url=_TFDS_URL)
  # Ids and labels only: skipping the PNG decode makes this pass cheap.
  lite = tfds_source.open_data_source(
      TFDS_NAME, split, path, url=_TFDS_URL,
      decoders={"image": tfds.decode.SkipDecoding()})
  n = len(lite)
  ids, labels = np.full(n, -1, np.int64), np.empty(n, np.int32)
  many = getattr(lite, "__getitems__", None)
  for start in range(0, n, 1024):
    idx = list(range(start, min(n, start + 1024)))
    for i, record in zip(idx, many(idx) if many else [lite[i] for i in idx]):
      ids[i] = _id_number(record.get("id", b""), f"{split}_")
      labels[i] = int(record["label"])
  where = path or "the default TFDS data_dir"
  if not np.array_equal(np.sort(ids), np.arange(n)):
    raise DataError(
        f"TFDS {TFDS_NAME} split {split!r} in {where} lacks the ids "
        f"'{split}_00000'.. that TFDS's cifar10 builder writes, which give "
        "the binary release's order (the 'val' split and the example order "
        f"depend on it). Prepare it again with tfds.builder({TFDS_NAME!r}, "
        "data_dir=...).download_and_prepare(file_format='array_record'), or "
        "use source='files'.")
  names = _class_names("\n".join(tfds_source.label_names(full)),
                       f"TFDS {TFDS_NAME} in {where}")
  # order[k] is the TFDS record holding the binary release's record k.
  order = np.argsort(ids)
  source = tfds_source.TfdsSource(full, "image", indices=order,
                                  name=f"{TFDS_NAME} {split} split",
                                  labels=labels)
  return source, names


@DATASETS.register("cifar10")
def cifar10(path: str | None = None, source: str = "files",
            val_fraction: float = 0.1, split_seed: int = 0) -> Dataset:
  """Builds CIFAR-10 from its binary release or from prepared TFDS data (see
  the module docstring).

  Args:
    path: cifar-10-binary.tar.gz, its extracted cifar-10-batches-bin/ folder,
      or the folder holding either; for source='tfds' a TFDS data_dir.
    source: 'files' (the binary release) or 'tfds' (TFDS's 'cifar10').
    val_fraction: share of each class of the training batches held out as
      'val' (0 -> no 'val' split).
    split_seed: seed of the per-class shuffle that picks them.
  """
  if source not in SOURCES:
    raise errors.ConfigValueError(
        f"config.data.source must be one of {list(SOURCES)}, got {source!r}.")
  if not 0.0 <= val_fraction < 1.0:
    raise errors.ConfigValueError(
        f"config.data.val_fraction must be in [0, 1), got {val_fraction}.")
  if source == "files":
    files, class_names = _open(path)
    train = _source([files[n] for n in TRAIN_FILES], "train")
    test = _source([files[TEST_FILE]], "test")
  else:
    train, class_names = _tfds_split(path, "train")
    test, _ = _tfds_split(path, "test")
  splits = {"test": test}
  splits.update(hold_out_val(train, val_fraction, split_seed))
  info = DatasetInfo(name="cifar10", bands=bands_lib.RGB, class_names=class_names,
                     task=CLASSIFICATION, image_size=IMAGE_SHAPE[:2],
                     rgb_bands=("R", "G", "B"))
  return Dataset(info=info, splits=splits)


# --------------------------------------------------------------- CIFAR-10-C
class CorruptedImages(LabelledImageFiles):
  """One severity of one CIFAR-10-C file: {'image', 'label'}, memory-mapped."""
  dataset_name = "CIFAR-10-C"
  reread_hint = f"re-extract or re-download {CIFAR10_C_URL}"

  def __init__(self, path: Path, start: int, labels: Sequence[int], name: str):
    super().__init__(labels, name, IMAGE_SHAPE)
    self._path = path
    self._start = int(start)
    self._array: np.ndarray | None = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, "_array": None}

  def __repr__(self) -> str:
    return f"CorruptedImages({self._path.name}, {self._name}, n={len(self)})"

  def _where(self, index: int) -> str:
    return f"{self._path}, image {self._start + index}"

  def _decode(self, index: int) -> np.ndarray:
    if self._array is None:
      self._array = np.load(self._path, mmap_mode="r")
    return np.asarray(self._array[self._start + index])


def find_cifar10_c(path: str | os.PathLike | None,
                   key: str = "config.data.path") -> Path:
  """The CIFAR-10-C folder at `path` (the folder itself or one holding it);
  `key` names the setting that gives the path, for the error message."""
  if not path:
    raise missing_data("CIFAR-10-C", path, CIFAR10_C_URL, key, C_LAYOUT)
  root = Path(path).expanduser()
  if root.is_file():
    raise errors.ConfigValueError(
        f"{root} is a file; extract it (tar -xf {root.name}) and give the "
        f"extracted {_C_FOLDER} folder.")
  for candidate in (root, root / _C_FOLDER):
    if (candidate / "labels.npy").is_file():
      return candidate
  raise missing_data("CIFAR-10-C", root, CIFAR10_C_URL, key, C_LAYOUT)


def _load_header(path: Path, what: str) -> np.ndarray:
  if not path.is_file():
    raise missing_data(f"CIFAR-10-C's {what}", path, CIFAR10_C_URL,
                       "config.data.path", C_LAYOUT)
  try:
    return np.load(path, mmap_mode="r")
  except (ValueError, OSError) as e:
    raise DataError(f"{path} is not a readable .npy file ({e}); "
                    f"re-extract {CIFAR10_C_URL}.") from e


@DATASETS.register("cifar10_c")
def cifar10_c(path: str | None = None, corruption: str = "",
              severity: int = 1) -> Dataset:
  """Builds one corruption at one severity of CIFAR-10-C (see the module
  docstring).

  Args:
    path: the extracted CIFAR-10-C folder, or the folder holding it.
    corruption: one of `CORRUPTIONS` (or `EXTRA_CORRUPTIONS`).
    severity: 1 (mildest) to 5.
  """
  known = CORRUPTIONS + EXTRA_CORRUPTIONS
  if corruption not in known:
    raise errors.ConfigValueError(
        f"config.data.corruption={corruption!r} is not a CIFAR-10-C "
        f"corruption; use one of {list(known)}.")
  if isinstance(severity, bool) or severity not in SEVERITIES:
    raise errors.ConfigValueError(
        f"config.data.severity={severity!r}; CIFAR-10-C has severities "
        f"{list(SEVERITIES)}.")
  folder = find_cifar10_c(path)
  labels = _load_header(folder / "labels.npy", "labels.npy")
  images = _load_header(folder / f"{corruption}.npy", f"{corruption}.npy")
  n = len(labels)
  if (labels.ndim != 1 or images.shape[1:] != IMAGE_SHAPE
      or images.dtype != np.uint8 or len(images) != n or n % len(SEVERITIES)):
    raise DataError(
        f"{folder / (corruption + '.npy')} holds {images.dtype} {images.shape} "
        f"for labels.npy's {labels.shape}; expected (5 x n, 32, 32, 3) uint8 "
        f"and (5 x n,) labels. Re-extract {CIFAR10_C_URL}.")
  per = n // len(SEVERITIES)
  start = (int(severity) - 1) * per
  chosen = np.asarray(labels[start:start + per]).astype(np.int64)
  if chosen.size and (chosen.min() < 0 or chosen.max() >= len(CLASSES)):
    raise DataError(f"{folder / 'labels.npy'} holds labels outside 0..9; "
                    f"re-extract {CIFAR10_C_URL}.")
  source = CorruptedImages(folder / f"{corruption}.npy", start, chosen,
                           f"{corruption}-{severity}")
  info = DatasetInfo(name="cifar10_c", bands=_rgb_bands(), class_names=CLASSES,
                     task=CLASSIFICATION, image_size=IMAGE_SHAPE[:2],
                     rgb_bands=("R", "G", "B"))
  return Dataset(info=info, splits={"test": source})
