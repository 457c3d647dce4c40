"""Readers of image cubes and label maps: .npy / .npz, GeoTIFF, ENVI, MATLAB.

Every reader returns a `CubeFile`: the array with pixels first ((H, W, C)
for an image, (H, W) for a label map), plus what the file says about it:
band centre wavelengths in nm, band names, class names, georeferencing.

Formats (chosen by the file name):
* `.npy`: one array; `.npz`: one array per name (`variable` picks it).
  Memory-mapped where possible (.npy), so patches read only their rows.
* `.tif` / `.tiff` (GeoTIFF, through tifffile): pixel-interleaved (H, W, C)
  or planar (C, H, W) files. The georeferencing tags are kept
  (`georeference`, by tag name, and `geo`, the grid). Band wavelengths are
  read from GDAL's metadata tag (items 'wavelength' and 'wavelength_units'
  per band) when present.
* ENVI: a text header `<name>.hdr` next to a raw binary file (`<name>`,
  `<name>.img`, `.dat`, `.bin`, `.raw`, `.bsq`, `.bil`, `.bip`). `samples`,
  `lines`, `bands`, `header offset`, `data type`, `interleave` (bsq / bil /
  bip) and `byte order` give the layout; `wavelength = {...}` with
  `wavelength units` the band centres (micrometres and millimetres are
  converted to nm; without units, values below 30 are taken as
  micrometres); `band names`, `class names` (classification files) and
  `map info` are kept. Either file may be named.
* `.mat` (MATLAB): v4 / v5 / v7 files through `scipy.io.loadmat`, v7.3
  (HDF5) files through h5py. MATLAB stores arrays column-major; h5py shows
  a MATLAB (H, W, C) array as (C, W, H), so v7.3 arrays are transposed back:
  both versions give the array MATLAB shows.

`pixel_order` says how a .npy / .npz / .mat array's axes are ordered, as a
permutation of 'hwc' ('hwc', the default: rows, columns, bands; 'chw':
bands first; 'cwh': the column-major view of an (H, W, C) array, i.e. an
array written by MATLAB / Fortran and read without transposing), or the
aliases 'bands_first' ('chw') and 'column_major' ('cwh'). A 2-D label map
follows the same order without the 'c'. GeoTIFF and ENVI files describe
their own layout.
"""
from __future__ import annotations

import dataclasses
import itertools
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from absl import logging
import numpy as np

from eo_jax import errors
from eo_jax.data import raster
from eo_jax.data.datasets.base import DataError

NPY, NPZ, GEOTIFF, ENVI, MAT = "npy", "npz", "geotiff", "envi", "mat"
FORMATS = (NPY, NPZ, GEOTIFF, ENVI, MAT)
PIXEL_ORDERS = tuple("".join(p) for p in itertools.permutations("hwc"))
PIXEL_ORDER_ALIASES = {"bands_first": "chw", "column_major": "cwh"}

ENVI_DATA_SUFFIXES = ("", ".img", ".dat", ".bin", ".raw", ".bsq", ".bil",
                      ".bip")
# ENVI `data type` codes (complex types are not images eo_jax can use).
ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2",
               13: "u4", 14: "i8", 15: "u8"}
# Units of ENVI / GDAL wavelengths -> factor to nm.
WAVELENGTH_UNITS = {
    "nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "nanometre": 1.0,
    "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "micrometer": 1e3, "micrometers": 1e3,
    "micrometre": 1e3, "micrometres": 1e3, "micron": 1e3, "microns": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimeters": 1e6, "millimetre": 1e6,
    "millimetres": 1e6,
}
_UNKNOWN_UNITS = ("", "unknown", "index")
# Below this, a wavelength without units is taken to be in micrometres: no
# imaging sensor has a band under 30 nm, nor one past 30 µm.
_MICROMETRE_GUESS_BELOW = 30.0

GEOTIFF_TAGS = {33550: "ModelPixelScale", 33922: "ModelTiepoint",
                34264: "ModelTransformation", 34735: "GeoKeyDirectory",
                34736: "GeoDoubleParams", 34737: "GeoAsciiParams",
                42112: "GDAL_METADATA", 42113: "GDAL_NODATA"}
_GDAL_METADATA_TAG = 42112


@dataclasses.dataclass(frozen=True)
class CubeFile:
  """An array read from a file, pixels first, and what the file says of it.

  Attributes:
    array: (H, W, C) image or (H, W) label map (may be a memory map).
    path: the file the pixels came from.
    fmt: one of FORMATS.
    wavelengths_nm: band centres from the file, converted to nm (or None).
    band_names: band names from the file (or None).
    class_names: class names of a classification file, by value (or None).
    geo: the north-up grid, from GeoTIFF tags or ENVI `map info` (or None).
    georeference: the file's georeferencing as stored (GeoTIFF tags by name;
      ENVI `map info`, `coordinate system string`, `projection info`).
  """
  array: np.ndarray
  path: Path
  fmt: str
  wavelengths_nm: tuple[float, ...] | None = None
  band_names: tuple[str, ...] | None = None
  class_names: tuple[str, ...] | None = None
  geo: raster.Geo | None = None
  georeference: dict[str, Any] = dataclasses.field(default_factory=dict)


def detect_format(path: str | Path) -> str:
  """The format of `path` from its name (see the module docstring)."""
  p = Path(path)
  suffix = p.suffix.lower()
  if suffix == ".npy":
    return NPY
  if suffix == ".npz":
    return NPZ
  if suffix in (".tif", ".tiff"):
    return GEOTIFF
  if suffix == ".mat":
    return MAT
  if suffix == ".hdr" or _envi_header_of(p) is not None:
    return ENVI
  raise errors.ConfigValueError(
      f"Cannot tell the format of {p}: eo_jax reads .npy, .npz, .tif/.tiff "
      "(GeoTIFF), .mat (MATLAB) and ENVI (a .hdr header next to the raw "
      "data file). Convert the file, or point config.data.path at the .hdr.")


def pixel_order_of(pixel_order: str) -> str:
  """A valid 3-letter axis order ('hwc', ...) from the config value."""
  order = PIXEL_ORDER_ALIASES.get(str(pixel_order).lower(),
                                  str(pixel_order).lower())
  if order not in PIXEL_ORDERS:
    raise errors.ConfigValueError(
        f"config.data.pixel_order must be a permutation of 'hwc' (rows, "
        f"columns, bands: {list(PIXEL_ORDERS)}) or one of "
        f"{sorted(PIXEL_ORDER_ALIASES)}, got {pixel_order!r}.")
  return order


def _to_pixels_first(array: np.ndarray, order: str, what: str) -> np.ndarray:
  """Transposes an array stored in axis order `order` to (H, W[, C])."""
  if array.ndim == 2:
    order = order.replace("c", "")
    return array if order == "hw" else array.T
  if array.ndim != 3:
    raise DataError(f"{what} has shape {array.shape}; expected a 2-D label "
                    "map or a 3-D cube.")
  return np.transpose(array, [order.index(a) for a in "hwc"])


# ---------------------------------------------------------------------------
# NumPy


def _read_npy(path: Path, memmap: bool) -> np.ndarray:
  try:
    return np.load(path, mmap_mode="r" if memmap else None, allow_pickle=False)
  except ValueError as e:
    raise DataError(f"{path} is not a plain numeric .npy array ({e}).") from e


def _read_npz(path: Path, variable: str, key: str) -> np.ndarray:
  try:
    z = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise DataError(f"{path} is not a readable .npz file ({e}).") from e
  with z:
    name = _pick_variable(path, variable, list(z.files), key)
    try:
      return z[name]
    except (ValueError, OSError) as e:
      raise DataError(f"{path}: array {name!r} cannot be read ({e}); the "
                      "file is corrupt or holds Python objects.") from e


def _pick_variable(path: Path, variable: str, names: list[str], key: str
                   ) -> str:
  if variable:
    if variable not in names:
      raise errors.ConfigValueError(
          f"{path} has no variable {variable!r}; it has {names}. Fix "
          f"config.data.{key}.")
    return variable
  if len(names) != 1:
    raise errors.ConfigValueError(
        f"{path} holds {len(names)} variables {names}; name the one to read "
        f"with config.data.{key}.")
  return names[0]


# ---------------------------------------------------------------------------
# MATLAB


def mat_version(path: Path) -> int:
  """1 for MATLAB v4-v7 files, 2 for v7.3 (HDF5)."""
  from scipy.io import matlab  # pylint: disable=g-import-not-at-top
  try:
    return int(matlab.matfile_version(str(path))[0]) or 1
  except Exception as e:  # pylint: disable=broad-except; scipy raises several
    raise DataError(f"{path} is not a MATLAB .mat file ({type(e).__name__}: "
                    f"{e}). Re-download it.") from e


def mat_variables(path: Path) -> list[str]:
  """The names of the arrays in a .mat file."""
  if mat_version(path) == 2:
    h5py = _h5py()
    with h5py.File(path, "r") as f:
      return [k for k in f.keys() if not k.startswith("#")]
  from scipy import io  # pylint: disable=g-import-not-at-top
  return [name for name, _, _ in io.whosmat(str(path))]


def _h5py() -> Any:
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(
        "Reading MATLAB v7.3 (HDF5) files needs h5py: `pip install h5py`, "
        "or save the file as v7 in MATLAB (save(..., '-v7')).") from None
  return h5py


def read_mat(path: str | Path, variable: str = "", key: str = "variable"
             ) -> np.ndarray:
  """A numeric array of a .mat file, in the axis order MATLAB shows.

  Args:
    path: the .mat file (v4 to v7.3).
    variable: the array's name; '' when the file holds exactly one.
    key: the config key naming the variable, for error messages.
  """
  path = Path(path)
  names = mat_variables(path)
  name = _pick_variable(path, variable, names, key)
  if mat_version(path) == 2:
    h5py = _h5py()
    with h5py.File(path, "r") as f:
      node = f[name]
      if not isinstance(node, h5py.Dataset):
        raise DataError(f"{path}: variable {name!r} is a MATLAB struct or "
                        "cell array, not a numeric array.")
      # HDF5 keeps MATLAB's column-major layout, so h5py shows the axes
      # reversed: transpose back to MATLAB's (H, W, C).
      array = np.asarray(node[()]).T
  else:
    from scipy import io  # pylint: disable=g-import-not-at-top
    array = io.loadmat(str(path), variable_names=[name])[name]
  if array.dtype.kind not in "biuf":
    raise DataError(f"{path}: variable {name!r} has MATLAB type {array.dtype} "
                    "(struct, cell, char or complex); a numeric array is "
                    "needed.")
  return array


# ---------------------------------------------------------------------------
# ENVI


def _envi_header_of(data: Path) -> Path | None:
  for candidate in (Path(str(data) + ".hdr"), data.with_suffix(".hdr")):
    if candidate != data and candidate.is_file():
      return candidate
  return None


def envi_files(path: str | Path) -> tuple[Path, Path]:
  """(header, data file) of an ENVI image given either of them."""
  p = Path(path)
  if p.suffix.lower() == ".hdr":
    header = p
    stem = p.with_suffix("")
    for suffix in ENVI_DATA_SUFFIXES:
      for candidate in (Path(str(stem) + suffix),
                        Path(str(stem) + suffix.upper())):
        if candidate.is_file() and candidate != header:
          return header, candidate
    suffixes = [s or "(none)" for s in ENVI_DATA_SUFFIXES]
    raise DataError(
        f"ENVI header {header} has no data file next to it (looked for "
        f"{stem.name} with suffixes {suffixes}). Put the binary file beside "
        "the header.")
  header = _envi_header_of(p)
  if header is None:
    raise DataError(f"{p} has no ENVI header ({p.name}.hdr or "
                    f"{p.with_suffix('.hdr').name}) beside it.")
  return header, p


def read_envi_header(path: str | Path) -> dict[str, Any]:
  """The fields of an ENVI .hdr file: keys lower-case; {...} values as lists
  of strings, others as strings."""
  path = Path(path)
  try:
    text = path.read_text(encoding="utf-8", errors="replace")
  except OSError as e:
    raise DataError(f"Cannot read ENVI header {path}: {e}.") from e
  lines = text.splitlines()
  if not lines or lines[0].strip().upper() != "ENVI":
    raise DataError(f"{path} is not an ENVI header (its first line must be "
                    "'ENVI').")
  fields: dict[str, Any] = {}
  i = 1
  while i < len(lines):
    line = lines[i]
    i += 1
    if not line.strip() or line.lstrip().startswith(";") or "=" not in line:
      continue
    key, value = line.split("=", 1)
    value = value.strip()
    if value.startswith("{"):
      # Braced values may span lines; collect up to the closing brace.
      while "}" not in value and i < len(lines):
        value += "\n" + lines[i]
        i += 1
      inner = value[1:value.rindex("}")] if "}" in value else value[1:]
      fields[key.strip().lower()] = [v.strip() for v in inner.split(",")
                                     if v.strip()]
    else:
      fields[key.strip().lower()] = value
  return fields


def _int_field(fields: dict, key: str, header: Path, default: int | None = None
               ) -> int:
  if key not in fields:
    if default is not None:
      return default
    raise DataError(f"ENVI header {header} has no '{key}' field.")
  try:
    return int(str(fields[key]).strip())
  except ValueError:
    raise DataError(f"ENVI header {header}: '{key} = {fields[key]}' is not "
                    "an integer.") from None


def wavelengths_to_nm(values: list[float], units: str, where: str
                      ) -> tuple[float, ...]:
  """Converts a file's band centres to nm by its units (see the module
  docstring for files without units)."""
  unit = units.strip().lower()
  if unit in WAVELENGTH_UNITS:
    factor = WAVELENGTH_UNITS[unit]
  elif unit in _UNKNOWN_UNITS:
    factor = 1e3 if values and max(values) < _MICROMETRE_GUESS_BELOW else 1.0
    logging.info("%s gives wavelengths without units; read as %s.", where,
                 "micrometres" if factor == 1e3 else "nanometres")
  else:
    raise DataError(
        f"{where}: wavelength units {units!r} are not a length (nm, "
        "micrometers, mm); give the band centres in nm with "
        "config.data.wavelengths instead.")
  return tuple(float(v) * factor for v in values)


def _envi_geo(fields: dict) -> raster.Geo | None:
  info = fields.get("map info")
  if not isinstance(info, list) or len(info) < 7:
    return None
  if any("rotation" in str(v).lower() for v in info):
    return None  # rotated grids are not axis-aligned
  try:
    px, py, easting, northing, dx, dy = (float(v) for v in info[1:7])
  except ValueError:
    return None
  # The reference pixel (px, py) is 1-based, (1, 1) being the upper-left
  # corner of the first pixel.
  return raster.Geo(x0=easting - (px - 1) * dx, y0=northing + (py - 1) * dy,
                    dx=dx, dy=dy)


def read_envi(path: str | Path, memmap: bool = True) -> CubeFile:
  """An ENVI image (given its .hdr or its data file) as (H, W, C)."""
  if Path(path).suffix.lower() == ".hdr":
    read_envi_header(path)  # a header that is not one, before its data file
  header, data = envi_files(path)
  fields = read_envi_header(header)
  samples = _int_field(fields, "samples", header)
  lines = _int_field(fields, "lines", header)
  bands = _int_field(fields, "bands", header, 1)
  offset = _int_field(fields, "header offset", header, 0)
  code = _int_field(fields, "data type", header)
  if code not in ENVI_DTYPES:
    raise DataError(f"ENVI header {header}: data type {code} is not a real "
                    f"number type eo_jax reads ({sorted(ENVI_DTYPES)}).")
  order = _int_field(fields, "byte order", header, 0)
  dtype = np.dtype(("<" if order == 0 else ">") + ENVI_DTYPES[code])
  interleave = str(fields.get("interleave", "bsq")).strip().lower()
  shapes = {"bsq": (bands, lines, samples), "bil": (lines, bands, samples),
            "bip": (lines, samples, bands)}
  if interleave not in shapes:
    raise DataError(f"ENVI header {header}: interleave {interleave!r} is not "
                    "bsq, bil or bip.")
  shape = shapes[interleave]
  needed = offset + int(np.prod(shape)) * dtype.itemsize
  size = data.stat().st_size
  if size < needed:
    raise DataError(
        f"ENVI data file {data} has {size:,} bytes; its header {header.name} "
        f"({lines} lines x {samples} samples x {bands} bands of {dtype.name}, "
        f"offset {offset}) needs {needed:,}. The file is truncated or the "
        "header belongs to another file.")
  if memmap:
    raw = np.memmap(data, dtype=dtype, mode="r", offset=offset, shape=shape)
  else:
    raw = np.fromfile(data, dtype=dtype, count=int(np.prod(shape)),
                      offset=offset).reshape(shape)
  array = np.transpose(raw, {"bsq": (1, 2, 0), "bil": (0, 2, 1),
                             "bip": (0, 1, 2)}[interleave])
  wavelengths = None
  if "wavelength" in fields:
    try:
      values = [float(v) for v in fields["wavelength"]]
    except ValueError:
      raise DataError(f"ENVI header {header}: the wavelength list holds "
                      "values that are not numbers.") from None
    if len(values) != bands:
      raise DataError(f"ENVI header {header} lists {len(values)} wavelengths "
                      f"for {bands} bands.")
    wavelengths = wavelengths_to_nm(
        values, str(fields.get("wavelength units", "")),
        f"ENVI header {header}")
  names = fields.get("band names")
  classes = fields.get("class names")
  georeference = {k: fields[k] for k in ("map info", "coordinate system string",
                                         "projection info") if k in fields}
  return CubeFile(
      array=array, path=data, fmt=ENVI, wavelengths_nm=wavelengths,
      band_names=tuple(names) if isinstance(names, list) and len(names) == bands
      else None,
      class_names=tuple(classes) if isinstance(classes, list) else None,
      geo=_envi_geo(fields), georeference=georeference)


# ---------------------------------------------------------------------------
# GeoTIFF


def _gdal_wavelengths(xml: str, channels: int, where: str
                      ) -> tuple[float, ...] | None:
  """Band centres from GDAL's metadata XML (items 'wavelength' and
  'wavelength_units' of each band), if every band has one."""
  try:
    root = ElementTree.fromstring(xml)
  except ElementTree.ParseError:
    return None
  values: dict[int, float] = {}
  units = ""
  for item in root.iter("Item"):
    name = (item.get("name") or "").lower()
    sample = item.get("sample")
    if name == "wavelength" and sample is not None:
      try:
        values[int(sample)] = float((item.text or "").strip())
      except ValueError:
        return None
    elif name == "wavelength_units":
      units = (item.text or "").strip()
  if sorted(values) != list(range(channels)):
    return None
  return wavelengths_to_nm([values[i] for i in range(channels)], units, where)


def read_geotiff(path: str | Path, memmap: bool = True) -> CubeFile:
  """A GeoTIFF as (H, W, C), with its georeferencing tags."""
  path = Path(path)
  try:
    header = raster.read_header(path)
    array = raster.channels_last(raster.read_array(path, memmap=memmap),
                                 header.axes, path)
  except ValueError as e:  # raster names the file and the problem
    raise DataError(str(e)) from e
  import tifffile  # pylint: disable=g-import-not-at-top
  with tifffile.TiffFile(path) as tif:
    tags = tif.pages[0].tags
    georeference = {name: tags[code].value
                    for code, name in GEOTIFF_TAGS.items() if code in tags}
  wavelengths = None
  xml = georeference.get("GDAL_METADATA")
  if isinstance(xml, str):
    wavelengths = _gdal_wavelengths(xml, array.shape[-1], str(path))
  return CubeFile(array=array, path=path, fmt=GEOTIFF,
                  wavelengths_nm=wavelengths, geo=header.geo,
                  georeference=georeference)


# ---------------------------------------------------------------------------
# Any format


def read(path: str | Path, variable: str = "", pixel_order: str = "hwc",
         memmap: bool = True, key: str = "image_variable") -> CubeFile:
  """Reads a cube or a label map in any supported format, pixels first.

  Args:
    path: the file (see the module docstring for the formats).
    variable: the array's name in a .npz / .mat file ('' when it holds one).
    pixel_order: axis order of .npy / .npz / .mat arrays.
    memmap: memory-map uncompressed files instead of reading them.
    key: the config key of `variable`, for error messages.

  Raises:
    ConfigValueError: a format, variable or pixel order the file does not
      have. DataError: a file that cannot be read as declared.
  """
  p = Path(path)
  fmt = detect_format(p)
  order = pixel_order_of(pixel_order)
  if fmt in (GEOTIFF, ENVI) and order != "hwc":
    raise errors.ConfigValueError(
        f"config.data.pixel_order={pixel_order!r} applies to .npy / .npz / "
        f".mat arrays; {p.name} ({fmt}) describes its own layout. Remove it.")
  if fmt == ENVI:
    return read_envi(p, memmap)
  if fmt == GEOTIFF:
    return read_geotiff(p, memmap)
  if fmt == NPY:
    array = _read_npy(p, memmap)
  elif fmt == NPZ:
    array = _read_npz(p, variable, key)
  else:
    array = read_mat(p, variable, key)
  if array.dtype.kind not in "biuf":
    raise DataError(f"{p} holds {array.dtype} values; a numeric array is "
                    "needed.")
  return CubeFile(array=_to_pixels_first(array, order, str(p)), path=p,
                  fmt=fmt)


def as_label_map(file: CubeFile) -> np.ndarray:
  """The (H, W) label map of a CubeFile ((H, W, 1) is squeezed)."""
  array = np.asarray(file.array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise DataError(f"The label map {file.path} has shape {array.shape}; a "
                    "label map is one band (H, W). Check config.data.labels, "
                    "label_variable and pixel_order.")
  return array

