"""Classic hyperspectral scenes from their published MATLAB files.

Both scenes are distributed by the Grupo de Inteligencia Computacional of
the University of the Basque Country (EHU),
https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes,
as one .mat file for the cube and one for the ground truth. `path` is the
folder holding them (or one of the files). MATLAB v5 files (as published)
and v7.3 (HDF5) re-saves are both read (`eo_jax.data.cube_io`).

'indian_pines': AVIRIS, 12 June 1992, over the Indian Pines test site in
north-western Indiana; 145 x 145 px of 20 m. `Indian_pines_corrected.mat`,
variable 'indian_pines_corrected' (145, 145, 200), is `Indian_pines.mat`
('indian_pines', 220 bands) without the water-absorption bands [104-108],
[150-163] and 220 (1-based, of the 220). `Indian_pines_gt.mat`,
'indian_pines_gt' (145, 145): 0 = unlabelled, 1..16 = the classes below
(10,249 labelled pixels, from 20 (Oats) to 2,455 (Soybean-mintill)).
Band centres: AVIRIS's 1992 calibration of this scene (`92AV3C.spc`,
distributed with the scene by Purdue University as 92AV3C, copied in
github.com/spectralpython/sample-data): the 220 bands are AVIRIS channels
2-224 without 33, 97 and 161, 400.0 to 2499.0 nm. They are not monotonic
where AVIRIS's spectrometers overlap (696.5 nm is followed by 686.9 nm).
Band names are 'B001'... 'B220', the 1-based position among the 220, so
the corrected set's names skip B104-B108, B150-B163 and B220, as in the
published list.

'pavia_university': ROSIS-03, over the University of Pavia, Italy; 610 x
340 px of 1.3 m. `PaviaU.mat`, 'paviaU' (610, 340, 103); `PaviaU_gt.mat`,
'paviaU_gt' (610, 340): 0 = unlabelled, 1..9 = the classes below (42,776
labelled pixels). ROSIS records 115 bands over 430-860 nm; the published
cube keeps 103 after removing 12 noisy ones, and neither the files nor the
distributor list the centres of the 103. They are given here as 103 evenly
spaced centres over 430-860 nm (about 4.2 nm apart), the nominal
description used in the literature: enough to pick display bands and to
tell this sensor from another, not a calibration.

Tasks, defaults and splits are those of `eo_jax.data.datasets.scene`:
'classification' (a patch around every labelled pixel, labelled with the
centre pixel's class), 'segmentation' (windows with masks, 255 =
unlabelled) and 'unlabelled' (windows), split into spatially disjoint
blocks unless split='random_pixels_leaky' (the common benchmark protocol,
whose scores are inflated; it logs why). Default windows: 9 px for
classification; for the dense tasks 16 px in Indian Pines (145 px: 32 px
windows with 32 px margins would leave one val and one test window) and
32 px in Pavia University. Raw values are kept (radiance / reflectance
digital numbers); normalisation uses the train split's band statistics.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data import cube_io
from eo_jax.data import splits as splits_lib
from eo_jax.data.datasets import scene
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, DataError,
                                       Dataset, missing_data)

URL = "https://www.ehu.eus/ccwintco/index.php/Hyperspectral_Remote_Sensing_Scenes"

# Centre wavelengths (nm) of the 220 bands of Indian_pines.mat, from 92AV3C.spc.
AVIRIS_1992_NM = (
    400.02, 409.82, 419.62, 429.43, 439.25, 449.07, 458.90, 468.73,
    478.57, 488.41, 498.26, 508.12, 517.98, 527.85, 537.72, 547.60,
    557.49, 567.38, 577.28, 587.18, 597.09, 607.01, 616.93, 626.85,
    636.78, 646.72, 656.67, 666.61, 676.57, 686.53, 696.50, 686.91,
    696.55, 706.19, 715.83, 725.47, 735.11, 744.74, 754.38, 764.01,
    773.64, 783.27, 792.91, 802.53, 812.16, 821.79, 831.41, 841.04,
    850.66, 860.28, 869.91, 879.53, 889.14, 898.76, 908.38, 917.99,
    927.61, 937.22, 946.83, 956.45, 966.06, 975.66, 985.27, 994.88,
    1004.48, 1014.09, 1023.69, 1033.29, 1042.89, 1052.49, 1062.09, 1071.69,
    1081.29, 1090.88, 1100.48, 1110.07, 1119.66, 1129.25, 1138.84, 1148.43,
    1158.02, 1167.61, 1177.19, 1186.77, 1196.36, 1205.94, 1215.52, 1225.10,
    1234.68, 1244.26, 1253.83, 1263.41, 1272.98, 1282.55, 1273.00, 1282.96,
    1292.93, 1302.89, 1312.85, 1322.81, 1332.77, 1342.73, 1352.68, 1362.64,
    1372.59, 1382.54, 1392.49, 1402.44, 1412.39, 1422.34, 1432.28, 1442.23,
    1452.17, 1462.11, 1472.05, 1481.99, 1491.92, 1501.86, 1511.79, 1521.73,
    1531.66, 1541.59, 1551.52, 1561.44, 1571.37, 1581.30, 1591.22, 1601.14,
    1611.06, 1620.98, 1630.90, 1640.81, 1650.73, 1660.64, 1670.56, 1680.47,
    1690.38, 1700.28, 1710.19, 1720.10, 1730.00, 1739.90, 1749.81, 1759.71,
    1769.60, 1779.50, 1789.40, 1799.29, 1809.19, 1819.08, 1828.97, 1838.86,
    1848.75, 1858.63, 1868.52, 1878.40, 1888.28, 1883.24, 1893.25, 1903.26,
    1913.26, 1923.27, 1933.27, 1943.27, 1953.26, 1963.25, 1973.24, 1983.23,
    1993.22, 2003.20, 2013.18, 2023.16, 2033.13, 2043.10, 2053.07, 2063.04,
    2073.00, 2082.97, 2092.92, 2102.88, 2112.83, 2122.78, 2132.73, 2142.68,
    2152.62, 2162.56, 2172.50, 2182.43, 2192.37, 2202.30, 2212.22, 2222.15,
    2232.07, 2241.99, 2251.90, 2261.82, 2271.73, 2281.64, 2291.54, 2301.45,
    2311.35, 2321.25, 2331.14, 2341.03, 2350.92, 2360.81, 2370.70, 2380.58,
    2390.46, 2400.33, 2410.21, 2420.08, 2429.95, 2439.81, 2449.68, 2459.54,
    2469.40, 2479.25, 2489.11, 2498.96,
)
# AVIRIS channel (1..224) of each of the 220 bands.
AVIRIS_1992_CHANNELS = tuple(c for c in range(2, 225) if c not in (33, 97, 161))
# 1-based positions (among the 220) that Indian_pines_corrected.mat drops.
INDIAN_PINES_DROPPED = (tuple(range(104, 109)) + tuple(range(150, 164))
                        + (220,))

INDIAN_PINES_CLASSES = (
    "Alfalfa", "Corn-notill", "Corn-mintill", "Corn", "Grass-pasture",
    "Grass-trees", "Grass-pasture-mowed", "Hay-windrowed", "Oats",
    "Soybean-notill", "Soybean-mintill", "Soybean-clean", "Wheat", "Woods",
    "Buildings-Grass-Trees-Drives", "Stone-Steel-Towers")
PAVIA_UNIVERSITY_CLASSES = (
    "Asphalt", "Meadows", "Gravel", "Trees", "Painted metal sheets",
    "Bare Soil", "Bitumen", "Self-Blocking Bricks", "Shadows")


def _aviris_band(position: int) -> bands_lib.Band:
  w = AVIRIS_1992_NM[position - 1]
  return bands_lib.Band(
      name=f"B{position:03d}", wavelength_nm=w, resolution_m=20.0,
      long_name=(f"AVIRIS channel {AVIRIS_1992_CHANNELS[position - 1]}, "
                 f"{w:.2f} nm"))


# All 220 bands of Indian_pines.mat, and the 200 of the corrected cube.
INDIAN_PINES_220 = tuple(_aviris_band(i) for i in range(1, 221))
INDIAN_PINES_200 = tuple(b for i, b in enumerate(INDIAN_PINES_220, 1)
                         if i not in INDIAN_PINES_DROPPED)
# ROSIS-03 as published in PaviaU.mat: nominal centres (module docstring).
ROSIS_103 = tuple(
    dataclasses.replace(b, resolution_m=1.3, long_name=f"ROSIS {b.long_name}")
    for b in bands_lib.bands_from_wavelengths(
        np.round(np.linspace(430.0, 860.0, 103), 2)))
bands_lib.SENSORS["aviris_indian_pines"] = INDIAN_PINES_200
bands_lib.SENSORS["rosis_pavia_university"] = ROSIS_103


@dataclasses.dataclass(frozen=True)
class Scene:
  """Where a published scene's arrays are and what they hold."""
  name: str
  title: str
  image_file: str
  image_variable: str
  label_file: str
  label_variable: str
  bands: tuple[bands_lib.Band, ...]
  classes: tuple[str, ...]


INDIAN_PINES = Scene("indian_pines", "Indian Pines",
                     "Indian_pines_corrected.mat", "indian_pines_corrected",
                     "Indian_pines_gt.mat", "indian_pines_gt",
                     INDIAN_PINES_200, INDIAN_PINES_CLASSES)
INDIAN_PINES_UNCORRECTED = dataclasses.replace(
    INDIAN_PINES, image_file="Indian_pines.mat", image_variable="indian_pines",
    bands=INDIAN_PINES_220)
PAVIA_UNIVERSITY = Scene("pavia_university", "Pavia University", "PaviaU.mat",
                         "paviaU", "PaviaU_gt.mat", "paviaU_gt", ROSIS_103,
                         PAVIA_UNIVERSITY_CLASSES)


def _find(folder: Path, name: str) -> Path | None:
  exact = folder / name
  if exact.is_file():
    return exact
  # Some mirrors change the case of the file names (indian_pines_gt.mat).
  if folder.is_dir():
    for p in folder.iterdir():
      if p.name.lower() == name.lower() and p.is_file():
        return p
  return None


def _layout(spec: Scene) -> str:
  return (f"a folder with {spec.image_file} (variable '{spec.image_variable}') "
          f"and {spec.label_file} (variable '{spec.label_variable}')")


def _read_cube(path: Path, variable: str) -> np.ndarray:
  """(1, H, W, C) C-contiguous, so that windows are cheap to cut."""
  return np.ascontiguousarray(cube_io.read_mat(path, variable,
                                               "image_variable"))[None]


def load(spec: Scene, path: str | None) -> tuple[np.ndarray, np.ndarray, Path,
                                                 Path]:
  """(cube (1, H, W, C), raw label map (H, W), image file, label file)."""
  if not path:
    raise missing_data(spec.title, "", URL, "config.data.path", _layout(spec))
  folder = Path(path).expanduser()
  folder = folder.parent if folder.is_file() else folder
  image_path = _find(folder, spec.image_file)
  label_path = _find(folder, spec.label_file)
  if image_path is None or label_path is None:
    missing = spec.image_file if image_path is None else spec.label_file
    raise missing_data(spec.title, folder / missing, URL, "config.data.path",
                       _layout(spec))
  for p, variable in ((image_path, spec.image_variable),
                      (label_path, spec.label_variable)):
    names = cube_io.mat_variables(p)
    if variable not in names:
      raise DataError(f"{p} has no variable {variable!r} (it has {names}); "
                      f"it is not the published {spec.title} file. "
                      f"Re-download it from {URL}.")
  cube = _read_cube(image_path, spec.image_variable)
  labels = cube_io.read_mat(label_path, spec.label_variable)
  if cube.ndim != 4 or cube.shape[-1] != len(spec.bands):
    raise DataError(
        f"{image_path}: '{spec.image_variable}' has shape {cube.shape[1:]}; "
        f"the published {spec.title} cube is (H, W, {len(spec.bands)}). "
        f"Re-download it from {URL}.")
  if labels.shape != cube.shape[1:3]:
    raise DataError(
        f"{label_path}: '{spec.label_variable}' has shape {labels.shape} but "
        f"the image {image_path.name} is {cube.shape[1:3]}; the files do not "
        "belong together. Re-download them.")
  return cube, labels, image_path, label_path


def build(spec: Scene, path: str | None, options: scene.PatchOptions
          ) -> Dataset:
  cube, raw, image_path, label_path = load(spec, path)
  k = len(spec.classes)
  labels = scene.remap_labels(raw, range(1, k + 1), (0,), str(label_path))
  cube_ref = scene.SceneCube(
      functools.partial(_read_cube, image_path, spec.image_variable),
      key=(str(image_path), spec.image_variable), shape=cube.shape,
      array=cube)
  return scene.build(name=spec.name, cube=cube_ref, bands=spec.bands,
                     options=options, where=str(image_path), labels=labels,
                     class_names=spec.classes)


@DATASETS.register("indian_pines")
def indian_pines(path: str | None = None, task: str = CLASSIFICATION,
                 patch_size: int | None = None, stride: int | None = None,
                 eval_stride: int | None = None,
                 split: str = splits_lib.SPATIAL,
                 split_fractions: Sequence[float] | Any = (
                     splits_lib.DEFAULT_FRACTIONS),
                 split_seed: int = 0, block_size: int = 0,
                 margin: int | None = None, corrected: bool = True
                 ) -> Dataset:
  """Indian Pines patches (see the module docstring).

  Args:
    path: the folder with Indian_pines_corrected.mat and Indian_pines_gt.mat.
    task: 'classification', 'segmentation' or 'unlabelled'.
    patch_size: window side (odd for classification); None: 9 for
      classification, 16 otherwise (32 in scenes of 256 px and more).
    stride: step of the train windows; None: 1 for classification,
      patch_size // 2 otherwise.
    eval_stride: step of the val / test windows; None: 1 for classification,
      patch_size otherwise.
    split: 'spatial_blocks' (default) or 'random_pixels_leaky'.
    split_fractions: train, val, test shares.
    split_seed: seeds the block (or pixel) draw.
    block_size: side of the split blocks; 0 = automatic.
    margin: pixels between areas of different splits; None = patch_size.
    corrected: the 200-band corrected cube; False reads Indian_pines.mat
      (220 bands, with the water-absorption bands).
  """
  spec = INDIAN_PINES if corrected else INDIAN_PINES_UNCORRECTED
  return build(spec, path, scene.PatchOptions(
      task, patch_size, stride, eval_stride, split, split_fractions,
      split_seed, block_size, margin))


@DATASETS.register("pavia_university")
def pavia_university(path: str | None = None, task: str = CLASSIFICATION,
                     patch_size: int | None = None, stride: int | None = None,
                     eval_stride: int | None = None,
                     split: str = splits_lib.SPATIAL,
                     split_fractions: Sequence[float] | Any = (
                         splits_lib.DEFAULT_FRACTIONS),
                     split_seed: int = 0, block_size: int = 0,
                     margin: int | None = None) -> Dataset:
  """Pavia University patches (see the module docstring); the arguments are
  those of `indian_pines`, without `corrected`."""
  return build(PAVIA_UNIVERSITY, path, scene.PatchOptions(
      task, patch_size, stride, eval_stride, split, split_fractions,
      split_seed, block_size, margin))
