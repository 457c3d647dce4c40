"""Band metadata: what each channel of an image is.

Every dataset declares its bands; configs select bands by name; models and
weights that care about spectra receive the band list. Statistics (mean,
std) are filled in from a dataset's training split and travel with the band,
so normalisation is keyed by band name and never by channel index.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Band:
  """One spectral band.

  Attributes:
    name: short identifier, unique within a sensor (e.g. 'B8A').
    wavelength_nm: centre wavelength in nanometres.
    resolution_m: native ground sampling distance in metres, if known.
    mean: per-band mean of the training split in the dataset's raw units.
    std: per-band standard deviation of the training split.
    long_name: a human-readable name ('Red edge 4').
  """
  name: str
  wavelength_nm: float
  resolution_m: float | None = None
  mean: float | None = None
  std: float | None = None
  long_name: str = ""

  def with_stats(self, mean: float, std: float) -> "Band":
    return dataclasses.replace(self, mean=float(mean), std=float(std))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Band":
    return cls(**d)


def _bands(rows: Iterable[tuple]) -> tuple[Band, ...]:
  return tuple(Band(name=n, wavelength_nm=w, resolution_m=r, long_name=ln)
               for n, w, r, ln in rows)


# Sentinel-2 MSI, centre wavelengths of S2A (ESA Sentinel-2 user handbook).
# Order is the ESA band numbering with B8A after B8; datasets that store
# bands in another order (EuroSAT puts B8A last) declare their own order by
# name through `select`.
SENTINEL2 = _bands([
    ("B01", 442.7, 60, "Coastal aerosol"),
    ("B02", 492.4, 10, "Blue"),
    ("B03", 559.8, 10, "Green"),
    ("B04", 664.6, 10, "Red"),
    ("B05", 704.1, 20, "Red edge 1"),
    ("B06", 740.5, 20, "Red edge 2"),
    ("B07", 782.8, 20, "Red edge 3"),
    ("B08", 832.8, 10, "NIR"),
    ("B8A", 864.7, 20, "Red edge 4 / narrow NIR"),
    ("B09", 945.1, 60, "Water vapour"),
    ("B10", 1373.5, 60, "SWIR cirrus"),
    ("B11", 1613.7, 20, "SWIR 1"),
    ("B12", 2202.4, 20, "SWIR 2"),
])

# Landsat-8 OLI (B1-B9) and TIRS (B10, B11).
LANDSAT8 = _bands([
    ("B1", 443.0, 30, "Coastal aerosol"),
    ("B2", 482.0, 30, "Blue"),
    ("B3", 561.5, 30, "Green"),
    ("B4", 654.5, 30, "Red"),
    ("B5", 865.0, 30, "NIR"),
    ("B6", 1608.5, 30, "SWIR 1"),
    ("B7", 2200.5, 30, "SWIR 2"),
    ("B8", 589.5, 15, "Panchromatic"),
    ("B9", 1373.5, 30, "Cirrus"),
    ("B10", 10895.0, 100, "Thermal infrared 1"),
    ("B11", 12005.0, 100, "Thermal infrared 2"),
])

# Plain camera RGB; wavelengths are nominal centres of the colour filters.
RGB = _bands([
    ("R", 610.0, None, "Red"),
    ("G", 550.0, None, "Green"),
    ("B", 465.0, None, "Blue"),
])

SENSORS = {"sentinel2": SENTINEL2, "landsat8": LANDSAT8, "rgb": RGB}


def names(bands: Sequence[Band]) -> tuple[str, ...]:
  return tuple(b.name for b in bands)


def wavelengths(bands: Sequence[Band]) -> tuple[float, ...]:
  return tuple(b.wavelength_nm for b in bands)


def by_name(bands: Sequence[Band], name: str) -> Band:
  for b in bands:
    if b.name == name:
      return b
  raise KeyError(f"Band {name!r} not among {list(names(bands))}.")


def select(bands: Sequence[Band], wanted: Sequence[str] | None) -> tuple[Band, ...]:
  """Returns the bands named in `wanted`, in that order (all if None)."""
  if wanted is None:
    return tuple(bands)
  available = names(bands)
  missing = [w for w in wanted if w not in available]
  if missing:
    raise ValueError(
        f"Bands {missing} are not in this dataset; it has {list(available)}. "
        "Fix `config.data.bands`.")
  if len(set(wanted)) != len(wanted):
    raise ValueError(f"`config.data.bands` names a band twice: {list(wanted)}.")
  return tuple(by_name(bands, w) for w in wanted)


def indices(bands: Sequence[Band], wanted: Sequence[str]) -> list[int]:
  """Channel indices of the `wanted` band names within `bands`."""
  select(bands, wanted)  # validates
  available = names(bands)
  return [available.index(w) for w in wanted]


def check_same(expected: Sequence[Band], got: Sequence[Band], what: str) -> None:
  """Raises a clear error when two band lists differ (e.g. data vs checkpoint)."""
  if names(expected) != names(got):
    raise ValueError(
        f"{what}: band mismatch. Expected {len(expected)} bands "
        f"{list(names(expected))}, got {len(got)} bands {list(names(got))}. "
        "Select the same bands with `config.data.bands`, or start a new workdir.")


# Orbita OHS hyperspectral imager as distributed in WHU-OHS (Li et al. 2022):
# 32 bands, 466-940 nm, 10 m. The README of the authors' toolbox renders true
# colour from 670 / 566 / 480 nm, i.e. B14 / B07 / B02 of this list.
WHU_OHS = tuple(
    Band(name=f"B{i + 1:02d}", wavelength_nm=float(w), resolution_m=10,
         long_name=f"OHS {w} nm")
    for i, w in enumerate((466, 480, 500, 520, 536, 550, 566, 580,
                           596, 610, 626, 640, 656, 670, 686, 700,
                           716, 730, 746, 760, 776, 790, 806, 820,
                           836, 850, 866, 880, 896, 910, 926, 940)))
SENSORS["orbita_ohs"] = WHU_OHS
