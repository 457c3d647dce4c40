"""'eurosat': EuroSAT land-use classification (Helber et al. 2019), 10 classes.

Two published forms, both read lazily (one file per `__getitem__`) from a
local path (`config.data.path`):

* variant='rgb': JPEGs `<root>/<Class>/<Class>_<n>.jpg`, 64 x 64 x 3 uint8
  (EuroSAT.zip extracts to `2750/`, the Zenodo copy to `EuroSAT_RGB/`).
* variant='all': GeoTIFFs `<root>/<Class>/<Class>_<n>.tif`, 64 x 64 x 13
  uint16 (EuroSATallBands.zip extracts to
  `ds/images/remote_sensing/otherDatasets/sentinel_2/tif/`, the Zenodo copy
  to `EuroSAT_MS/`). The 13 bands are stored B01..B12 and then B8A: B8A is
  LAST, unlike Sentinel-2's numbering. The order is declared by name below.

`path` may be the folder holding the class folders, any folder above it, or
the .zip itself. With source='tfds', `path` is instead a TFDS data_dir with
`eurosat/rgb` or `eurosat/all` already prepared (see tfds_source.py).

EuroSAT has no official split; examples are split per class with a fixed
seed (`split_fractions` for train/val/test, default 60/20/20).
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import tfds_source
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, Dataset,
                                       DatasetInfo, LabelledImageFiles,
                                       missing_data, stratified_split)

CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway",
           "Industrial", "Pasture", "PermanentCrop", "Residential", "River",
           "SeaLake")
# Channel order of the EuroSAT GeoTIFFs (and of TFDS 'eurosat/all').
MS_BAND_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                 "B09", "B10", "B11", "B12", "B8A")
URLS = {"rgb": "https://madm.dfki.de/files/sentinel/EuroSAT.zip",
        "all": "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip"}
ZENODO_URL = "https://zenodo.org/records/7711810"
_EXTENSIONS = {"rgb": ("jpg", "jpeg"), "all": ("tif", "tiff")}
_FILE_RE = re.compile(r"^(?P<prefix>(?:.*/)?)(?P<cls>[A-Za-z]+)/(?P=cls)_(?P<n>\d+)"
                      r"\.(?P<ext>[A-Za-z]+)$")
_MAX_DEPTH = 8  # ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<C>/


def _layout(variant: str) -> str:
  ext = _EXTENSIONS[variant][0]
  return (f"<path>/<Class>/<Class>_<n>.{ext} for the classes {list(CLASSES)} "
          "(path may also be a folder above, or the downloaded .zip)")


def _group_matches(names: Sequence[str], variant: str
                   ) -> list[tuple[str, int, int]]:
  """(relative name, label, number) of the files of the largest class root."""
  groups: dict[str, list[tuple[str, int, int]]] = {}
  for name in names:
    m = _FILE_RE.match(name)
    if (not m or m["cls"] not in CLASSES or "__MACOSX" in name
        or m["ext"].lower() not in _EXTENSIONS[variant]):
      continue
    groups.setdefault(m["prefix"], []).append(
        (name, CLASSES.index(m["cls"]), int(m["n"])))
  if not groups:
    return []
  # If several copies exist under the path, use the largest one.
  best = max(sorted(groups), key=lambda p: len(groups[p]))
  return sorted(groups[best], key=lambda t: (t[1], t[2]))


def _walk(root: Path) -> list[str]:
  names = []
  base_depth = len(root.parts)
  for dirpath, dirnames, filenames in os.walk(root):
    depth = len(Path(dirpath).parts) - base_depth
    if depth >= _MAX_DEPTH:
      dirnames[:] = []
    dirnames.sort()
    rel = Path(dirpath).relative_to(root).as_posix()
    prefix = "" if rel == "." else rel + "/"
    names.extend(prefix + f for f in sorted(filenames))
  return names


class _FileStore:
  """Reads files' bytes from a folder or a zip (opened lazily per process)."""

  def __init__(self, root: Path):
    self.root = root
    self.is_zip = root.is_file()
    self._zip: zipfile.ZipFile | None = None
    self._pid = -1

  def __getstate__(self) -> dict:
    # A ZipFile handle cannot cross into Grain worker processes.
    return {**self.__dict__, "_zip": None, "_pid": -1}

  def list(self) -> list[str]:
    if self.is_zip:
      with zipfile.ZipFile(self.root) as z:
        return z.namelist()
    return _walk(self.root)

  def read(self, name: str) -> bytes:
    if not self.is_zip:
      return (self.root / name).read_bytes()
    if self._zip is None or self._pid != os.getpid():
      self._zip, self._pid = zipfile.ZipFile(self.root), os.getpid()
    return self._zip.read(name)


def _decode(data: bytes, variant: str) -> np.ndarray:
  if variant == "rgb":
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img.convert("RGB"))
  import tifffile  # pylint: disable=g-import-not-at-top
  image = tifffile.imread(io.BytesIO(data))
  if image.ndim == 3 and image.shape[0] == len(MS_BAND_ORDER) != image.shape[-1]:
    image = np.moveaxis(image, 0, -1)  # planar (C, H, W) files
  return image


class EuroSATFiles(LabelledImageFiles):
  """Lazy source over EuroSAT image files: {'image': float32, 'label': int32}."""
  dataset_name = "EuroSAT"

  def __init__(self, store: _FileStore, items: Sequence[tuple[str, int, int]],
               variant: str, shape: tuple[int, ...] | None, name: str):
    super().__init__([t[1] for t in items], name, shape)
    self._store = store
    self._names = [t[0] for t in items]
    self._variant = variant

  def __repr__(self) -> str:
    return f"EuroSATFiles({self._variant}, {self._name}, n={len(self)})"

  def _where(self, index: int) -> str:
    sep = "!" if self._store.is_zip else os.sep
    return f"{self._store.root}{sep}{self._names[index]}"

  def _decode(self, index: int) -> np.ndarray:
    return _decode(self._store.read(self._names[index]), self._variant)

  def subset(self, indices: np.ndarray, name: str) -> "EuroSATFiles":
    items = [(self._names[i], int(self.labels[i]), 0) for i in indices]
    return EuroSATFiles(self._store, items, self._variant, self._shape, name)


def _open_files(path: str | None, variant: str) -> EuroSATFiles:
  url = f"{URLS[variant]} (or {ZENODO_URL})"
  if not path or not Path(path).expanduser().exists():
    raise missing_data(f"EuroSAT ({variant})", path, url, "config.data.path",
                       _layout(variant))
  store = _FileStore(Path(path).expanduser().resolve())
  try:
    names = store.list()
  except zipfile.BadZipFile as e:
    raise ValueError(f"{store.root} is not a readable zip file ({e}); "
                     "re-download it or point config.data.path at the "
                     "extracted folder.") from e
  items = _group_matches(names, variant)
  if not items:
    raise missing_data(f"EuroSAT ({variant}) images", store.root, url,
                       "config.data.path", _layout(variant))
  first = EuroSATFiles(store, items[:1], variant, None, "probe").read_image(0)
  channels = 3 if variant == "rgb" else len(MS_BAND_ORDER)
  if first.ndim != 3 or first.shape[-1] != channels:
    raise ValueError(f"EuroSAT image {store.root}/{items[0][0]} has shape "
                     f"{first.shape}; variant={variant!r} expects {channels} "
                     "channels. Check config.data.variant.")
  return EuroSATFiles(store, items, variant, first.shape, "all")


def _open_tfds(path: str | None, variant: str
               ) -> tuple[tfds_source.TfdsSource, np.ndarray, tuple[int, ...]]:
  name = f"eurosat/{variant}"
  image_key = "image" if variant == "rgb" else "sentinel2"
  url = f"{URLS[variant]} via tfds.builder({name!r}).download_and_prepare()"
  ds = tfds_source.open_data_source(name, "train", path, url=url)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  lite = tfds_source.open_data_source(
      name, "train", path, url=url,
      decoders={image_key: tfds.decode.SkipDecoding()})
  raw = tfds_source.read_labels(lite)
  names = tfds_source.label_names(ds) or CLASSES
  unknown = [n for n in names if n not in CLASSES]
  if unknown:
    raise ValueError(f"TFDS {name} has classes {unknown} that EuroSAT lacks.")
  label_map = np.array([CLASSES.index(n) for n in names], np.int32)
  source = tfds_source.TfdsSource(ds, image_key, label_map=label_map, name=name,
                                  labels=label_map[raw])
  shape = source[0]["image"].shape
  return source, source.labels, shape


@DATASETS.register("eurosat")
def eurosat(path: str | None = None, variant: str = "rgb",
            source: str = "files",
            split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
            split_seed: int = 0) -> Dataset:
  """Builds EuroSAT (see the module docstring).

  Args:
    path: the data (folder or .zip), or a TFDS data_dir for source='tfds'.
    variant: 'rgb' (3 bands R, G, B) or 'all' (13 Sentinel-2 bands).
    source: 'files' (the published layout) or 'tfds' (prepared TFDS data).
    split_fractions: train, val, test fractions (sum 1), per class.
    split_seed: seed of the per-class shuffle that cuts the splits.
  """
  if variant not in _EXTENSIONS:
    raise ValueError(f"config.data.variant must be 'rgb' or 'all', got "
                     f"{variant!r}.")
  if source not in ("files", "tfds"):
    raise errors.ConfigValueError(
        f"config.data.source must be 'files' (the published layout) or "
        f"'tfds' (prepared TFDS data), got {source!r}.")
  if len(split_fractions) != 3:
    raise ValueError("config.data.split_fractions needs 3 numbers (train, val, "
                     f"test), got {tuple(split_fractions)}.")
  if source == "files":
    full = _open_files(path, variant)
    labels, shape = full.labels, full.image_shape
  else:
    full, labels, shape = _open_tfds(path, variant)
  parts = stratified_split(labels, split_fractions, split_seed)
  splits = {name: full.subset(idx, name)
            for name, idx in zip(("train", "val", "test"), parts)}
  if variant == "rgb":
    bands, rgb = bands_lib.RGB, ("R", "G", "B")
  else:
    bands = bands_lib.select(bands_lib.SENTINEL2, MS_BAND_ORDER)
    rgb = ("B04", "B03", "B02")
  info = DatasetInfo(name="eurosat", bands=tuple(bands), class_names=CLASSES,
                     task=CLASSIFICATION, image_size=tuple(shape[:2]),
                     rgb_bands=rgb)
  return Dataset(info=info, splits=splits)
