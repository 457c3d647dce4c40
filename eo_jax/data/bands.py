"""Band metadata: what each channel of an image is.

Every dataset declares its bands; configs select bands by name; models and
weights that care about spectra receive the band list. Statistics (mean,
std) are filled in from a dataset's training split and travel with the band,
so normalisation is keyed by band name and never by channel index.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

from eo_jax import errors


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


# Two bands whose centres differ by less than this are the same band: the
# same sensor's wavelengths written with fewer decimals (e.g. 664.6 vs 665).
SAME_WAVELENGTH_NM = 0.5


def check_same(expected: Sequence[Band], got: Sequence[Band], what: str) -> None:
  """Raises a clear error when two band lists differ (e.g. data vs checkpoint).

  Names AND centre wavelengths (to `SAME_WAVELENGTH_NM`) must agree: two
  sensors can both call their bands B001, B002, ..., and a model trained on
  one sensor's 450 nm band must not be fed another's 470 nm band. The error
  names the first band that differs.

  Raises:
    ConfigValueError (a ValueError): the lists differ.
  """
  fix = ("Select the same bands with `config.data.bands`, or start a new "
         "workdir.")
  if names(expected) != names(got):
    raise errors.ConfigValueError(
        f"{what}: band mismatch. Expected {len(expected)} bands "
        f"{list(names(expected))}, got {len(got)} bands {list(names(got))}. "
        + fix)
  for i, (a, b) in enumerate(zip(expected, got)):
    wa, wb = float(a.wavelength_nm), float(b.wavelength_nm)
    if not (math.isclose(wa, wb, rel_tol=0.0, abs_tol=SAME_WAVELENGTH_NM)
            or (math.isnan(wa) and math.isnan(wb))):
      raise errors.ConfigValueError(
          f"{what}: band mismatch. Band {i + 1} ({a.name}) is centred at "
          f"{wa:g} nm in the expected bands but at {wb:g} nm here: same "
          "names, different spectra (another sensor, or other wavelengths in "
          "config.data.wavelengths / the file's header). Use data of the "
          "same sensor, fix the wavelengths, or start a new workdir.")


def bands_from_wavelengths(wavelengths_nm: Sequence[float],
                           names: Sequence[str] | None = None,
                           resolution_m: float | None = None
                           ) -> tuple[Band, ...]:
  """Bands of a cube from its centre wavelengths (nm), in channel order.

  Args:
    wavelengths_nm: one centre wavelength per channel, in nanometres.
    names: one name per channel; default 'B001', 'B002', ... (wider when
      there are 1000 bands or more), so that names sort in channel order.
    resolution_m: ground sampling distance of every band, if known.

  Raises:
    ConfigValueError: a wavelength is not a positive finite number, or the
      names are not one unique name per wavelength.
  """
  values = [float(w) for w in wavelengths_nm]
  bad = [(i + 1, w) for i, w in enumerate(values)
         if not (math.isfinite(w) and w > 0)]
  if bad:
    raise errors.ConfigValueError(
        f"Band wavelengths must be positive numbers in nm; band(s) "
        f"{bad[:5]} (1-based index, value) are not. Fix "
        "config.data.wavelengths or the file's wavelength list.")
  width = max(3, len(str(len(values))))
  if names is None:
    names = [f"B{i + 1:0{width}d}" for i in range(len(values))]
  names = [str(n) for n in names]
  if len(names) != len(values):
    raise errors.ConfigValueError(
        f"{len(names)} band names for {len(values)} wavelengths; give one "
        "name per band (config.data.band_names).")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise errors.ConfigValueError(
        f"Band names must be unique; {twice[:5]} occur more than once. Fix "
        "config.data.band_names.")
  return tuple(Band(name=n, wavelength_nm=w, resolution_m=resolution_m,
                    long_name=f"{w:.1f} nm") for n, w in zip(names, values))


# Centres of the display primaries: red, green, blue (nm).
DISPLAY_RGB_NM = (640.0, 550.0, 470.0)


def display_bands(bands: Sequence[Band], max_distance_nm: float = 60.0
                  ) -> tuple[str, ...]:
  """Names of the bands nearest to 640 / 550 / 470 nm, to render as R, G, B.

  For datasets that declare no `rgb_bands` (hyperspectral cubes). Returns
  () when the bands do not cover the visible range (a band further than
  `max_distance_nm` from a primary, or fewer than 3 distinct bands), so that
  figures fall back to their default instead of a misleading true colour.
  """
  if len(bands) < 3:
    return ()
  wl = [float(b.wavelength_nm) for b in bands]
  picked = []
  for target in DISPLAY_RGB_NM:
    dist = [abs(w - target) if math.isfinite(w) else math.inf for w in wl]
    i = min(range(len(dist)), key=dist.__getitem__)  # first of equals
    if dist[i] > max_distance_nm:
      return ()
    picked.append(bands[i].name)
  return tuple(picked) if len(set(picked)) == 3 else ()


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
