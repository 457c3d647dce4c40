"""Fitting a checkpoint's input filters to the data's bands, by wavelength.

A network's first layer (a ResNet's stem convolution, a ViT's patch
embedding) has one filter slice per input band. When the data has other
bands than the checkpoint was trained on (ImageNet RGB weights on 13
Sentinel-2 bands, a Sentinel-2 model on Landsat-8), `adapt_band_kernel`
builds the slices for the data's bands from the checkpoint's:

* Shared bands are copied. A data band and a checkpoint band are the same
  band when their centre wavelengths differ by at most `tolerance_nm`
  (default `SAME_BAND_NM` = 15 nm), whatever their names: the same band on
  two multispectral sensors (Landsat-8 OLI and Sentinel-2 MSI red, blue,
  NIR, SWIR) differs by up to 10.4 nm, while two bands of one multispectral
  sensor are at least 28 nm apart. Names decide only where a wavelength is
  unknown. Same names with wavelengths further apart are different bands
  (two sensors both numbering their bands B01, B02, ...). Each checkpoint
  band is shared with at most one data band, the nearest.
* Checkpoint bands that no data band takes are dropped.
* New data bands get a slice by `rule`:
  'nearest': the filter of the checkpoint band with the nearest centre
  wavelength (both need wavelengths);
  'mean': the mean of all the checkpoint's filters;
  'copy': zeros, so the model ignores the new bands until training moves
  them: its outputs are those of the checkpoint's model on the shared bands.

Scale ('nearest' and 'mean'): each checkpoint filter is divided among the
data bands that receive it; a filter that serves k data bands (a shared band
and the new bands nearest to it, or, for 'mean', its share of every new
band) is scaled by 1/k in each. The kernel's sum over bands, which is what
an image with the same normalised value in every band sees, is then
unchanged whenever every checkpoint band is used: such an image gives the
same first-layer output before and after adaptation, so activations keep
their scale. With no shared band, 'mean' gives every band the mean filter
times n_checkpoint / n_data, the factor timm's `adapt_input_conv` uses. The
filters of dropped bands are lost; 'copy' rescales nothing.

Everything here is numpy on one kernel with its band axis given, so it
serves any input kernel of any backbone (`Backbone.input_kernels`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.bands import Band
from eo_jax.errors import ConfigValueError, InputShapeError

BAND_RULES = ("nearest", "mean", "copy")

# See the module docstring: the same band on two multispectral sensors is at
# most ~10 nm apart; distinct bands of one such sensor at least 28 nm.
SAME_BAND_NM = 15.0


@dataclasses.dataclass(frozen=True)
class BandChoice:
  """How one data band's filter was made.

  Attributes:
    band: the data band's name.
    how: 'copied', 'nearest', 'mean' or 'zero'.
    source: the checkpoint band it came from ('copied', 'nearest').
    distance_nm: |wavelength difference| to `source`, where both are known.
    scale: the factor applied to the source filter(s) (1/k, module docstring).
  """
  band: str
  how: str
  source: str = ""
  distance_nm: float | None = None
  scale: float = 1.0

  def describe(self) -> str:
    """One log line, e.g. 'B05: nearest B04 at 39.5 nm, x0.5'."""
    if self.how == "zero":
      return f"{self.band}: zero filter (ignored until training moves it)"
    if self.how == "mean":
      text = f"{self.band}: mean of the checkpoint's filters"
    else:
      at = ("" if self.distance_nm is None
            else f" at {self.distance_nm:.1f} nm")
      verb = "copied from" if self.how == "copied" else "nearest"
      text = f"{self.band}: {verb} {self.source}{at}"
    if not math.isclose(self.scale, 1.0):
      text += f", x{self.scale:.3g}"
    return text


@dataclasses.dataclass(frozen=True)
class BandAdaptation:
  """What `adapt_band_kernel` did, band by band.

  Attributes:
    rule: the rule for new bands.
    choices: one per data band, in the data's order.
    dropped: checkpoint bands no data band takes.
  """
  rule: str
  choices: tuple[BandChoice, ...]
  dropped: tuple[str, ...]

  def lines(self) -> list[str]:
    """One line per data band, then one per dropped checkpoint band."""
    out = [c.describe() for c in self.choices]
    out += [f"{name}: dropped (no data band takes it)" for name in self.dropped]
    return out

  def summary(self) -> str:
    """Counts by kind, e.g. '12 nearest, 1 copied, 2 dropped'."""
    counts = {}
    for c in self.choices:
      counts[c.how] = counts.get(c.how, 0) + 1
    parts = [f"{n} {how}" for how, n in counts.items()]
    if self.dropped:
      parts.append(f"{len(self.dropped)} dropped")
    return ", ".join(parts)


def _known(band: Band) -> bool:
  w = band.wavelength_nm
  return w is not None and math.isfinite(float(w))


def shared_bands(source: Sequence[Band], target: Sequence[Band],
                 tolerance_nm: float = SAME_BAND_NM) -> dict[int, int]:
  """{data band index: checkpoint band index} of the bands both have.

  Pairs within `tolerance_nm` (or, where a wavelength is unknown, of the
  same name) are matched one to one, nearest pairs first.
  """
  pairs = []
  for t, tb in enumerate(target):
    for s, sb in enumerate(source):
      if _known(tb) and _known(sb):
        distance = abs(float(tb.wavelength_nm) - float(sb.wavelength_nm))
        if distance <= tolerance_nm:
          pairs.append((distance, tb.name != sb.name, t, s))
      elif tb.name == sb.name:
        pairs.append((0.0, False, t, s))
  matched, taken = {}, set()
  for _, _, t, s in sorted(pairs):
    if t not in matched and s not in taken:
      matched[t] = s
      taken.add(s)
  return matched


def _nearest(band: Band, source: Sequence[Band], rule: str) -> tuple[int, float]:
  if not _known(band):
    raise ConfigValueError(
        f"Band {band.name!r} has no centre wavelength, which band_rule="
        f"{rule!r} needs to pick the nearest checkpoint band. Give it one "
        "(in config.init_from.checkpoint_bands as NAME@NM for a checkpoint "
        "band, or in the dataset's band list), or set "
        "config.init_from.band_rule='mean' or 'copy'.")
  known = [(abs(float(b.wavelength_nm) - float(band.wavelength_nm)), i)
           for i, b in enumerate(source) if _known(b)]
  if not known:
    raise ConfigValueError(
        f"No checkpoint band has a centre wavelength "
        f"({[b.name for b in source]}), which band_rule={rule!r} needs for "
        f"band {band.name!r}. Give them as NAME@NM in "
        "config.init_from.checkpoint_bands, or set "
        "config.init_from.band_rule='mean' or 'copy'.")
  distance, i = min(known)
  return i, distance


def adapt_band_kernel(kernel: np.ndarray, source: Sequence[Band],
                      target: Sequence[Band], rule: str = "nearest", *,
                      axis: int = -2, tolerance_nm: float = SAME_BAND_NM
                      ) -> tuple[np.ndarray, BandAdaptation]:
  """A kernel over the checkpoint's bands remade over the data's bands.

  Args:
    kernel: the checkpoint's input kernel, e.g. (kh, kw, C, D) HWIO.
    source: the C bands the checkpoint was trained on, in kernel order.
    target: the data's bands, in channel order.
    rule: 'nearest', 'mean' or 'copy' for data bands the checkpoint lacks
      (module docstring).
    axis: the kernel's band axis.
    tolerance_nm: how far apart two centre wavelengths may be for one band.

  Returns:
    (kernel with len(target) bands on `axis`, same dtype; the report).

  Raises:
    ConfigValueError: an unknown rule, or 'nearest' without wavelengths.
    InputShapeError: the kernel's band axis does not hold len(source) bands.
  """
  if rule not in BAND_RULES:
    raise ConfigValueError(f"config.init_from.band_rule={rule!r}; use one of "
                           f"{BAND_RULES}.")
  kernel = np.asarray(kernel)
  axis = axis % kernel.ndim
  if kernel.shape[axis] != len(source):
    raise InputShapeError(
        f"The checkpoint's input kernel {kernel.shape} has {kernel.shape[axis]} "
        f"bands on axis {axis}, but the checkpoint's bands are "
        f"{len(source)}: {[b.name for b in source]}. Set "
        "config.init_from.checkpoint_bands (or --bands) to the bands it was "
        "trained on, in its channel order.")
  shared = shared_bands(source, target, tolerance_nm)
  # weights[t, s]: how much of checkpoint filter s data band t receives.
  weights = np.zeros((len(target), len(source)), np.float64)
  found: dict[int, tuple[str, int | None, float | None]] = {}
  for t, band in enumerate(target):
    if t in shared:
      s = shared[t]
      weights[t, s] = 1.0
      found[t] = ("copied", s, _distance(band, source[s]))
    elif rule == "nearest":
      s, distance = _nearest(band, source, rule)
      weights[t, s] = 1.0
      found[t] = ("nearest", s, distance)
    elif rule == "mean":
      weights[t, :] = 1.0 / len(source)
      found[t] = ("mean", None, None)
    else:
      found[t] = ("zero", None, None)
  used = weights.sum(axis=0)
  if rule != "copy":
    # Divide each checkpoint filter among the data bands it serves.
    weights = weights / np.where(used > 0, used, 1.0)[None, :]
  moved = np.moveaxis(kernel.astype(np.float64), axis, -1)
  adapted = np.moveaxis(moved @ weights.T, -1, axis).astype(kernel.dtype)
  choices = []
  for t, band in enumerate(target):
    how, s, distance = found[t]
    scale = (float(weights[t, s]) if s is not None
             else float(weights[t].sum()) if how == "mean" else 1.0)
    choices.append(BandChoice(band.name, how, source[s].name if s is not None
                              else "", distance, scale))
  dropped = tuple(b.name for b, n in zip(source, used) if n == 0)
  return adapted, BandAdaptation(rule, tuple(choices), dropped)


def _distance(a: Band, b: Band) -> float | None:
  if _known(a) and _known(b):
    return abs(float(a.wavelength_nm) - float(b.wavelength_nm))
  return None


def bands_from_spec(spec: str) -> tuple[Band, ...]:
  """The bands named by `config.init_from.checkpoint_bands` / `--bands`.

  Args:
    spec: a sensor of `eo_jax.data.bands.SENSORS` ('rgb', 'sentinel2',
      'landsat8', 'orbita_ohs'), or comma-separated band names
      ('B04,B03,B02'), each optionally with its centre wavelength in nm
      ('pan@600'). Names are looked up in the first sensor that has all of
      them, else one by one in any sensor; a name found nowhere and given
      without a wavelength has none (NaN).

  Raises:
    ConfigValueError: an empty spec, a bad wavelength or a name twice.
  """
  text = str(spec).strip()
  if not text:
    raise ConfigValueError(
        "config.init_from.checkpoint_bands is empty; name the bands the "
        "checkpoint was trained on: a sensor "
        f"{sorted(bands_lib.SENSORS)} or band names such as 'B04,B03,B02'.")
  if text.lower() in bands_lib.SENSORS:
    return tuple(bands_lib.SENSORS[text.lower()])
  items = [item.strip() for item in text.split(",") if item.strip()]
  named: list[tuple[str, float | None]] = []
  for item in items:
    name, _, wavelength = item.partition("@")
    value = None
    if wavelength:
      try:
        value = float(wavelength.strip().removesuffix("nm"))
      except ValueError:
        value = -1.0
      if not (math.isfinite(value) and value > 0):
        raise ConfigValueError(
            f"checkpoint band {item!r}: the wavelength after '@' must be a "
            "positive number of nm, e.g. 'pan@600'.")
    named.append((name.strip(), value))
  names = [n for n, _ in named]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ConfigValueError(f"config.init_from.checkpoint_bands names {twice} "
                           "more than once.")
  plain = {n for n, w in named if w is None}
  sensor = next((bands for bands in bands_lib.SENSORS.values()
                 if plain <= set(bands_lib.names(bands))), None)
  out = []
  for name, wavelength in named:
    if wavelength is not None:
      out.append(Band(name=name, wavelength_nm=wavelength))
      continue
    if sensor is not None:
      out.append(bands_lib.by_name(sensor, name))
      continue
    known = [b for bands in bands_lib.SENSORS.values() for b in bands
             if b.name == name]
    out.append(known[0] if known else Band(name=name,
                                           wavelength_nm=float("nan")))
  return tuple(out)
