"""Patch datasets cut from ONE scene: an image cube and an optional label map.

Shared by the scene datasets (`indian_pines`, `pavia_university`, `cube`,
`eolearn_sample` with task='segmentation'). The scene is (T, H, W, C): T
dates of the same area (1 for a single cube); every patch position gives T
examples, example i being date i % T at position i // T, so neighbouring
indices are the same place on different dates.

Tasks:
* 'classification': a patch_size x patch_size window (patch_size odd)
  around every labelled pixel; {'image', 'label'}, the label being the
  CENTRE pixel's class.
* 'segmentation': windows on a grid of step `stride`; {'image', 'mask'},
  the mask holding class ids 0..K-1 and IGNORE_INDEX (255) for unlabelled
  pixels (and, in a leaky split, pixels of other splits). Windows without a
  labelled pixel of their split are dropped: they carry no loss and no
  score.
* 'unlabelled': windows on the grid; {'image'}.

Splits come from `eo_jax.data.splits`: spatially disjoint blocks by
default, where a window belongs to a split only when its whole footprint
lies in that split's area; with split='random_pixels_leaky', classification
centres are the split's pixels and segmentation windows anywhere in the
scene, masked to the split's pixels (the leaky protocol, with a warning).

Defaults per task: classification patch_size 9, train and eval stride 1
(every labelled pixel whose patch fits is a centre); segmentation
patch_size 32 (16 for scenes whose shorter side is under 256 px, where 32 px
windows with 32 px margins leave val and test a window or two), train
stride patch_size // 2 (overlapping windows), eval stride patch_size (each
pixel scored at most once); unlabelled like segmentation.

The cube is read once per process (`SceneCube`) and pickled as its reader,
not its pixels, so that data-loading worker processes read the file
themselves instead of receiving a copy of the cube.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import raster
from eo_jax.data import splits as splits_lib
from eo_jax.data.datasets.base import (CLASSIFICATION, SEGMENTATION,
                                       UNLABELLED, DataError, Dataset,
                                       DatasetInfo)

TASKS = (CLASSIFICATION, SEGMENTATION, UNLABELLED)
IGNORE_INDEX = 255
CLASSIFICATION_PATCH = 9
# Dense windows: DENSE_PATCH, or SMALL_SCENE_PATCH in scenes whose shorter
# side is under SMALL_SCENE px.
DENSE_PATCH, SMALL_SCENE_PATCH, SMALL_SCENE = 32, 16, 256


def default_patch_size(task: str, shape: tuple[int, int]) -> int:
  """The task's default window side in a scene of `shape` (H, W)."""
  if task == CLASSIFICATION:
    return CLASSIFICATION_PATCH
  return SMALL_SCENE_PATCH if min(shape) < SMALL_SCENE else DENSE_PATCH


class SceneCube:
  """A scene's pixels, (T, H, W, C), loaded once per process.

  `load` must be picklable (a module-level function, or a
  functools.partial of one): a pickled SceneCube carries it instead of the
  pixels. `array` may be given when the caller has already loaded it.
  """

  def __init__(self, load: Callable[[], np.ndarray], key: Hashable,
               shape: tuple[int, ...], array: np.ndarray | None = None):
    self._load = load
    self.key = key
    self.shape = tuple(int(v) for v in shape)
    if len(self.shape) != 4:
      raise ValueError(f"A SceneCube is (T, H, W, C); got shape {shape}.")
    self._array = array

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_array"] = None  # pixels stay behind (a memory map copies the file)
    return state

  def array(self) -> np.ndarray:
    if self._array is None:
      array = self._load()
      array = array if array.ndim == 4 else array[None]
      if tuple(array.shape) != self.shape:
        raise errors.InputShapeError(
            f"{self.key}: the cube now has shape {tuple(array.shape)}, it had "
            f"{self.shape} when the dataset was built; the file changed. "
            "Rebuild the dataset.")
      self._array = array
    return self._array

  def window(self, date: int, top: int, left: int, size: int) -> np.ndarray:
    return self.array()[date, top:top + size, left:left + size]


@dataclasses.dataclass(frozen=True)
class PatchOptions:
  """The patch and split settings every scene dataset takes (config.data)."""
  task: str = CLASSIFICATION
  patch_size: int | None = None
  stride: int | None = None
  eval_stride: int | None = None
  split: str = splits_lib.SPATIAL
  split_fractions: Any = splits_lib.DEFAULT_FRACTIONS
  split_seed: int = 0
  block_size: int = 0
  margin: int | None = None

  def resolved(self, shape: tuple[int, int]) -> "PatchOptions":
    """With the task's defaults for a scene of `shape` (H, W) filled in;
    raises on values that cannot work."""
    if self.task not in TASKS:
      raise errors.ConfigValueError(
          f"config.data.task must be one of {TASKS}, got {self.task!r}.")
    size = (default_patch_size(self.task, shape) if self.patch_size is None
            else self.patch_size)
    if isinstance(size, bool) or int(size) != size or size < 1:
      raise errors.ConfigValueError(
          f"config.data.patch_size must be a positive integer, got {size!r}.")
    size = int(size)
    if self.task == CLASSIFICATION and size % 2 == 0:
      raise errors.ConfigValueError(
          f"config.data.patch_size must be odd for classification (the label "
          f"is the centre pixel's), got {size}.")
    dense = self.task != CLASSIFICATION
    stride = self.stride if self.stride is not None else (
        max(1, size // 2) if dense else 1)
    eval_stride = self.eval_stride if self.eval_stride is not None else (
        size if dense else 1)
    for key, value in (("stride", stride), ("eval_stride", eval_stride)):
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise errors.ConfigValueError(
            f"config.data.{key} must be a positive integer, got {value!r}.")
    if self.split not in splits_lib.KINDS:
      raise errors.ConfigValueError(
          f"config.data.split must be one of {splits_lib.KINDS}, got "
          f"{self.split!r}.")
    return dataclasses.replace(self, patch_size=size, stride=int(stride),
                               eval_stride=int(eval_stride))


class ScenePatches:
  """Source of square windows of a scene (see the module docstring)."""

  def __init__(self, cube: SceneCube, corners: np.ndarray, size: int,
               task: str, name: str, where: str,
               labels: np.ndarray | None = None,
               label_map: np.ndarray | None = None,
               scale: float = 1.0, geo: raster.Geo | None = None,
               georeference: dict | None = None):
    self.cube = cube
    self.corners = np.asarray(corners, np.int64).reshape(-1, 2)
    self.size = int(size)
    self.task = task
    self.name = name
    self.where = where
    self.num_dates = cube.shape[0]
    # Per example (classification): the class of each position, repeated
    # over the dates, so that `labels[i]` is example i's label.
    self.labels = (None if labels is None else
                   np.repeat(np.asarray(labels, np.int32), self.num_dates))
    # The split's class map (segmentation): IGNORE_INDEX where unlabelled
    # or (leaky split) another split's pixel.
    self.label_map = label_map
    self.scale = float(scale)
    self.geo = geo
    self.georeference = dict(georeference or {})

  def __len__(self) -> int:
    return len(self.corners) * self.num_dates

  def __repr__(self) -> str:
    return (f"ScenePatches({self.where}, {self.name}, {self.task}, "
            f"n={len(self)}, size={self.size})")

  def _position(self, index: int) -> tuple[int, int, int]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"Index {index} out of range for {len(self)} patches.")
    index %= len(self)
    top, left = self.corners[index // self.num_dates]
    return int(index % self.num_dates), int(top), int(left)

  def footprint(self, index: int) -> tuple[slice, slice]:
    """Row and column slices of example `index` in the scene."""
    _, top, left = self._position(index)
    return slice(top, top + self.size), slice(left, left + self.size)

  def window_geo(self, index: int) -> raster.Geo | None:
    """The georeferencing of example `index`'s window (None without any)."""
    if self.geo is None:
      return None
    _, top, left = self._position(index)
    return dataclasses.replace(self.geo, x0=self.geo.x0 + left * self.geo.dx,
                               y0=self.geo.y0 - top * self.geo.dy)

  def describe(self, index: int) -> str:
    """The file and the window of example `index`, for error messages."""
    date, top, left = self._position(index)
    when = f", date {date}" if self.num_dates > 1 else ""
    return (f"{self.where} (patch at row {top}, column {left}, "
            f"{self.size} px{when})")

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    date, top, left = self._position(index)
    image = np.array(self.cube.window(date, top, left, self.size), np.float32)
    if self.scale != 1.0:
      image *= np.float32(self.scale)
    out = {"image": image}
    if self.task == CLASSIFICATION:
      out["label"] = np.int32(self.labels[int(index) % len(self)])
    elif self.task == SEGMENTATION:
      window = self.label_map[top:top + self.size, left:left + self.size]
      out["mask"] = np.asarray(window, np.int32)
    return out

  def class_pixel_counts(self, num_classes: int) -> np.ndarray:
    """Exact labelled pixels (segmentation) or examples (classification) per
    class over this split's examples, without reading the cube."""
    if self.task == CLASSIFICATION:
      return np.bincount(self.labels, minlength=num_classes)[:num_classes]
    if self.task != SEGMENTATION:
      raise errors.ConfigValueError(
          f"Split {self.name!r} is unlabelled; it has no classes to count.")
    counts = np.zeros(num_classes, np.int64)
    for top, left in self.corners:
      window = self.label_map[top:top + self.size, left:left + self.size]
      window = window[window != IGNORE_INDEX].astype(np.int64)
      counts += np.bincount(window, minlength=num_classes)[:num_classes]
    return counts * self.num_dates


def _classification_centres(split: splits_lib.SceneSplit, s: int,
                            labels: np.ndarray, size: int, stride: int
                            ) -> np.ndarray:
  """(N, 2) corners of the windows whose centre is a labelled pixel of split
  s: spatial, the footprint inside the split's area; leaky, inside the
  scene."""
  half = size // 2
  if split.kind == splits_lib.SPATIAL:
    corners = split.corners(split.names[s], size, stride)
  else:
    corners = splits_lib.grid_corners(labels.shape, size, stride)
  centre = labels[corners[:, 0] + half, corners[:, 1] + half]
  ok = centre >= 0
  if split.kind == splits_lib.LEAKY:
    ok &= split.regions[corners[:, 0] + half, corners[:, 1] + half] == s
  return corners[ok]


def _dense_windows(split: splits_lib.SceneSplit, s: int,
                   labels: np.ndarray | None, size: int, stride: int,
                   need_labels: bool) -> np.ndarray:
  """(N, 2) corners of segmentation / unlabelled windows of split s."""
  if split.kind == splits_lib.SPATIAL:
    corners = split.corners(split.names[s], size, stride)
  else:
    corners = splits_lib.grid_corners(split.shape, size, stride)
  if not need_labels or not len(corners):
    return corners
  mine = (labels >= 0) & (split.regions == s)
  counts = splits_lib.window_sums(splits_lib.summed_area(mine), corners, size)
  return corners[counts > 0]


def build(*, name: str, cube: SceneCube, bands: Sequence[bands_lib.Band],
          options: PatchOptions, where: str,
          labels: np.ndarray | None = None,
          class_names: Sequence[str] = (), scale: float = 1.0,
          rgb_bands: Sequence[str] | None = None,
          geo: raster.Geo | None = None,
          georeference: dict | None = None) -> Dataset:
  """The Dataset of a scene's patches.

  Args:
    name: the dataset's name (DatasetInfo.name).
    cube: the scene, (T, H, W, C).
    bands: the C bands in channel order.
    options: task, sizes and split settings (config.data).
    where: the file(s), for error messages ('Indian_pines_corrected.mat').
    labels: (H, W) class ids 0..K-1, negative where unlabelled; needed for
      classification and segmentation.
    class_names: the K class names.
    scale: raw values are multiplied by this.
    rgb_bands: band names to render as R, G, B; None picks the bands nearest
      to 640 / 550 / 470 nm (`bands.display_bands`).
    geo, georeference: the scene's georeferencing, kept on every split.

  Raises:
    ConfigValueError: settings that leave a split without examples, or a
      task that needs labels without a label map.
  """
  _, height, width, channels = cube.shape
  opt = options.resolved((height, width))
  if channels != len(bands):
    raise errors.InputShapeError(
        f"{where}: the cube has {channels} band(s) but {len(bands)} band "
        "descriptions were given.")
  if opt.task != UNLABELLED:
    if labels is None:
      raise errors.ConfigValueError(
          f"config.data.task={opt.task!r} needs a label map and {where} has "
          "none; give one, or use task='unlabelled'.")
    if not class_names:
      raise errors.ConfigValueError(
          f"{where}: the label map has no class (every pixel is unlabelled); "
          "check the label file and config.data.unlabelled_value.")
  use_labels = labels if opt.task != UNLABELLED else None
  size = opt.patch_size
  if size > min(height, width):
    raise errors.ConfigValueError(
        f"config.data.patch_size={size} is larger than the {height} x {width} "
        f"scene of {where}; lower it.")
  split = splits_lib.make_split(opt.split, (height, width), size,
                                opt.split_fractions, opt.split_seed,
                                opt.block_size, opt.margin, use_labels)
  ignore = IGNORE_INDEX if len(class_names) < IGNORE_INDEX else -1
  splits = {}
  for s, split_name in enumerate(split.names):
    stride = opt.stride if split_name == "train" else opt.eval_stride
    kwargs: dict[str, Any] = {}
    if opt.task == CLASSIFICATION:
      corners = _classification_centres(split, s, labels, size, stride)
      half = size // 2
      kwargs["labels"] = labels[corners[:, 0] + half, corners[:, 1] + half]
    else:
      corners = _dense_windows(split, s, use_labels, size, stride,
                               opt.task == SEGMENTATION)
      if opt.task == SEGMENTATION:
        mine = (labels >= 0) & (split.regions == s)
        dtype = np.uint8 if ignore == IGNORE_INDEX else np.int32
        kwargs["label_map"] = np.where(mine, labels, ignore).astype(dtype)
    if not len(corners):
      raise errors.ConfigValueError(
          f"Split {split_name!r} of {where} gets no {size} x {size} patch "
          f"({opt.task}, split={opt.split!r}, block_size={split.block_size}, "
          f"margin={split.margin}, fractions {opt.split_fractions}). Lower "
          "config.data.patch_size or config.data.block_size, give the split "
          "a larger share in config.data.split_fractions, or try another "
          "config.data.split_seed.")
    splits[split_name] = ScenePatches(
        cube, corners, size, opt.task, split_name, where, scale=scale,
        geo=geo, georeference=georeference, **kwargs)
  info = DatasetInfo(
      name=name, bands=tuple(bands),
      class_names=tuple(class_names) if opt.task != UNLABELLED else (),
      task=opt.task,
      ignore_index=ignore if opt.task == SEGMENTATION else None,
      image_size=(size, size),
      rgb_bands=(tuple(rgb_bands) if rgb_bands is not None
                 else bands_lib.display_bands(bands)))
  return Dataset(info=info, splits=splits)


def remap_labels(raw: np.ndarray, class_values: Sequence[int],
                 unlabelled: Sequence[int], where: str) -> np.ndarray:
  """Label-file values -> class ids 0..K-1 (position in `class_values`),
  -1 for `unlabelled` values.

  Raises:
    DataError: the file has values that are neither (naming them, with
      their pixel counts).
  """
  raw = np.asarray(raw)
  if raw.dtype.kind == "f":
    finite = np.isfinite(raw)
    if not finite.all() or np.any(raw[finite] != np.round(raw[finite])):
      raise DataError(
          f"The label map {where} holds non-integer values (dtype "
          f"{raw.dtype}); a label map holds class ids. Is it the image?")
  raw = raw.astype(np.int64)
  values, counts = np.unique(raw, return_counts=True)
  known = set(int(v) for v in class_values) | set(int(v) for v in unlabelled)
  bad = [(int(v), int(n)) for v, n in zip(values, counts)
         if int(v) not in known]
  if bad:
    listed = ", ".join(f"{v} ({n:,} px)" for v, n in bad[:8])
    raise DataError(
        f"The label map {where} has values {listed} that are neither a class "
        f"{sorted(int(v) for v in class_values)[:20]} nor unlabelled "
        f"{sorted(int(v) for v in unlabelled)}. Fix the file, or set "
        "config.data.class_values / class_names / unlabelled_value to "
        "describe it.")
  # Vectorised lookup: position of each pixel's value among the sorted
  # class values (unlabelled values match nothing and stay -1).
  values = np.asarray([int(v) for v in class_values], np.int64)
  order = np.argsort(values, kind="stable")
  ranked = values[order]
  pos = np.clip(np.searchsorted(ranked, raw), 0, max(len(ranked) - 1, 0))
  hit = ranked[pos] == raw if len(ranked) else np.zeros(raw.shape, bool)
  out = np.full(raw.shape, -1, np.int32)
  out[hit] = order[pos[hit]]
  return out
