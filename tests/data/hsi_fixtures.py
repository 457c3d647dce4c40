"""Writers of small hyperspectral fixtures in their published file formats.

Written here byte by byte (not with eo_jax's readers' knowledge), so that
the tests check the readers against the formats themselves:

* MATLAB v5 through scipy.io.savemat (what MATLAB's save(..., '-v7') and
  the EHU downloads are);
* MATLAB v7.3 as MATLAB writes it: an HDF5 file behind a 512-byte MATLAB
  header, each variable a dataset stored column-major (so its HDF5 shape is
  the MATLAB shape reversed) with a MATLAB_class attribute;
* ENVI: a text header and a raw binary file in bsq / bil / bip order.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy import io

_MATLAB_CLASS = {np.dtype(np.float64): "double", np.dtype(np.float32): "single",
                 np.dtype(np.uint8): "uint8", np.dtype(np.uint16): "uint16",
                 np.dtype(np.int16): "int16", np.dtype(np.int32): "int32",
                 np.dtype(np.uint32): "uint32", np.dtype(np.int8): "int8"}


def write_mat(path: Path, variables: dict[str, np.ndarray], version: str
              ) -> Path:
  """Writes `variables` (name -> array, in MATLAB's axis order) as a .mat
  file of `version` '5' or '7.3'."""
  path = Path(path)
  if version == "5":
    io.savemat(path, variables, format="5", do_compression=True)
    return path
  assert version == "7.3", version
  with h5py.File(path, "w", userblock_size=512) as f:
    for name, array in variables.items():
      array = np.asarray(array)
      # Column-major storage: HDF5 sees the MATLAB dimensions reversed.
      ds = f.create_dataset(name, data=np.ascontiguousarray(array.T),
                            compression="gzip")
      ds.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASS[array.dtype])
  # MATLAB's 128-byte header at the start of the user block: text, subsystem
  # offset, version 0x0200 and the endian indicator 'IM'.
  text = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 "
          b"00:00:00 2024 HDF5 schema 1.00 .").ljust(116, b" ")
  header = text + b"\x00" * 8 + b"\x00\x02" + b"IM"
  with open(path, "r+b") as f:
    f.write(header)
  return path


def write_envi(stem: Path, cube: np.ndarray, interleave: str = "bsq",
               byte_order: int = 0, data_suffix: str = ".img",
               wavelengths: list[float] | None = None,
               wavelength_units: str | None = "Nanometers",
               header_offset: int = 0, extra: str = "") -> tuple[Path, Path]:
  """Writes an (H, W, C) cube as ENVI: `<stem>.hdr` and `<stem><suffix>`."""
  stem = Path(stem)
  codes = {np.dtype(np.uint8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
           np.dtype(np.float32): 4, np.dtype(np.float64): 5,
           np.dtype(np.uint16): 12}
  lines_, samples, bands = cube.shape
  order = {"bsq": (2, 0, 1), "bil": (0, 2, 1), "bip": (0, 1, 2)}[interleave]
  raw = np.ascontiguousarray(np.transpose(cube, order))
  raw = raw.astype(raw.dtype.newbyteorder("<" if byte_order == 0 else ">"))
  data = Path(str(stem) + data_suffix)
  data.write_bytes(b"\x00" * header_offset + raw.tobytes())
  header = ["ENVI", "description = {eo_jax test cube,", "  written by hand}",
            f"samples = {samples}", f"lines   = {lines_}", f"bands   = {bands}",
            f"header offset = {header_offset}", "file type = ENVI Standard",
            f"data type = {codes[np.dtype(cube.dtype)]}",
            f"interleave = {interleave}", f"byte order = {byte_order}"]
  if wavelength_units is not None:
    header.append(f"wavelength units = {wavelength_units}")
  if wavelengths is not None:
    # Several values a line, as ENVI writes them.
    chunks = [", ".join(repr(float(w)) for w in wavelengths[i:i + 6])
              for i in range(0, len(wavelengths), 6)]
    header.append("wavelength = {\n " + ",\n ".join(chunks) + "}")
  if extra:
    header.append(extra)
  hdr = Path(str(stem) + ".hdr")
  hdr.write_text("\n".join(header) + "\n")
  return hdr, data
