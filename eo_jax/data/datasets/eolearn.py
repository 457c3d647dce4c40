"""'eolearn_sample': land-cover patch classification on a real Sentinel-2 patch.

The data is eo-learn's TestEOPatch (MIT, Sinergise; Copernicus Sentinel-2
data): 5 cloud-free Sentinel-2 L1C scenes of a 101 x 100 px (1 x 1 km) area
near Ljubljana, 13 bands of top-of-atmosphere reflectance, and a per-pixel
land-cover map. A copy ships inside the package (`data/sample/`, see its
PROVENANCE.md), so the quickstart runs without any download.

Task: the label of a patch is the land-cover class of its CENTRE pixel
(patch_size odd). The centre is what the label map says about that location;
a majority vote would blur class borders and give the rarer classes
(shrubland, artificial surface) to almost no patch. Every date is a separate
example, so one location gives 5 examples with the same label.

Split: the scene is cut into a 2 x 5 grid of blocks, assigned so that each
split gets blocks from the top half (where shrubland and artificial surfaces
are) and from the central columns (grassland):

    columns    0-19    20-39   40-59   60-79   80-99
    top        train   val     train   test    train
    bottom     train   test    train   val     train

A patch belongs to a split only if EVERY pixel of its footprint lies in that
split's blocks, so patches of different splits never share a pixel: along a
border between two splits, a strip of patch_size - 1 pixels holds no centre
(a gap of at least patch_size px between the centres of the two sides).
Patches also lie fully inside the image (no padding). Centres are taken on a
grid of step `stride` for train (default 2, to bound the epoch) and
`eval_stride` for val/test (default 1: every eligible pixel is scored).

Classes: pixels labelled 0 (no data) are never centres. Land-cover ids with
fewer than `min_class_pixels` labelled pixels in the whole scene are dropped
(their pixels are never centres): with the default 100 this removes
"cultivated land" (11 pixels in this scene, too few for any split), keeping
forest, grassland, shrubland and artificial surface, numbered 0..3 in order
of their land-cover id. With the defaults (patch_size 9, stride 2,
eval_stride 1) this gives 4,195 train, 4,970 val and 5,100 test examples
(train: 3,580 forest, 445 grassland, 125 shrubland, 45 artificial).
`split='spatial_blocks'` or `'random_pixels_leaky'` cut the same task from
the splits of `eo_jax.data.splits` instead (`eo_jax.data.datasets.scene`).

task='segmentation': dense land cover. Windows of patch_size x patch_size
(default 16) of every date, masks with the classes above (ids 0..3) and
255 (ignored) for 'no data' and dropped classes, train windows every
patch_size // 2 px, val / test windows every patch_size px (each pixel
scored once). The splits are spatially disjoint blocks with margins
(`eo_jax.data.splits.spatial_split`, seed `split_seed`, class-balanced
over the label map): with the defaults, 3 x 3 blocks of about 34 px, 5 for
train and 2 each for val and test, a 16 px margin between splits, giving
170 train (34 windows x 5 dates), 15 val and 10 test examples, each split
holding all four classes (train pixel counts over its windows: 35,570
forest, 6,005 grassland, 1,105 shrubland, 190 artificial). 16 is the largest
window side for which every split keeps all four classes at seed 0 (20 and
24 leave artificial surface out of test, 32 leaves one window per eval
split); the scene is small, so val and test scores are noisy.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import splits as splits_lib
from eo_jax.data.datasets import scene
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, Dataset,
                                       DatasetInfo, missing_data)

SAMPLE_PATH = Path(__file__).resolve().parent.parent / "sample" / "eolearn_sample.npz"
SOURCE_URL = "https://github.com/sentinel-hub/eo-learn/tree/master/example_data"

# Channel order of eo-learn's Sentinel-2 L1C arrays (B8A after B08).
L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A",
             "B09", "B10", "B11", "B12")

# Land-cover legend of eo-learn's example data (LULC_ID / LULC_NAME).
LULC_LEGEND = {
    0: "no data", 1: "cultivated land", 2: "forest", 3: "grassland",
    4: "shrubland", 5: "water", 6: "wetlands", 7: "tundra",
    8: "artificial surface", 9: "bareland", 10: "snow and ice",
}

SPLITS = ("train", "val", "test")
# The classification task's hand-made split (below); other tasks use
# spatially disjoint blocks (eo_jax.data.splits).
FIXED_LAYOUT = "fixed_layout"
# Segmentation windows (module docstring).
SEGMENTATION_PATCH = 16
# Rows: top / bottom half; columns: five vertical bands; values index SPLITS.
LAYOUT = np.array([[0, 1, 0, 2, 0],
                   [0, 2, 0, 1, 0]], np.int8)

_SCENE_CANDIDATES = ("REFERENCE_SCENES.npy", "data/BANDS-S2-L1C.npy",
                     "TestEOPatch/data/BANDS-S2-L1C.npy")
_LABEL_CANDIDATES = ("mask_timeless/LULC.npy", "TestEOPatch/mask_timeless/LULC.npy")
_LAYOUT_TEXT = ("a folder with REFERENCE_SCENES.npy (or data/BANDS-S2-L1C.npy), "
                "(T, H, W, 13) float32, and [TestEOPatch/]mask_timeless/LULC.npy, "
                "(H, W, 1) integer land-cover ids; or an .npz written by "
                "eo_jax.data.datasets.eolearn.write_sample")


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _find(root: Path, candidates: Sequence[str]) -> Path | None:
  for rel in candidates:
    for suffix in ("", ".gz"):
      p = root / (rel + suffix)
      if p.is_file():
        return p
  return None


def _load_npy(path: Path) -> np.ndarray:
  # eo-learn writes .npy, or .npy.gz when an EOPatch is saved compressed.
  if path.suffix == ".gz":
    with gzip.open(path, "rb") as f:
      return np.load(f, allow_pickle=False)
  return np.load(path, allow_pickle=False)


def write_sample(src_dir: str | Path, out_path: str | Path) -> dict[str, str]:
  """Writes the embedded sample from eo-learn's `example_data` folder.

  Args:
    src_dir: folder holding REFERENCE_SCENES.npy and TestEOPatch/.
    out_path: the .npz to write (float32 reflectances are stored unchanged).

  Returns:
    sha256 of each source file read, keyed by its path relative to src_dir.
  """
  src = Path(src_dir)
  files = {"scenes": "REFERENCE_SCENES.npy",
           "lulc": "TestEOPatch/mask_timeless/LULC.npy",
           "ndvi": "TestEOPatch/data/NDVI.npy",
           "timestamps": "TestEOPatch/timestamps.json"}
  for rel in files.values():
    if not (src / rel).is_file():
      raise missing_data("eo-learn example data", src / rel, SOURCE_URL,
                         "src_dir", _LAYOUT_TEXT)
  scenes = np.load(src / files["scenes"], allow_pickle=False)
  lulc = np.load(src / files["lulc"], allow_pickle=False)[..., 0]
  ndvi = np.load(src / files["ndvi"], allow_pickle=False)[..., 0]
  stamps = json.loads((src / files["timestamps"]).read_text())
  # REFERENCE_SCENES does not record its dates; recover each one as the date
  # whose stored NDVI equals the scene's NDVI from B08 and B04.
  nir, red = scenes[..., L1C_BANDS.index("B08")], scenes[..., L1C_BANDS.index("B04")]
  scene_ndvi = (nir - red) / (nir + red)
  dates = []
  for t in range(scenes.shape[0]):
    err = np.abs(ndvi - scene_ndvi[t]).reshape(len(ndvi), -1).max(axis=1)
    dates.append(stamps[int(np.argmin(err))] if err.min() < 1e-5 else "unknown")
  out = Path(out_path)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(out, scenes=scenes.astype(np.float32),
                      lulc=lulc.astype(np.uint16),
                      band_names=np.array(L1C_BANDS), dates=np.array(dates))
  return {rel: _sha256(src / rel) for rel in files.values()}


def load_scene(path: str | Path | None = None,
               band_names: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Loads (scenes (T, H, W, C) float32, lulc (H, W) int32, band names).

  Args:
    path: None for the embedded sample, an .npz from `write_sample`, or an
      eo-learn folder (see `_LAYOUT_TEXT`).
    band_names: channel names of a folder's scene array; default the 13
      Sentinel-2 L1C bands in eo-learn's order. An .npz records its own.
  """
  p = SAMPLE_PATH if path is None else Path(path).expanduser()
  if p.is_file() and p.suffix == ".npz":
    with np.load(p, allow_pickle=False) as z:
      scenes, lulc = z["scenes"], z["lulc"]
      names = tuple(str(n) for n in z["band_names"])
  elif p.is_dir() and _find(p, _SCENE_CANDIDATES) and _find(p, _LABEL_CANDIDATES):
    scenes = _load_npy(_find(p, _SCENE_CANDIDATES))
    lulc = _load_npy(_find(p, _LABEL_CANDIDATES))
    names = tuple(band_names or L1C_BANDS)
  else:
    raise missing_data("eo-learn EOPatch", p, SOURCE_URL, "config.data.path",
                       _LAYOUT_TEXT)
  if lulc.ndim == 3:
    lulc = lulc[..., 0]
  if scenes.ndim != 4 or scenes.shape[1:3] != lulc.shape:
    raise ValueError(f"{p}: scenes have shape {scenes.shape} and labels "
                     f"{lulc.shape}; expected (T, H, W, C) and (H, W[, 1]) "
                     "over the same H, W.")
  if scenes.shape[-1] != len(names):
    raise ValueError(f"{p}: scenes have {scenes.shape[-1]} channels but "
                     f"{len(names)} band names {list(names)}; set "
                     "config.data.band_names to the channel order.")
  return scenes.astype(np.float32), lulc.astype(np.int32), names


def split_regions(height: int, width: int) -> np.ndarray:
  """(H, W) map of split indices (0 train, 1 val, 2 test) from `LAYOUT`."""
  rows = np.minimum(np.arange(height) * LAYOUT.shape[0] // height,
                    LAYOUT.shape[0] - 1)
  cols = np.minimum(np.arange(width) * LAYOUT.shape[1] // width,
                    LAYOUT.shape[1] - 1)
  return LAYOUT[rows[:, None], cols[None, :]]


def patch_centres(regions: np.ndarray, lulc: np.ndarray, split: int,
                  patch_size: int, stride: int, keep_ids: Sequence[int]
                  ) -> np.ndarray:
  """(N, 2) row/col centres of patches lying fully inside region `split`."""
  inside = ndimage.minimum_filter((regions == split).astype(np.uint8),
                                  size=patch_size, mode="constant", cval=0)
  ok = inside.astype(bool) & np.isin(lulc, list(keep_ids))
  grid = np.zeros_like(ok)
  grid[::stride, ::stride] = True
  return np.argwhere(ok & grid)


class PatchSource:
  """Patches (patch_size, patch_size, C) around centres, one per date."""

  def __init__(self, scenes: np.ndarray, centres: np.ndarray,
               labels: np.ndarray, patch_size: int, name: str):
    num_dates = scenes.shape[0]
    self._scenes = scenes
    # Example i is date i % T at centre i // T, so neighbouring indices are
    # the same place on different dates.
    self._centres = np.repeat(centres, num_dates, axis=0)
    self._dates = np.tile(np.arange(num_dates), len(centres))
    self.labels = np.repeat(labels, num_dates).astype(np.int32)
    self._half = patch_size // 2
    self._name = name

  def __len__(self) -> int:
    return len(self.labels)

  def __repr__(self) -> str:
    return f"PatchSource({self._name}, n={len(self)}, size={2 * self._half + 1})"

  def footprint(self, index: int) -> tuple[slice, slice]:
    """Row and column slices of example `index` in the scene."""
    r, c = self._centres[index]
    h = self._half
    return slice(r - h, r + h + 1), slice(c - h, c + h + 1)

  def describe(self, index: int) -> str:
    """Date and footprint of example `index` in the scene."""
    rows, cols = self.footprint(int(index))
    return (f"the patch of date {self._dates[int(index)]} at rows "
            f"{rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} examples.")
    rows, cols = self.footprint(index)
    image = self._scenes[self._dates[index], rows, cols]
    return {"image": np.array(image, np.float32),
            "label": np.int32(self.labels[index])}


def _kept_ids(lulc: np.ndarray, min_class_pixels: int) -> list[int]:
  """Land-cover ids with at least `min_class_pixels` pixels, ascending."""
  ids, counts = np.unique(lulc[lulc > 0], return_counts=True)
  keep_ids = [int(i) for i, n in zip(ids, counts) if n >= min_class_pixels]
  if not keep_ids:
    raise ValueError(f"No land-cover class has >= {min_class_pixels} pixels "
                     f"(counts {dict(zip(ids.tolist(), counts.tolist()))}); "
                     "lower config.data.min_class_pixels.")
  return keep_ids


def _sentinel2_bands(names: Sequence[str]) -> tuple[bands_lib.Band, ...]:
  sensor = {b.name: b for b in bands_lib.SENTINEL2}
  unknown = [n for n in names if n not in sensor]
  if unknown:
    raise ValueError(f"Bands {unknown} are not Sentinel-2 band names "
                     f"{list(sensor)}; fix config.data.band_names.")
  return tuple(sensor[n] for n in names)


def _load_scenes(path: str | None, band_names: Sequence[str] | None
                 ) -> np.ndarray:
  return load_scene(path, band_names)[0]


def _scene_dataset(path: str | None, band_names: Sequence[str] | None,
                   min_class_pixels: int, options: scene.PatchOptions
                   ) -> Dataset:
  """The scene datasets (`eo_jax.data.datasets.scene`) over the T dates,
  with the classification task's classes: segmentation, and any task on
  spatially disjoint blocks or the leaky pixel split."""
  scenes, lulc, names = load_scene(path, band_names)
  keep_ids = _kept_ids(lulc, min_class_pixels)
  # Land-cover id -> class 0..K-1; 'no data' (0) and dropped ids -> -1.
  dropped = sorted(set(np.unique(lulc).tolist()) - set(keep_ids))
  labels = scene.remap_labels(lulc, keep_ids, dropped,
                              str(path or SAMPLE_PATH))
  cube = scene.SceneCube(functools.partial(_load_scenes, path, band_names),
                         key=("eolearn_sample", str(path)),
                         shape=scenes.shape, array=scenes)
  return scene.build(
      name="eolearn_sample", cube=cube, bands=_sentinel2_bands(names),
      options=options, where=f"the eo-learn scene {path or SAMPLE_PATH.name}",
      labels=labels,
      class_names=tuple(LULC_LEGEND.get(i, f"class {i}") for i in keep_ids),
      rgb_bands=("B04", "B03", "B02"))


@DATASETS.register("eolearn_sample")
def eolearn_sample(path: str | None = None, patch_size: int | None = None,
                   stride: int | None = None, eval_stride: int | None = None,
                   min_class_pixels: int = 100,
                   band_names: Sequence[str] | None = None,
                   task: str = CLASSIFICATION, split: str = "",
                   split_fractions: Sequence[float] | Any = (
                       splits_lib.DEFAULT_FRACTIONS),
                   split_seed: int = 0, block_size: int = 0,
                   margin: int | None = None) -> Dataset:
  """Builds the patch dataset (see the module docstring).

  Args:
    path: None (the embedded sample), an .npz, or an eo-learn folder.
    patch_size: patch side in pixels; None: 9 for classification (odd: the
      label is the centre pixel's), SEGMENTATION_PATCH otherwise.
    stride: step between train patches; None: 2 for classification on the
      fixed layout, else the scene datasets' default (segmentation:
      patch_size // 2).
    eval_stride: step between val/test patches; None: 1 for classification,
      else the scene datasets' default (segmentation: patch_size, so that
      each pixel is scored once).
    min_class_pixels: land-cover ids with fewer labelled pixels are dropped.
    band_names: channel order of a folder's scene array (default the 13 L1C
      bands, B8A 9th); an .npz records its own.
    task: 'classification' (default), 'segmentation' or 'unlabelled'.
    split: '' (the task's default: 'fixed_layout' for classification,
      'spatial_blocks' otherwise), 'fixed_layout' (classification only),
      'spatial_blocks' or 'random_pixels_leaky'.
    split_fractions, split_seed, block_size, margin: of 'spatial_blocks'
      and 'random_pixels_leaky' splits (`eo_jax.data.splits`).
  """
  kinds = ("", FIXED_LAYOUT) + splits_lib.KINDS
  if split not in kinds:
    raise errors.ConfigValueError(
        f"config.data.split must be one of {kinds}, got {split!r}.")
  if task != CLASSIFICATION or split not in ("", FIXED_LAYOUT):
    if split == FIXED_LAYOUT:
      raise errors.ConfigValueError(
          f"config.data.split={FIXED_LAYOUT!r} is the classification task's "
          f"layout; task={task!r} uses 'spatial_blocks' (leave "
          "config.data.split empty).")
    default_size = 9 if task == CLASSIFICATION else SEGMENTATION_PATCH
    return _scene_dataset(path, band_names, min_class_pixels,
                          scene.PatchOptions(
                              task,
                              default_size if patch_size is None else patch_size,
                              stride, eval_stride, split or splits_lib.SPATIAL,
                              split_fractions, split_seed, block_size, margin))
  # Classification on the fixed layout: the quickstart's numbers.
  patch_size = 9 if patch_size is None else patch_size
  stride = 2 if stride is None else stride
  eval_stride = 1 if eval_stride is None else eval_stride
  if patch_size < 1 or patch_size % 2 == 0:
    raise ValueError(f"config.data.patch_size must be a positive odd number "
                     f"(the label is the centre pixel's), got {patch_size}.")
  if stride < 1 or eval_stride < 1:
    raise ValueError(f"config.data.stride/eval_stride must be >= 1, got "
                     f"{stride}/{eval_stride}.")
  scenes, lulc, names = load_scene(path, band_names)
  keep_ids = _kept_ids(lulc, min_class_pixels)
  to_label = {lid: k for k, lid in enumerate(keep_ids)}
  regions = split_regions(*lulc.shape)
  splits = {}
  for s, split_name in enumerate(SPLITS):
    step = stride if split_name == "train" else eval_stride
    centres = patch_centres(regions, lulc, s, patch_size, step, keep_ids)
    labels = np.array([to_label[int(lulc[r, c])] for r, c in centres], np.int32)
    splits[split_name] = PatchSource(scenes, centres, labels, patch_size,
                                     split_name)
  info = DatasetInfo(
      name="eolearn_sample",
      bands=_sentinel2_bands(names),
      class_names=tuple(LULC_LEGEND.get(i, f"class {i}") for i in keep_ids),
      task=CLASSIFICATION,
      image_size=(patch_size, patch_size),
      rgb_bands=("B04", "B03", "B02"),
  )
  return Dataset(info=info, splits=splits)
