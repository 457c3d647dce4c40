"""Earth-observation corruptions of N-band images, at severities 1 to 5.

ImageNet-C / CIFAR-10-C (Hendrycks & Dietterich 2019) corrupt RGB photos
with what cameras and weather do to them. Satellite and airborne images fail
in other ways: detectors die, saturate or stripe, bands are misregistered,
haze and thin clouds add path radiance that falls with wavelength, the
radiometric calibration drifts. Each function here models one such effect
on an image of any number of bands:

  f(image (H, W, C) raw units, severity 1..5, *, bands, rng) -> float32 image

Magnitudes come from each band's training-split statistics (`Band.mean`,
`Band.std`, filled in by `build_dataset`) and its centre wavelength, so a
severity means the same thing for Sentinel-2 DNs, reflectances or a
hyperspectral cube. Every random draw is made the same way whatever the
severity (the same noise field, bands and shift direction, scaled), so
with one generator state severity s + 1 is severity s made worse and the
distance to the clean image never shrinks with the severity.
`corrupt(name, image, severity, bands, seed)` looks a corruption up by name;
severity 0 is the clean image.

The corruptions and their constants (s = severity, sigma_b = band std,
mu_b = band mean, lambda = centre wavelength):

  gaussian_noise     + N(0, (c_s sigma_b)^2) per pixel and band, c_s =
                     GAUSSIAN_NOISE_STD: signal-independent read noise.
  shot_noise         photon noise: Poisson(k_b x) / k_b, k_b set so that the
                     noise std at the band's mean level is c_s sigma_b
                     (SHOT_NOISE_STD); variance grows linearly with signal.
  striping           per-detector gain and offset (1 + 0.01 a_s g_j,
                     0.1 a_s sigma_b o_j) along every column (push-broom
                     arrays) or every row (whisk-broom scanners) of a
                     growing share of the bands (STRIPING_BANDS).
  dead_band          a growing share of the bands (DEAD_BANDS) read 0: a
                     failed detector or a fill value.
  saturated_band     a growing share of the bands (SATURATED_BANDS) clip at
                     mu_b + k_s sigma_b, k_s falling (SATURATION_LEVEL_STD).
  misregistration    a quarter of the bands (at least one) shifted by
                     MISREGISTRATION_PX[s] pixels in one of 8 directions,
                     edges repeated: band-to-band misregistration.
  haze               Koschmieder's model x t + A (1 - t), t = exp(-tau),
                     tau = tau_s (lambda / 550 nm)^-1.3 (Angstrom's
                     exponent of continental aerosol), airlight A = mu_b +
                     2 sigma_b: path radiance added, contrast lost, both
                     more at short wavelengths.
  thin_cloud         x (1 - o) + C o with a spatially smooth opacity o =
                     o_s m(x, y) (lambda / 550 nm)^-1 (clipped to [0, 1]) and
                     cloud brightness C = mu_b + 3 sigma_b: bright, weaker
                     at longer wavelengths.
  cloud_shadow       x (1 - d_s m(x, y)), m smooth in [0, 1]: spectrally
                     flat darkening of the direct illumination.
  defocus_blur       the optics' MTF as a Gaussian PSF of sigma
                     BLUR_SIGMA_PX[s] = 0.4 to 1.5 pixels (MTF at Nyquist
                     exp(-pi^2 sigma^2 / 2): 0.45 down to 1.5e-5), applied
                     in the Fourier domain to the image mirrored at its
                     edges, which conserves every band's mean exactly.
  gain_offset_drift  x (1 + 0.02 a_s g_b) + 0.1 a_s sigma_b o_b per band:
                     radiometric calibration drift.
  quantization       LEVELS[s] levels (64 down to 4: 6 to 2 bits) over mu_b
                     +- 3 sigma_b, values outside clipped: a coarser ADC.

Raw units are assumed proportional to radiance with 0 meaning no light
(DN, radiance, reflectance); shot noise treats values <= 0 as noise-free.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import numpy as np
import scipy.ndimage

from eo_jax import errors
from eo_jax.data.bands import Band

SEVERITIES = (1, 2, 3, 4, 5)

GAUSSIAN_NOISE_STD = (0.1, 0.2, 0.35, 0.55, 0.8)   # x band std
SHOT_NOISE_STD = (0.1, 0.2, 0.35, 0.55, 0.8)       # x band std, at the mean
STRIPING_BANDS = (0.2, 0.4, 0.6, 0.8, 1.0)          # share of the bands
STRIPING_SCALE = (1.0, 2.0, 3.0, 4.5, 6.0)          # a_s
STRIPING_GAIN = 0.01        # detector gain std per unit of a_s
STRIPING_OFFSET_STD = 0.1   # detector offset std per unit of a_s, x band std
DEAD_BANDS = (0.1, 0.2, 0.3, 0.4, 0.5)              # share of the bands
DEAD_VALUE = 0.0
SATURATED_BANDS = (0.2, 0.4, 0.6, 0.8, 1.0)         # share of the bands
SATURATION_LEVEL_STD = (2.5, 2.0, 1.5, 1.0, 0.5)    # clip at mean + k std
MISREGISTRATION_PX = (1, 2, 3, 4, 6)
MISREGISTERED_SHARE = 0.25  # of the bands, at least one
HAZE_TAU_550 = (0.1, 0.2, 0.35, 0.5, 0.75)          # aerosol optical depth
ANGSTROM_EXPONENT = 1.3
HAZE_AIRLIGHT_STD = 2.0     # airlight = mean + this x std
CLOUD_OPACITY = (0.2, 0.35, 0.5, 0.65, 0.8)         # peak opacity at 550 nm
CLOUD_SPECTRAL_EXPONENT = 1.0
CLOUD_BRIGHTNESS_STD = 3.0  # cloud top = mean + this x std
SHADOW_DARKENING = (0.2, 0.35, 0.5, 0.65, 0.8)      # at the shadow's core
BLUR_SIGMA_PX = (0.4, 0.6, 0.8, 1.1, 1.5)
DRIFT_SCALE = (1.0, 2.0, 3.0, 4.5, 6.0)             # a_s
DRIFT_GAIN = 0.02           # band gain std per unit of a_s
DRIFT_OFFSET_STD = 0.1      # band offset std per unit of a_s, x band std
QUANTIZATION_LEVELS = (64, 32, 16, 8, 4)
QUANTIZATION_RANGE_STD = 3.0
REFERENCE_NM = 550.0
# Smooth fields (clouds, shadows) vary over about a sixth of the image side.
FIELD_SCALE = 1 / 6
# Beyond this many photo-electrons a Poisson draw is replaced by its normal
# limit (numpy's Poisson sampler rejects rates near 2**63).
_MAX_POISSON_RATE = 1e12
# Directions of a misregistration shift: (rows, columns) per pixel of shift.
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0),
               (1, 1))


class Corruption(Protocol):
  def __call__(self, image: np.ndarray, severity: int, *,
               bands: Sequence[Band], rng: np.random.Generator) -> np.ndarray: ...


CORRUPTIONS: dict[str, Corruption] = {}


def _register(name: str) -> Callable[[Corruption], Corruption]:
  def add(fn: Corruption) -> Corruption:
    CORRUPTIONS[name] = fn
    return fn
  return add


# ------------------------------------------------------------------ Helpers
def check_severity(severity: int, allowed: Sequence[int] = SEVERITIES) -> int:
  """`severity` as an int, if it is one of `allowed`."""
  if isinstance(severity, (bool, np.bool_)) or not isinstance(
      severity, (int, np.integer)) or int(severity) not in allowed:
    raise errors.ConfigValueError(
        f"Corruption severity must be one of {list(allowed)}, got {severity!r}.")
  return int(severity)


def check_image(image: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
  """`image` as a float64 (H, W, C) array whose C matches `bands`."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != len(bands):
    raise errors.InputShapeError(
        f"Corruptions take one (H, W, C) image with C = {len(bands)} bands "
        f"({[b.name for b in bands]}); got shape {image.shape}.")
  return image.astype(np.float64)


def band_stats(bands: Sequence[Band]) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) per band, float64; an error when a band has none."""
  missing = [b.name for b in bands if b.mean is None or b.std is None]
  if missing:
    raise errors.ConfigValueError(
        f"Bands {missing} carry no training statistics, which set the "
        "corruptions' magnitudes. Use the bands of a built dataset "
        "(build_dataset(...).info.bands, or a restored run's info.bands), or "
        "Band.with_stats(mean, std).")
  return (np.array([b.mean for b in bands], np.float64),
          np.array([b.std for b in bands], np.float64))


def _wavelengths(bands: Sequence[Band]) -> np.ndarray:
  return np.array([float(b.wavelength_nm) for b in bands], np.float64)


def _prepare(image: np.ndarray, severity: int, bands: Sequence[Band]
             ) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
  x = check_image(image, bands)
  s = check_severity(severity)
  mean, std = band_stats(bands)
  return x, s, mean, std


def _count(share: float, num_bands: int) -> int:
  """How many of `num_bands` bands a `share` is: at least one."""
  return max(1, min(num_bands, math.ceil(share * num_bands - 1e-9)))


def _pick_bands(rng: np.random.Generator, num_bands: int, count: int) -> np.ndarray:
  # One permutation whatever the count: a higher severity's bands include
  # a lower one's.
  return np.sort(rng.permutation(num_bands)[:count])


def smooth_field(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """(H, W) spatially smooth random field in [0, 1] (min 0, max 1)."""
  noise = rng.standard_normal((height, width))
  sigma = max(height, width) * FIELD_SCALE
  field = scipy.ndimage.gaussian_filter(noise, sigma, mode="wrap")
  low, high = field.min(), field.max()
  if high - low <= 0:
    return np.ones((height, width))
  return (field - low) / (high - low)


def gaussian_mtf_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """(H, W, C) image blurred by a Gaussian PSF of `sigma` pixels.

  The image is mirrored at its edges into a (2H, 2W) period and multiplied
  in the Fourier domain by the Gaussian MTF exp(-2 pi^2 sigma^2 f^2). The
  MTF is 1 at f = 0 and the mirrored halves stay mirror images, so every
  band's mean is conserved exactly (up to rounding).
  """
  h, w = image.shape[:2]
  mirrored = np.concatenate([image, image[::-1]], axis=0)
  mirrored = np.concatenate([mirrored, mirrored[:, ::-1]], axis=1)
  fy = np.fft.fftfreq(2 * h)[:, None]
  fx = np.fft.rfftfreq(2 * w)[None, :]
  mtf = np.exp(-2.0 * np.pi ** 2 * sigma ** 2 * (fy ** 2 + fx ** 2))
  spectrum = np.fft.rfft2(mirrored, axes=(0, 1)) * mtf[..., None]
  return np.fft.irfft2(spectrum, s=(2 * h, 2 * w), axes=(0, 1))[:h, :w]


def shift_band(band: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """(H, W) band moved by dy rows and dx columns, edge pixels repeated:
  out[y, x] = band[y - dy, x - dx] wherever that lies inside the band."""
  h, w = band.shape
  rows = np.clip(np.arange(h) - dy, 0, h - 1)
  cols = np.clip(np.arange(w) - dx, 0, w - 1)
  return band[rows][:, cols]


def _out(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float32)


# -------------------------------------------------------------- Corruptions
@_register("gaussian_noise")
def gaussian_noise(image, severity, *, bands, rng):
  """Signal-independent noise of std GAUSSIAN_NOISE_STD[s] x band std."""
  x, s, _, std = _prepare(image, severity, bands)
  z = rng.standard_normal(x.shape)
  return _out(x + GAUSSIAN_NOISE_STD[s - 1] * std * z)


@_register("shot_noise")
def shot_noise(image, severity, *, bands, rng):
  """Poisson photon noise whose std is SHOT_NOISE_STD[s] x band std at the
  band's mean level (variance proportional to the signal)."""
  x, s, mean, std = _prepare(image, severity, bands)
  # The level where the noise std is c_s sigma_b: the mean, or the std for
  # bands centred on zero.
  level = np.where(mean > 0, mean, std)
  sigma = SHOT_NOISE_STD[s - 1] * std
  ok = (level > 0) & (sigma > 0)
  # Photo-electrons per raw unit: at `level`, Poisson std / k = sigma.
  k = np.where(ok, level / np.where(ok, sigma, 1.0) ** 2, 1.0)
  signal = np.maximum(x, 0.0) * ok
  rate = signal * k
  capped = np.minimum(rate, _MAX_POISSON_RATE)
  draws = rng.poisson(capped).astype(np.float64)
  noisy = draws / k
  big = rate > _MAX_POISSON_RATE
  if big.any():
    # Standardised, a Poisson draw this large is a normal one.
    normal = (draws - capped)[big] / np.sqrt(capped[big])
    noisy[big] = signal[big] + np.sqrt((signal / k)[big]) * normal
  return _out(x - signal + noisy)


@_register("striping")
def striping(image, severity, *, bands, rng):
  """Per-detector gain and offset along every column (or row) of some bands."""
  x, s, _, std = _prepare(image, severity, bands)
  h, w, c = x.shape
  chosen = _pick_bands(rng, c, _count(STRIPING_BANDS[s - 1], c))
  along_columns = bool(rng.random() < 0.5)
  lines = w if along_columns else h
  gains = rng.standard_normal((lines, c))
  offsets = rng.standard_normal((lines, c))
  a = STRIPING_SCALE[s - 1]
  gain = 1.0 + STRIPING_GAIN * a * gains
  offset = STRIPING_OFFSET_STD * a * std * offsets
  if along_columns:
    gain, offset = gain[None], offset[None]
  else:
    gain, offset = gain[:, None], offset[:, None]
  out = x.copy()
  out[..., chosen] = (x * gain + offset)[..., chosen]
  return _out(out)


@_register("dead_band")
def dead_band(image, severity, *, bands, rng):
  """DEAD_BANDS[s] of the bands (at least one) read DEAD_VALUE."""
  x, s, _, _ = _prepare(image, severity, bands)
  chosen = _pick_bands(rng, x.shape[-1], _count(DEAD_BANDS[s - 1], x.shape[-1]))
  x[..., chosen] = DEAD_VALUE
  return _out(x)


@_register("saturated_band")
def saturated_band(image, severity, *, bands, rng):
  """SATURATED_BANDS[s] of the bands clip at mean + k_s std."""
  x, s, mean, std = _prepare(image, severity, bands)
  chosen = _pick_bands(rng, x.shape[-1],
                       _count(SATURATED_BANDS[s - 1], x.shape[-1]))
  level = mean + SATURATION_LEVEL_STD[s - 1] * std
  x[..., chosen] = np.minimum(x, level)[..., chosen]
  return _out(x)


@_register("misregistration")
def misregistration(image, severity, *, bands, rng):
  """A quarter of the bands, each moved MISREGISTRATION_PX[s] pixels in its
  own one of 8 directions."""
  x, s, _, _ = _prepare(image, severity, bands)
  c = x.shape[-1]
  chosen = _pick_bands(rng, c, _count(MISREGISTERED_SHARE, c))
  directions = rng.integers(0, len(_DIRECTIONS), size=c)
  k = MISREGISTRATION_PX[s - 1]
  for b in chosen:
    dy, dx = _DIRECTIONS[directions[b]]
    x[..., b] = shift_band(x[..., b], k * dy, k * dx)
  return _out(x)


@_register("haze")
def haze(image, severity, *, bands, rng):
  """Aerosol haze: x t + A (1 - t), optical depth falling with wavelength."""
  del rng  # deterministic
  x, s, mean, std = _prepare(image, severity, bands)
  tau = HAZE_TAU_550[s - 1] * (_wavelengths(bands) / REFERENCE_NM) ** -ANGSTROM_EXPONENT
  t = np.exp(-tau)
  airlight = mean + HAZE_AIRLIGHT_STD * std
  return _out(x * t + airlight * (1.0 - t))


@_register("thin_cloud")
def thin_cloud(image, severity, *, bands, rng):
  """A smooth, bright, semi-transparent layer, thinner at long wavelengths."""
  x, s, mean, std = _prepare(image, severity, bands)
  field = smooth_field(rng, *x.shape[:2])
  spectral = (_wavelengths(bands) / REFERENCE_NM) ** -CLOUD_SPECTRAL_EXPONENT
  opacity = np.clip(CLOUD_OPACITY[s - 1] * field[..., None] * spectral, 0.0, 1.0)
  brightness = mean + CLOUD_BRIGHTNESS_STD * std
  return _out(x * (1.0 - opacity) + brightness * opacity)


@_register("cloud_shadow")
def cloud_shadow(image, severity, *, bands, rng):
  """A smooth multiplicative darkening, the same in every band."""
  x, s, _, _ = _prepare(image, severity, bands)
  field = smooth_field(rng, *x.shape[:2])
  return _out(x * (1.0 - SHADOW_DARKENING[s - 1] * field)[..., None])


@_register("defocus_blur")
def defocus_blur(image, severity, *, bands, rng):
  """A Gaussian PSF of BLUR_SIGMA_PX[s] pixels (mean-conserving)."""
  del rng  # deterministic
  x, s, _, _ = _prepare(image, severity, bands)
  return _out(gaussian_mtf_blur(x, BLUR_SIGMA_PX[s - 1]))


@_register("gain_offset_drift")
def gain_offset_drift(image, severity, *, bands, rng):
  """Per-band radiometric gain and offset errors (affine in each band)."""
  x, s, _, std = _prepare(image, severity, bands)
  c = x.shape[-1]
  gains, offsets = rng.standard_normal(c), rng.standard_normal(c)
  a = DRIFT_SCALE[s - 1]
  return _out(x * (1.0 + DRIFT_GAIN * a * gains) + DRIFT_OFFSET_STD * a * std * offsets)


@_register("quantization")
def quantization(image, severity, *, bands, rng):
  """QUANTIZATION_LEVELS[s] levels over mean +- 3 std, per band."""
  del rng  # deterministic
  x, s, mean, std = _prepare(image, severity, bands)
  levels = QUANTIZATION_LEVELS[s - 1]
  low = mean - QUANTIZATION_RANGE_STD * std
  step = 2 * QUANTIZATION_RANGE_STD * std / (levels - 1)
  flat = step <= 0  # a constant band has no range to quantise
  safe = np.where(flat, 1.0, step)
  q = np.clip(np.round((x - low) / safe), 0, levels - 1)
  return _out(np.where(flat, x, low + q * safe))


# ------------------------------------------------------------------ Look-up
def corrupt(name: str, image: np.ndarray, severity: int,
            bands: Sequence[Band], seed: int | Sequence[int] = 0) -> np.ndarray:
  """`image` under corruption `name` at `severity` (0: unchanged).

  Args:
    name: a key of `CORRUPTIONS`.
    image: (H, W, C) in the dataset's raw units.
    severity: 0 (clean) to 5.
    bands: the image's C bands, with training statistics.
    seed: seeds the generator (an int, or ints such as (seed, example)).

  Returns:
    (H, W, C) float32.

  Raises:
    ConfigError: an unknown name (the message lists the known ones).
    ConfigValueError, InputShapeError: a bad severity, image or band list.
  """
  if name not in CORRUPTIONS:
    raise errors.ConfigError(
        f"Unknown corruption {name!r}; the corruptions are {list(CORRUPTIONS)}.")
  if check_severity(severity, (0,) + SEVERITIES) == 0:
    return _out(check_image(image, bands))
  return CORRUPTIONS[name](image, severity, bands=bands,
                           rng=np.random.default_rng(seed))
