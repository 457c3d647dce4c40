"""'whu_ohs': WHU-OHS hyperspectral land cover (Li, Huang & Tu 2022).

WHU-OHS: 7,795 tiles of 512 x 512 px cut from 42 Orbita OHS satellite
images over China, 32 bands (466-940 nm, 10 m), 24 land-cover classes.
Download: https://irsip.whu.edu.cn/resources/WHU_OHS_show.php. Published
layout (the authors' toolbox, github.com/zjjerica/WHU-OHS-Pytorch):

  <path>/tr/image/S1_0007.tif    32-band GeoTIFF, reflectance x 10000
  <path>/tr/label/S1_0007.tif    1-band GeoTIFF, 0 = unlabelled, 1..24
  <path>/val/{image,label}/...   <path>/ts/{image,label}/...

A tile name is <S|T|O><image number>_<tile number> (source / target / other
image). There are no official list files; `split_lists` may name text files
with one tile per line (a name like S1_0007, a file name, or a path; a CSV's
first column), and `tile_prefixes` (e.g. ('S1',)) keeps the tiles of some
OHS images, as in the authors' per-image experiments.

Images: (H, W, 32) pixel-interleaved or (32, H, W) planar files are both
read; values are divided by 10000 (`scale`) as in the authors' loader.
Tiles are cut into non-overlapping patch_size x patch_size patches from the
top-left corner (a remainder narrower than a patch is not used).

Tasks:
* 'segmentation': {'image', 'mask'}; mask = label - 1 (classes 0..23),
  unlabelled pixels = IGNORE_INDEX (255). Labels are sparse, so patches
  with no labelled pixel are dropped (`drop_unlabelled`); they carry no loss
  and no score.
* 'classification': {'image', 'label'}: the most frequent class among the
  labelled pixels (ties -> lower id); patches whose labelled fraction is
  below `min_labelled_fraction` are dropped.
* 'unlabelled': {'image'} for self-supervised pretraining; labels not read.

Label tiles are scanned once per process when patches are selected; image
tiles are read lazily, memory-mapped when stored uncompressed (only the
patch's rows are read), through a small per-process LRU cache.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data import raster
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, SEGMENTATION,
                                       UNLABELLED, Dataset, DatasetInfo,
                                       missing_data)

URL = "https://irsip.whu.edu.cn/resources/WHU_OHS_show.php"
SPLIT_DIRS = {"train": "tr", "val": "val", "test": "ts"}
CLASSES = (
    "Paddy field", "Dry farm", "Woodland", "Shrubbery", "Sparse woodland",
    "Other forest land", "High-covered grassland", "Medium-covered grassland",
    "Low-covered grassland", "River canal", "Lake", "Reservoir pond",
    "Beach land", "Shoal", "Urban built-up", "Rural settlement",
    "Other construction land", "Sand", "Gobi", "Saline-alkali soil",
    "Marshland", "Bare land", "Bare rock", "Ocean")
IGNORE_INDEX = 255
REFLECTANCE_SCALE = 10000.0
RGB_BANDS = ("B14", "B07", "B02")  # 670, 566, 480 nm
_TASKS = (SEGMENTATION, CLASSIFICATION, UNLABELLED)
_EXTENSIONS = (".tif", ".tiff")
_LAYOUT = ("<path>/{tr,val,ts}/image/<name>.tif (32-band GeoTIFF) and "
           "<path>/{tr,val,ts}/label/<name>.tif (uint8, 0 = unlabelled, 1..24)")

# Per-patch label histograms of the label tiles scanned in this process.
_SCAN_CACHE = raster.LRUCache(max_entries=50_000)


@dataclasses.dataclass(frozen=True)
class Tile:
  name: str
  image: Path
  label: Path | None


def _read_list(path: Path) -> list[str]:
  """Tile names of a list file: a name, file name or path per line (CSV ok)."""
  if not path.is_file():
    raise FileNotFoundError(f"Split list {path} does not exist; fix "
                            "config.data.split_lists.")
  names = []
  for line in path.read_text().splitlines():
    entry = line.split(",")[0].strip()
    if not entry or entry.startswith("#"):
      continue
    name = Path(entry).name
    stem, ext = name.rsplit(".", 1) if "." in name else (name, "")
    names.append(stem if "." + ext.lower() in _EXTENSIONS else name)
  return names


def find_tiles(root: Path, split_dir: str, list_file: str | None = None,
               prefixes: Sequence[str] = (), need_labels: bool = True
               ) -> list[Tile]:
  """The tiles of one split folder, sorted by name (optionally filtered)."""
  image_dir, label_dir = root / split_dir / "image", root / split_dir / "label"
  if not image_dir.is_dir():
    raise missing_data(f"WHU-OHS split folder {split_dir!r}", image_dir, URL,
                       "config.data.path", _LAYOUT)
  images = {p.stem: p for p in sorted(image_dir.iterdir())
            if p.suffix.lower() in _EXTENSIONS}
  names = sorted(images)
  if list_file:
    listed = _read_list(root / list_file if not Path(list_file).is_absolute()
                        else Path(list_file))
    unknown = [n for n in listed if n not in images]
    if unknown:
      raise ValueError(f"{list_file} names {len(unknown)} tile(s) missing from "
                       f"{image_dir}, e.g. {unknown[:5]}. Fix the list or "
                       "config.data.split_lists.")
    names = listed
  if prefixes:
    names = [n for n in names if n.split("_")[0] in set(prefixes)]
  tiles = []
  for n in names:
    label = label_dir / images[n].name
    if not label.is_file():
      if need_labels:
        raise missing_data(f"WHU-OHS label of tile {n}", label, URL,
                           "config.data.path", _LAYOUT)
      label = None
    tiles.append(Tile(n, images[n], label))
  return tiles


def _evenly(items: list, limit: int) -> list:
  if limit <= 0 or len(items) <= limit:
    return items
  keep = np.unique(np.round(np.linspace(0, len(items) - 1, limit)).astype(int))
  return [items[i] for i in keep]


def _read_label(tile: Tile, shape: tuple[int, int]) -> np.ndarray:
  label = raster.read_band(tile.label)
  if label.shape != shape:
    raise ValueError(f"Label {tile.label} has shape {label.shape}, its image "
                     f"tiles {shape}; the files do not belong together.")
  bad = np.unique(label[(label < 0) | (label > len(CLASSES))])
  if bad.size:
    raise ValueError(f"Label {tile.label} has values {bad[:10].tolist()} "
                     f"outside 0..{len(CLASSES)} (0 = unlabelled); it is not a "
                     "WHU-OHS label tile.")
  return label


def patch_histograms(label: np.ndarray, size: int) -> np.ndarray:
  """(rows * cols, 25) label counts of the non-overlapping square patches."""
  nr, nc = label.shape[0] // size, label.shape[1] // size
  blocks = label[:nr * size, :nc * size].astype(np.int64)
  patch_id = (np.arange(nr)[:, None, None, None] * nc
              + np.arange(nc)[None, None, :, None])
  blocks = blocks.reshape(nr, size, nc, size)
  flat = (patch_id * (len(CLASSES) + 1) + blocks).ravel()
  counts = np.bincount(flat, minlength=nr * nc * (len(CLASSES) + 1))
  return counts.reshape(nr * nc, len(CLASSES) + 1).astype(np.int32)


def _histograms(tile: Tile, shape: tuple[int, int], size: int) -> np.ndarray:
  key = (raster.file_key(tile.label), size)
  return _SCAN_CACHE.get(key, lambda: patch_histograms(_read_label(tile, shape),
                                                       size))


class WHUOHSPatches:
  """Source of WHU-OHS patches; see the module docstring for the elements."""

  def __init__(self, tiles: Sequence[Tile], tile_shape: tuple[int, int],
               refs: np.ndarray, labels: np.ndarray | None, task: str,
               channels: Sequence[int], size: int, scale: bool,
               cache_size: int, name: str):
    self.tiles = tuple(tiles)
    self.tile_shape = tuple(tile_shape)
    self.refs = np.asarray(refs, np.int64).reshape(-1, 3)  # tile, top, left
    self.labels = labels
    self.task = task
    self.channels = np.asarray(channels, np.int64)
    self.size = size
    self.scale = scale
    self.name = name
    self._cache = raster.LRUCache(cache_size)

  def __len__(self) -> int:
    return len(self.refs)

  def __repr__(self) -> str:
    return f"WHUOHSPatches({self.name}, {self.task}, n={len(self)})"

  def describe(self, index: int) -> str:
    """The tile file of patch `index` and where the patch lies in it."""
    t, top, left = (int(v) for v in self.refs[int(index)])
    tile = self.tiles[t]
    label = (f", label {tile.label}" if tile.label is not None
             and self.task != UNLABELLED else "")
    return f"{tile.image} (patch at row {top}, column {left}{label})"

  def _image(self, t: int) -> np.ndarray:
    tile = self.tiles[t]

    def load() -> np.ndarray:
      header = raster.read_header(tile.image)
      image = raster.channels_last(raster.read_array(tile.image), header.axes,
                                   tile.image)
      if image.shape != (*self.tile_shape, len(bands_lib.WHU_OHS)):
        raise ValueError(
            f"WHU-OHS image {tile.image} has shape {image.shape} (H, W, C); "
            f"expected {(*self.tile_shape, len(bands_lib.WHU_OHS))} like the "
            "first tile. The file is truncated or not a WHU-OHS tile.")
      return image
    return self._cache.get(("image", t), load)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} patches.")
    t, top, left = (int(v) for v in self.refs[index])
    window = np.s_[top:top + self.size, left:left + self.size]
    image = np.asarray(self._image(t)[window][..., self.channels], np.float32)
    if self.scale:
      image /= REFLECTANCE_SCALE
    out = {"image": image}
    if self.task == CLASSIFICATION:
      out["label"] = np.int32(self.labels[index])
    elif self.task == SEGMENTATION:
      raw = self._cache.get(("label", t), lambda: _read_label(
          self.tiles[t], self.tile_shape))[window].astype(np.int32)
      out["mask"] = np.where(raw == 0, IGNORE_INDEX, raw - 1).astype(np.int32)
    return out


def _select_patches(tiles: Sequence[Tile], shape: tuple[int, int], size: int,
                    task: str, drop_unlabelled: bool,
                    min_labelled_fraction: float
                    ) -> tuple[np.ndarray, np.ndarray | None]:
  """(tile, top, left) of the kept patches and their class (classification)."""
  nr, nc = shape[0] // size, shape[1] // size
  grid = np.stack(np.meshgrid(np.arange(nr) * size, np.arange(nc) * size,
                              indexing="ij"), -1).reshape(-1, 2)
  refs, labels = [], []
  for t, tile in enumerate(tiles):
    here = np.concatenate([np.full((len(grid), 1), t), grid], axis=1)
    if task == UNLABELLED or (task == SEGMENTATION and not drop_unlabelled):
      refs.append(here)
      continue
    counts = _histograms(tile, shape, size)
    labelled = counts[:, 1:].sum(axis=1)
    if task == SEGMENTATION:
      keep = labelled > 0
    else:
      keep = (labelled > 0) & (labelled >= min_labelled_fraction * size * size)
      labels.append(np.argmax(counts[keep, 1:], axis=1))
    refs.append(here[keep])
  refs_arr = np.concatenate(refs) if refs else np.zeros((0, 3), np.int64)
  if task != CLASSIFICATION:
    return refs_arr, None
  return refs_arr, (np.concatenate(labels).astype(np.int32) if labels
                    else np.zeros((0,), np.int32))


def _tile_shape(tile: Tile) -> tuple[int, int]:
  header = raster.read_header(tile.image)
  if header.num_channels != len(bands_lib.WHU_OHS):
    raise ValueError(f"WHU-OHS image {tile.image} has {header.num_channels} "
                     f"band(s) (shape {header.shape}, axes {header.axes!r}); "
                     f"WHU-OHS tiles have {len(bands_lib.WHU_OHS)}.")
  return header.rows_cols


@DATASETS.register("whu_ohs")
def whu_ohs(path: str | None = None, task: str = SEGMENTATION,
            patch_size: int = 64, bands: Sequence[str] | None = None,
            split_dirs: Mapping[str, str] | None = None,
            split_lists: Mapping[str, str] | None = None,
            tile_prefixes: Sequence[str] = (), max_tiles: int = 0,
            min_labelled_fraction: float = 0.25, drop_unlabelled: bool = True,
            scale: bool = True, tile_cache_size: int = 8) -> Dataset:
  """Builds WHU-OHS patches (see the module docstring).

  Args:
    path: the folder holding tr/, val/ and ts/.
    task: 'segmentation', 'classification' or 'unlabelled'.
    patch_size: side of the non-overlapping square patches cut from tiles.
    bands: band names B01..B32 in channel order (default all 32).
    split_dirs: split name -> folder (default train: tr, val: val, test: ts).
    split_lists: optional split name -> list file of tile names.
    tile_prefixes: keep only tiles of these OHS images, e.g. ('S1',).
    max_tiles: at most this many tiles per split, evenly spread (0: all).
    min_labelled_fraction: classification: minimum share of labelled pixels.
    drop_unlabelled: segmentation: drop patches without a labelled pixel.
    scale: divide by 10000 to give reflectance.
    tile_cache_size: image/label tiles kept open per split and process.
  """
  if task not in _TASKS:
    raise ValueError(f"config.data.task must be one of {_TASKS}, got {task!r}.")
  if not path or not Path(path).expanduser().is_dir():
    raise missing_data("WHU-OHS", path, URL, "config.data.path", _LAYOUT)
  if patch_size < 1:
    raise ValueError(f"config.data.patch_size must be positive, got "
                     f"{patch_size}.")
  root = Path(path).expanduser()
  split_dirs = dict(split_dirs or SPLIT_DIRS)
  split_lists = dict(split_lists or {})
  unknown = sorted(set(split_lists) - set(split_dirs))
  if unknown:
    raise ValueError(f"config.data.split_lists names split(s) {unknown} that "
                     f"are not in split_dirs {sorted(split_dirs)}.")
  selected = bands_lib.select(bands_lib.WHU_OHS, tuple(bands) if bands else None)
  channels = bands_lib.indices(bands_lib.WHU_OHS, bands_lib.names(selected))
  splits, shape = {}, None
  for split, folder in split_dirs.items():
    tiles = find_tiles(root, folder, split_lists.get(split), tile_prefixes,
                       need_labels=task != UNLABELLED)
    tiles = _evenly(tiles, max_tiles)
    if not tiles:
      raise ValueError(f"No WHU-OHS tiles for split {split!r} in "
                       f"{root / folder / 'image'} (tile_prefixes="
                       f"{tuple(tile_prefixes)}); expected {_LAYOUT}.")
    shape = shape or _tile_shape(tiles[0])
    if patch_size > min(shape):
      raise ValueError(f"config.data.patch_size={patch_size} is larger than "
                       f"the {shape} tiles.")
    refs, labels = _select_patches(tiles, shape, patch_size, task,
                                   drop_unlabelled, min_labelled_fraction)
    splits[split] = WHUOHSPatches(tiles, shape, refs, labels, task, channels,
                                  patch_size, scale, tile_cache_size, split)
  names = bands_lib.names(selected)
  info = DatasetInfo(
      name="whu_ohs", bands=selected,
      class_names=CLASSES if task != UNLABELLED else (), task=task,
      ignore_index=IGNORE_INDEX if task == SEGMENTATION else None,
      image_size=(patch_size, patch_size),
      rgb_bands=RGB_BANDS if all(b in names for b in RGB_BANDS) else ())
  return Dataset(info=info, splits=splits)
