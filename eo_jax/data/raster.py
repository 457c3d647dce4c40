"""GeoTIFF reading and grid resampling shared by the raster dataset readers.

Only `tifffile` is needed (no GDAL): georeferencing is taken from the
GeoTIFF tags ModelPixelScale (33550), ModelTiepoint (33922) and the raster
type and projected CRS keys of the GeoKeyDirectory (34735). Rotated grids
(ModelTransformation) are not supported; such files are treated as having
no georeferencing.

Resampling maps PIXEL CENTRES: destination pixel k of an axis sits at
source coordinate `offset + (k + 0.5) * ratio - 0.5`, where `offset` is the
destination grid's upper-left corner in source pixels and `ratio` the
destination pixel size over the source pixel size. With aligned corners and
ratio 1/6 (60 m -> 10 m), nearest neighbour is exactly block replication.
Coordinates outside the source are clamped to its edge pixels.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import threading
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import tifffile

NEAREST = "nearest"
BILINEAR = "bilinear"
RESAMPLING = (NEAREST, BILINEAR)

_PIXEL_SCALE_TAG = 33550
_TIEPOINT_TAG = 33922
_GEOKEY_TAG = 34735
_RASTER_TYPE_KEY = 1025
_PIXEL_IS_POINT = 2
_PROJECTED_CRS_KEY = 3072


@dataclasses.dataclass(frozen=True)
class Geo:
  """An axis-aligned north-up grid: upper-left corner and pixel size.

  Attributes:
    x0: easting of the upper-left CORNER of pixel (0, 0).
    y0: northing of that corner.
    dx: pixel width (> 0).
    dy: pixel height (> 0; rows go south).
    crs: EPSG code of the projected CRS, if the file declares one.
  """
  x0: float
  y0: float
  dx: float
  dy: float
  crs: int | None = None


@dataclasses.dataclass(frozen=True)
class Header:
  """What a raster file holds, read without its pixels."""
  path: Path
  shape: tuple[int, ...]
  axes: str  # tifffile's axes of the first series, e.g. 'YX', 'YXS', 'SYX'
  dtype: np.dtype
  geo: Geo | None

  @property
  def rows_cols(self) -> tuple[int, int]:
    y, x = self.axes.index("Y"), self.axes.index("X")
    return self.shape[y], self.shape[x]

  @property
  def num_channels(self) -> int:
    """Bands: the product of the axes other than Y and X (1 for 2-D)."""
    return int(np.prod([n for n, a in zip(self.shape, self.axes)
                        if a not in "YX"], dtype=np.int64))


def _geokeys(values: Any) -> dict[int, int]:
  """Short (inline) GeoKey values by key id; strings/doubles are skipped."""
  v = [int(t) for t in values]
  keys = {}
  for i in range(v[3] if len(v) >= 4 else 0):
    key, location, _, value = v[4 + 4 * i: 8 + 4 * i]
    if location == 0:
      keys[key] = value
  return keys


def _geo(page: Any) -> Geo | None:
  tags = page.tags
  scale = tags.get(_PIXEL_SCALE_TAG)
  tie = tags.get(_TIEPOINT_TAG)
  if scale is None or tie is None or len(tie.value) < 6:
    return None
  sx, sy = float(scale.value[0]), float(scale.value[1])
  i, j, _, x, y, _ = (float(t) for t in tie.value[:6])
  if sx <= 0 or sy <= 0:
    return None
  keys = _geokeys(tags[_GEOKEY_TAG].value) if _GEOKEY_TAG in tags else {}
  # PixelIsPoint tiepoints name the pixel CENTRE; shift to the corner.
  half = 0.5 if keys.get(_RASTER_TYPE_KEY) == _PIXEL_IS_POINT else 0.0
  crs = keys.get(_PROJECTED_CRS_KEY)
  return Geo(x0=x - (i + half) * sx, y0=y + (j + half) * sy, dx=sx, dy=sy,
             crs=None if crs in (None, 0, 32767) else int(crs))


def _open(path: Path) -> tifffile.TiffFile:
  try:
    return tifffile.TiffFile(path)
  except tifffile.TiffFileError as e:
    raise ValueError(
        f"{path} is not a TIFF file ({e}). Only GeoTIFFs are read; convert "
        "other formats first, e.g. `gdal_translate -of GTiff in.jp2 out.tif` "
        "for JPEG 2000.") from e


def read_header(path: str | os.PathLike) -> Header:
  """Shape, axes, dtype and georeferencing of a TIFF, without its pixels."""
  path = Path(path)
  with _open(path) as tif:
    series = tif.series[0]
    return Header(path=path, shape=tuple(series.shape), axes=series.axes,
                  dtype=np.dtype(series.dtype), geo=_geo(tif.pages[0]))


def read_array(path: str | os.PathLike, memmap: bool = True) -> np.ndarray:
  """The first series of a TIFF; memory-mapped when stored uncompressed.

  A memory map reads only the pages of the file that a slice touches, which
  makes cutting small patches out of large tiles cheap.
  """
  path = Path(path)
  with _open(path) as tif:
    series = tif.series[0]
    mappable = memmap and series.dataoffset is not None
  if mappable:
    return tifffile.memmap(path, mode="r")
  return tifffile.imread(path)


def channels_last(array: np.ndarray, axes: str, path: Any) -> np.ndarray:
  """(H, W, C) view of an image whose tifffile axes are given (2-D -> C=1)."""
  if array.ndim == 2:
    return array[..., None]
  if array.ndim != 3:
    raise ValueError(f"{path}: expected a 2-D or 3-D image, got shape "
                     f"{array.shape} (axes {axes!r}).")
  if axes.endswith("S"):  # pixel-interleaved samples
    return array
  return np.moveaxis(array, 0, -1)  # planar or one page per band


def read_band(path: str | os.PathLike) -> np.ndarray:
  """A single-band raster as a 2-D array."""
  header = read_header(path)
  array = np.asarray(read_array(path, memmap=False))
  if array.ndim == 3:
    array = channels_last(array, header.axes, path)
    if array.shape[-1] != 1:
      raise ValueError(f"{path} holds {array.shape[-1]} bands; expected one "
                       "band per file.")
    array = array[..., 0]
  if array.ndim != 2:
    raise ValueError(f"{path}: expected a 2-D band, got shape {array.shape}.")
  return array


# ---------------------------------------------------------------------------
# Resampling onto a reference grid.


def axis_coordinates(n_dst: int, offset: float, ratio: float) -> np.ndarray:
  """Fractional source indices of the centres of `n_dst` destination pixels."""
  return offset + (np.arange(n_dst, dtype=np.float64) + 0.5) * ratio - 0.5


def _nearest_index(u: np.ndarray, n: int) -> np.ndarray:
  # floor(u + 0.5) rounds halves up; np.round would round them to even.
  return np.clip(np.floor(u + 0.5), 0, n - 1).astype(np.int64)


def _linear_weights(u: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray,
                                                     np.ndarray]:
  u = np.clip(u, 0, n - 1)
  i0 = np.clip(np.floor(u), 0, max(n - 2, 0)).astype(np.int64)
  i1 = np.minimum(i0 + 1, n - 1)
  return i0, i1, (u - i0).astype(np.float32)


def resample(array: np.ndarray, rows: np.ndarray, cols: np.ndarray,
             method: str = BILINEAR) -> np.ndarray:
  """Samples a 2-D array at the separable fractional coordinates given.

  Args:
    array: (h, w) source band.
    rows: (H,) fractional source row of each output row.
    cols: (W,) fractional source column of each output column.
    method: 'nearest' (keeps the dtype) or 'bilinear' (float32).

  Returns:
    (H, W) array.
  """
  if method not in RESAMPLING:
    raise ValueError(f"resampling must be one of {RESAMPLING}, got {method!r}.")
  h, w = array.shape
  if method == NEAREST:
    return array[np.ix_(_nearest_index(rows, h), _nearest_index(cols, w))]
  # Bilinear is separable on a regular grid: interpolate rows, then columns.
  r0, r1, wr = _linear_weights(rows, h)
  a = array.astype(np.float32, copy=False)
  tmp = a[r0] * (1 - wr)[:, None] + a[r1] * wr[:, None]
  c0, c1, wc = _linear_weights(cols, w)
  return tmp[:, c0] * (1 - wc) + tmp[:, c1] * wc


def integer_factor(src: tuple[int, int], dst: tuple[int, int], what: Any) -> int:
  """Upsampling factor between two shapes covering the same area.

  Sizes may disagree by up to one source pixel per axis (products are cut
  to whole pixels at every resolution: 1947 rows at 10 m, 324 at 60 m).
  """
  k = int(round(dst[0] / src[0])) if src[0] else 0
  if k < 1 or any(abs(s * k - d) > k for s, d in zip(src, dst)):
    raise ValueError(
        f"{what} has shape {src}, which is not an integer fraction of the "
        f"reference grid {dst} (within one pixel). Use files covering the same "
        "area, or GeoTIFFs with georeferencing tags.")
  return k


def check_coverage(coords: np.ndarray, n_src: int, what: Any) -> None:
  """Refuses grids that reach more than one source pixel past the source."""
  if coords.size and (coords.min() < -1.5 or coords.max() > n_src + 0.5):
    raise ValueError(
        f"{what} does not cover the reference grid: its pixels span source "
        f"coordinates [{coords.min():.1f}, {coords.max():.1f}] of a {n_src}-"
        "pixel axis. The bands must show the same area (same tile / crop).")


def grid_coordinates(src: Header, dst_shape: tuple[int, int],
                     dst_geo: Geo | None) -> tuple[np.ndarray, np.ndarray]:
  """Fractional source (rows, cols) of every destination pixel centre.

  With georeferencing on both grids the exact offsets are used; otherwise the
  upper-left corners are assumed to coincide and the scale comes from the
  shapes (an integer factor).
  """
  h, w = src.rows_cols
  if src.geo is not None and dst_geo is not None:
    if None not in (src.geo.crs, dst_geo.crs) and src.geo.crs != dst_geo.crs:
      raise ValueError(f"{src.path} is in EPSG:{src.geo.crs}, the reference "
                       f"grid in EPSG:{dst_geo.crs}; reproject it first.")
    rows = axis_coordinates(dst_shape[0], (src.geo.y0 - dst_geo.y0) / src.geo.dy,
                            dst_geo.dy / src.geo.dy)
    cols = axis_coordinates(dst_shape[1], (dst_geo.x0 - src.geo.x0) / src.geo.dx,
                            dst_geo.dx / src.geo.dx)
  else:
    k = integer_factor((h, w), dst_shape, src.path)
    rows = axis_coordinates(dst_shape[0], 0.0, 1.0 / k)
    cols = axis_coordinates(dst_shape[1], 0.0, 1.0 / k)
  check_coverage(rows, h, f"{src.path} (rows)")
  check_coverage(cols, w, f"{src.path} (columns)")
  return rows, cols


def to_grid(array: np.ndarray, src: Header, dst_shape: tuple[int, int],
            dst_geo: Geo | None, method: str = BILINEAR) -> np.ndarray:
  """Resamples a band onto the reference grid (a no-op if already on it)."""
  rows, cols = grid_coordinates(src, dst_shape, dst_geo)
  identity = (array.shape == tuple(dst_shape)
              and np.allclose(rows, np.arange(dst_shape[0]))
              and np.allclose(cols, np.arange(dst_shape[1])))
  if identity:
    return array
  return resample(array, rows, cols, method)


# ---------------------------------------------------------------------------
# A small per-process cache.


class LRUCache:
  """Least-recently-used cache of loaded arrays, private to each process.

  Forked or spawned workers (Grain) start empty instead of sharing handles
  or memory maps across processes, and pickling drops the contents. Safe to
  share between threads (data/validate.py reads sources from a thread
  pool); two threads missing the same key may both load it.
  """

  def __init__(self, max_entries: int):
    self.max_entries = max(int(max_entries), 0)
    self._items: collections.OrderedDict[Hashable, Any] = (
        collections.OrderedDict())
    self._pid = os.getpid()
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:
    return {"max_entries": self.max_entries}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["max_entries"])

  def __len__(self) -> int:
    return len(self._items)

  def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
    if self._pid != os.getpid():
      # A forked child: its copy of the lock may have been taken mid-update
      # by a thread that does not exist here; start afresh.
      self.__init__(self.max_entries)
    with self._lock:
      if key in self._items:
        self._items.move_to_end(key)
        return self._items[key]
    # Loading (file I/O) runs unlocked, so other threads are not held up.
    value = load()
    if self.max_entries:
      with self._lock:
        self._items[key] = value
        while len(self._items) > self.max_entries:
          self._items.popitem(last=False)
    return value

  def clear(self) -> None:
    with self._lock:
      self._items.clear()


def file_key(path: Path) -> tuple[str, int, int]:
  """Identifies a file's current contents for caching (path, mtime, size)."""
  st = path.stat()
  return (str(path.resolve()), st.st_mtime_ns, st.st_size)
