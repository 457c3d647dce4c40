"""'cube': your own image cube, with an optional label map.

  config.data = dict(name="cube", path="scene.hdr", label_path="gt.tif",
                     task="segmentation", patch_size=32)

The cube is one file: .npy / .npz, GeoTIFF, ENVI (.hdr + raw binary) or
MATLAB .mat (v5 or v7.3), read by `eo_jax.data.cube_io` (see there for
each format, `pixel_order` and the variable names of .npz / .mat files).
The label map (`label_path`, any of the same formats; or a second variable
of the cube's own .npz / .mat file, `label_variable`) holds integer class
values per pixel, `unlabelled_value` (default 0) where unlabelled.

Bands: centre wavelengths in nm come from, in this order, `wavelengths`
(one per band), `wavelength_range` ((first, last): evenly spaced), or the
file (an ENVI header's `wavelength` with its units; GDAL metadata of a
GeoTIFF). Names are `band_names` or 'B001', 'B002', ...; `config.data.bands`
selects bands by these names. Checkpoints compare bands by name AND
wavelength, so a model trained on one sensor's B001... refuses another's.

Classes: `class_values` lists the label values that are classes, in class
order (class k = the k-th value); by default the values present in the
label map other than `unlabelled_value`, sorted, or, when `class_names`
gives K names, the K smallest non-negative values other than
`unlabelled_value` (1..K with the default 0). An ENVI classification file's
`class names` name its values. Any other value in the map is an error that
names it.

Tasks, patch sizes and the spatially disjoint splits are those of
`eo_jax.data.datasets.scene`; `task` defaults to 'classification' with a
label map and 'unlabelled' without. GeoTIFF and ENVI georeferencing is kept
on every split (`geo`, `georeference`, `window_geo(i)`), to write
predictions back onto the map.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any, Sequence

from absl import logging
import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import cube_io
from eo_jax.data import splits as splits_lib
from eo_jax.data.datasets import scene
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, UNLABELLED,
                                       DataError, Dataset, missing_data)

SOURCE = "wherever your cube comes from (this dataset reads your own files)"
LAYOUT = ("one cube file: .npy/.npz, GeoTIFF .tif, ENVI .hdr + raw data, or "
          "MATLAB .mat; optionally a label map in config.data.label_path")


def _scene_array(array: np.ndarray) -> np.ndarray:
  """(1, H, W, C) of an (H, W, C) or (H, W) array; memory maps stay memory
  maps (patches read only their rows), other arrays become C-ordered so that
  cutting windows is cheap."""
  if not isinstance(array, np.memmap) and not isinstance(
      getattr(array, "base", None), np.memmap):
    array = np.ascontiguousarray(array)
  return array[None] if array.ndim == 3 else array[None, ..., None]


def _read_cube(path: str, variable: str, pixel_order: str) -> np.ndarray:
  return _scene_array(cube_io.read(path, variable, pixel_order).array)


def _numbers(value: Any, key: str) -> tuple[float, ...]:
  """A config value as numbers: a sequence, or (from a command-line
  override) one string '450,550,650'."""
  if isinstance(value, str):
    value = [v for v in re.split(r"[,+\s]+", value.strip("()[] ")) if v]
  try:
    return tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise errors.ConfigValueError(
        f"config.data.{key} must be numbers (nm), got {value!r}.") from None


def _wavelengths(file: cube_io.CubeFile, channels: int,
                 wavelengths: Sequence[float],
                 wavelength_range: Sequence[float], shape: tuple[int, ...]
                 ) -> tuple[float, ...]:
  wavelengths = _numbers(wavelengths, "wavelengths")
  wavelength_range = _numbers(wavelength_range, "wavelength_range")
  if len(wavelengths):
    values = wavelengths
    key = "wavelengths"
    if file.wavelengths_nm is not None and not np.allclose(
        values, file.wavelengths_nm, atol=bands_lib.SAME_WAVELENGTH_NM):
      logging.info("config.data.wavelengths replaces the wavelengths in %s.",
                   file.path)
  elif len(wavelength_range):
    if len(wavelength_range) != 2:
      raise errors.ConfigValueError(
          f"config.data.wavelength_range is (first, last) in nm, got "
          f"{tuple(wavelength_range)}.")
    values = tuple(float(w) for w in np.linspace(*wavelength_range, channels))
    key = "wavelength_range"
  elif file.wavelengths_nm is not None:
    values, key = file.wavelengths_nm, ""
  else:
    raise errors.ConfigValueError(
        f"{file.path} ({file.fmt}) does not give band wavelengths; set "
        f"config.data.wavelengths to the {channels} band centres in nm, or "
        "config.data.wavelength_range=(first, last) for evenly spaced bands.")
  if len(values) != channels:
    other = [a for a, n in zip("HW", shape[:2]) if n == len(values)]
    hint = (f" The cube's {other[0]} axis has {len(values)} entries: if the "
            "bands come first, set config.data.pixel_order='chw' (or "
            "'column_major')." if other else "")
    raise errors.ConfigValueError(
        f"config.data.{key or 'wavelengths'} gives {len(values)} wavelengths "
        f"but {file.path} has {channels} bands (shape {shape}, read as H, W, "
        f"C).{hint}")
  return values


def _classes(raw: np.ndarray, file: cube_io.CubeFile,
             class_names: Sequence[str], class_values: Sequence[int],
             unlabelled_value: int) -> tuple[list[int], list[str]]:
  """(label values of the classes, in class order; their names)."""
  names = [str(n) for n in class_names]
  values = [int(v) for v in class_values]
  if values:
    if unlabelled_value in values:
      raise errors.ConfigValueError(
          f"config.data.class_values {values} include unlabelled_value "
          f"{unlabelled_value}; a value is a class or unlabelled, not both.")
    if len(set(values)) != len(values):
      raise errors.ConfigValueError(
          f"config.data.class_values {values} repeat a value.")
    if names and len(names) != len(values):
      raise errors.ConfigValueError(
          f"config.data.class_names has {len(names)} names for "
          f"{len(values)} class_values.")
  elif names:
    candidates = (v for v in range(len(names) + 1) if v != unlabelled_value)
    values = [next(candidates) for _ in names]
  elif file.class_names:
    # An ENVI classification file names its values 0, 1, ...
    values = [v for v in range(len(file.class_names)) if v != unlabelled_value]
    names = [file.class_names[v] for v in values]
  else:
    present = np.unique(np.asarray(raw))
    values = [int(v) for v in present if int(v) != unlabelled_value]
  if not names:
    names = [f"class {v}" for v in values]
  return values, names


@DATASETS.register("cube")
def cube(path: str = "", label_path: str = "", task: str | None = None,
         image_variable: str = "", label_variable: str = "",
         pixel_order: str = "hwc", wavelengths: Sequence[float] = (),
         wavelength_range: Sequence[float] = (),
         band_names: Sequence[str] = (), class_names: Sequence[str] = (),
         class_values: Sequence[int] = (), unlabelled_value: int = 0,
         scale: float = 1.0, rgb_bands: Sequence[str] = (),
         patch_size: int | None = None, stride: int | None = None,
         eval_stride: int | None = None, split: str = splits_lib.SPATIAL,
         split_fractions: Sequence[float] | Any = splits_lib.DEFAULT_FRACTIONS,
         split_seed: int = 0, block_size: int = 0, margin: int | None = None
         ) -> Dataset:
  """Patches of your own cube (see the module docstring).

  Args:
    path: the cube file.
    label_path: the label map file; '' for none, or for `label_variable` of
      the cube's own .npz / .mat file.
    task: 'classification', 'segmentation' or 'unlabelled'; None:
      classification with a label map, unlabelled without.
    image_variable, label_variable: array names in .npz / .mat files ('':
      the file's only array).
    pixel_order: axis order of .npy / .npz / .mat arrays ('hwc', 'chw',
      'column_major', ...).
    wavelengths: band centres in nm (overrides the file's).
    wavelength_range: (first, last) nm of evenly spaced bands.
    band_names: one name per band; default 'B001', ...
    class_names, class_values, unlabelled_value: the label map's classes.
    scale: raw values are multiplied by this (e.g. 1e-4 for reflectance
      stored x 10000).
    rgb_bands: names of the bands to render as R, G, B; default the bands
      nearest to 640 / 550 / 470 nm.
    patch_size, stride, eval_stride, split, split_fractions, split_seed,
      block_size, margin: see `eo_jax.data.datasets.scene` and
      `eo_jax.data.splits`.
  """
  if not path or not Path(path).expanduser().exists():
    raise missing_data("Image cube", path or "", SOURCE, "config.data.path",
                       LAYOUT)
  path = str(Path(path).expanduser())
  image = cube_io.read(path, image_variable, pixel_order)
  array = _scene_array(image.array)
  shape = tuple(image.array.shape)
  channels = array.shape[-1]
  values = _wavelengths(image, channels, wavelengths, wavelength_range, shape)
  bands = bands_lib.bands_from_wavelengths(values, list(band_names) or None)
  if image.band_names is not None and not len(band_names):
    # The file's own band names ('Band 1', '412 nm') become long names; the
    # short generated names stay the ones config.data.bands selects.
    bands = tuple(dataclasses.replace(b, long_name=f"{n} ({b.long_name})")
                  for b, n in zip(bands, image.band_names))
  unknown = [n for n in rgb_bands if n not in bands_lib.names(bands)]
  if unknown:
    raise errors.ConfigValueError(
        f"config.data.rgb_bands names {unknown}, which are not bands of "
        f"{image.path} ({list(bands_lib.names(bands))[:6]}...).")
  with_labels = bool(label_path or label_variable)
  task = task or (CLASSIFICATION if with_labels else UNLABELLED)
  labels, classes, where = None, [], str(image.path)
  if with_labels and task != UNLABELLED:
    source = label_path or path
    if label_path and not Path(label_path).expanduser().exists():
      raise missing_data("Label map", label_path, SOURCE,
                         "config.data.label_path", LAYOUT)
    label_file = cube_io.read(str(Path(source).expanduser()), label_variable,
                              pixel_order, memmap=False, key="label_variable")
    raw = cube_io.as_label_map(label_file)
    if raw.shape != tuple(array.shape[1:3]):
      raise DataError(
          f"The label map {label_file.path} is {raw.shape[0]} x {raw.shape[1]} "
          f"px but the image {image.path} is {array.shape[1]} x "
          f"{array.shape[2]}; they must cover the same pixels. Check "
          "config.data.label_path, label_variable and pixel_order.")
    class_values_, classes = _classes(raw, label_file, class_names,
                                      class_values, int(unlabelled_value))
    labels = scene.remap_labels(raw, class_values_, (int(unlabelled_value),),
                                str(label_file.path))
    where = f"{image.path} with labels {label_file.path}"
  elif task != UNLABELLED:
    raise errors.ConfigValueError(
        f"config.data.task={task!r} needs a label map; set "
        "config.data.label_path (or label_variable), or task='unlabelled'.")
  cube_ref = scene.SceneCube(
      functools.partial(_read_cube, path, image_variable, pixel_order),
      key=(path, image_variable, pixel_order), shape=array.shape, array=array)
  return scene.build(
      name="cube", cube=cube_ref, bands=bands,
      options=scene.PatchOptions(task, patch_size, stride, eval_stride, split,
                                 split_fractions, split_seed, block_size,
                                 margin),
      where=where, labels=labels, class_names=classes, scale=scale,
      rgb_bands=tuple(rgb_bands) if len(rgb_bands) else None,
      geo=image.geo, georeference=image.georeference)
