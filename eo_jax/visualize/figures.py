"""What the plot modules share: saving a figure, and RGB composites.

Every `plot_*` function in `eo_jax.visualize` builds and returns a
`matplotlib.figure.Figure`, so a notebook can show it inline; the trainer
writes it to disk with `save_figure`. Figures are made with `Figure`, never
pyplot, so no global figure state or display backend is involved (safe in
threads and on headless machines).

`rgb_composite` turns any multispectral or hyperspectral image into a
displayable picture by picking three bands (or one, for grey) and stretching
each between a low and a high percentile: EO reflectances are mostly dark, so
a min-max stretch would spend the range on a few bright pixels.
"""
from __future__ import annotations

import operator
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from eo_jax.data import bands as bands_lib

# Value of a band that does not vary over an image. Mid-grey rather than
# black: black is what missing (NaN) pixels get, and a flat band is not
# missing, it just has no contrast to stretch.
CONSTANT_BAND_VALUE = 0.5


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
  """Writes `fig` as a PNG at `path`, creating parent folders.

  Args:
    fig: a figure, e.g. one returned by a `plot_*` function.
    path: output file.
    dpi: pixels per inch; a figure of w x h inches becomes w*dpi x h*dpi
      pixels.

  Returns:
    `path` as a string.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path


def _channel_indices(rgb: Sequence[int | str] | str,
                     bands: Sequence[bands_lib.Band] | None,
                     num_channels: int) -> list[int]:
  """Resolves `rgb` (indices or band names) to 1 or 3 valid channel indices."""
  # A lone name is a string, itself a sequence: without this, "B04" would be
  # read as the three names "B", "0" and "4".
  wanted = [rgb] if isinstance(rgb, str) else list(rgb)
  if len(wanted) not in (1, 3):
    raise ValueError(f"rgb must give 3 channels (red, green, blue) or 1 "
                     f"(grey); got {len(wanted)}: {wanted}.")
  is_name = [isinstance(w, str) for w in wanted]
  if any(is_name):
    if not all(is_name):
      raise ValueError(f"rgb mixes band names and channel indices: {wanted}; "
                       "give one kind.")
    if bands is None:
      raise ValueError(f"rgb {wanted} names bands; pass the image's band list "
                       "as `bands` (e.g. DatasetInfo.bands), or give channel "
                       "indices.")
    if len(bands) != num_channels:
      raise ValueError(f"bands lists {len(bands)} bands but the image has "
                       f"{num_channels} channels.")
    return bands_lib.indices(bands, wanted)
  try:
    # operator.index, not int: a float such as 2.7 is a mistake, not channel 2.
    indices = [operator.index(w) for w in wanted]
  except TypeError:
    raise TypeError(f"rgb must hold channel indices (integers) or band names; "
                    f"got {wanted}.") from None
  if any(not -num_channels <= i < num_channels for i in indices):
    raise IndexError(f"rgb channels {indices} are out of range for an image "
                     f"with {num_channels} channels.")
  return indices


def rgb_composite(image: np.ndarray, rgb: Sequence[int | str] | str = (0, 1, 2),
                  bands: Sequence[bands_lib.Band] | None = None,
                  percentiles: tuple[float, float] = (2.0, 98.0)
                  ) -> np.ndarray:
  """A displayable RGB picture in [0, 1] from chosen bands of an image.

  Each chosen band of each image is stretched on its own, linearly, so that
  its low and high percentile over the image's pixels map to 0 and 1, then
  clipped; this suits reflectances, digital numbers and normalised inputs
  alike. A band that does not vary over an image becomes a flat
  `CONSTANT_BAND_VALUE` (0.5, mid-grey). Missing pixels (NaN or infinite) are
  left out of the percentiles and drawn 0 (black).

  Args:
    image: (H, W, C) or (N, H, W, C), any units.
    rgb: channels shown as red, green, blue: three channel indices, or three
      band names (e.g. ('B04', 'B03', 'B02'); then `bands` is needed). One
      index or name gives a grey picture.
    bands: the image's C bands, to resolve names (e.g. `DatasetInfo.bands`).
    percentiles: (low, high), 0 <= low < high <= 100.

  Returns:
    float32 of shape (H, W, 3) or (N, H, W, 3), values in [0, 1].

  Raises:
    ValueError: wrong rank of `image`, not 1 or 3 channels, names without
      `bands`, or bad percentiles.
    IndexError: a channel index outside the image.
  """
  image = np.asarray(image)
  if image.ndim not in (3, 4):
    raise ValueError(f"image must be (H, W, C) or (N, H, W, C); got shape "
                     f"{image.shape}.")
  indices = _channel_indices(rgb, bands, image.shape[-1])
  if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
    raise ValueError("percentiles must be (low, high) with 0 <= low < high "
                     f"<= 100; got {percentiles}.")

  # Pick the bands before converting: a hyperspectral batch in float64 would
  # be ten times the memory of the three bands drawn.
  chosen = np.asarray(image[..., indices], np.float64)
  # Infinities are as unusable as NaNs: both are "missing" from here on.
  chosen = np.where(np.isfinite(chosen), chosen, np.nan)
  missing = np.isnan(chosen)
  # A band with no valid pixel in an image has no percentiles (numpy would
  # warn); filled with zeros it is flat, and all its pixels are black below.
  empty = missing.all(axis=(-3, -2), keepdims=True)
  low, high = np.nanpercentile(np.where(empty, 0.0, chosen), percentiles,
                               axis=(-3, -2), keepdims=True)
  span = high - low
  varies = span > 0  # False for NaN too
  # `where` keeps flat bands out of the division: no 0/0, no warning.
  stretched = np.divide(chosen - low, span,
                        out=np.full(chosen.shape, CONSTANT_BAND_VALUE),
                        where=varies)
  out = np.where(missing, 0.0, np.clip(stretched, 0.0, 1.0))
  if len(indices) == 1:
    out = np.repeat(out, 3, axis=-1)
  return out.astype(np.float32)
