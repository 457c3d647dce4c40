"""Earth-observation corruptions (eo_jax/data/corruptions.py): each one's
defining property, checked against hand-computed values or an independent
implementation, and what all of them share (shape, dtype, determinism,
severity ordering, errors)."""
import math

import numpy as np
import pytest
import scipy.ndimage

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import corruptions as C

NAMES = tuple(C.CORRUPTIONS)
# Blue, green, red, NIR, SWIR 1, SWIR 2: wavelength order = channel order.
BAND_NAMES = ("B02", "B03", "B04", "B08", "B11", "B12")
MEANS = np.array([1000.0, 1100.0, 1200.0, 2500.0, 1800.0, 1300.0])
STDS = np.array([150.0, 180.0, 220.0, 400.0, 300.0, 250.0])
BANDS = tuple(b.with_stats(m, s) for b, m, s in
              zip(bands_lib.select(bands_lib.SENTINEL2, BAND_NAMES), MEANS, STDS))
DETERMINISTIC = ("haze", "defocus_blur", "quantization")
# The documented magnitudes, written out rather than read from the module.
NOISE_STD = {1: 0.1, 2: 0.2, 5: 0.8}                 # x band std
LEVELS = {1: 64, 3: 16, 5: 4}                        # 6, 4 and 2 bits
SHIFT_PX = {1: 1, 2: 2, 5: 6}


def scene(size=32, seed=0, smooth=3.0):
  """A spatially correlated scene with the bands' statistics (float32)."""
  rng = np.random.default_rng(seed)
  z = scipy.ndimage.gaussian_filter(rng.standard_normal((size, size, len(BANDS))),
                                    (smooth, smooth, 0), mode="wrap")
  z = (z - z.mean((0, 1))) / z.std((0, 1))
  return (MEANS + STDS * z).astype(np.float32)


def constant(size=32, values=MEANS):
  return np.broadcast_to(np.asarray(values, np.float32),
                         (size, size, len(BANDS))).copy()


def changed_bands(out, image):
  return [b for b in range(image.shape[-1]) if not np.array_equal(out[..., b], image[..., b])]


def high_frequency_energy(image):
  """Squared differences of horizontal and vertical neighbours, per band."""
  return ((np.diff(image, axis=0) ** 2).sum((0, 1))
          + (np.diff(image, axis=1) ** 2).sum((0, 1)))


# ------------------------------------------------------------ All of them
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_input_untouched_and_seeded(name):
  image = scene()
  before = image.copy()
  out = C.corrupt(name, image, 3, BANDS, seed=7)
  assert out.shape == image.shape and out.dtype == np.float32
  np.testing.assert_array_equal(image, before)
  np.testing.assert_array_equal(C.corrupt(name, image, 3, BANDS, seed=7), out)
  other = C.corrupt(name, image, 3, BANDS, seed=(7, 1))
  assert np.array_equal(other, out) == (name in DETERMINISTIC)
  np.testing.assert_array_equal(C.corrupt(name, image, 0, BANDS, seed=7), image)
  # A float64 or integer image gives the same float32 result.
  np.testing.assert_array_equal(
      C.corrupt(name, image.astype(np.float64), 3, BANDS, seed=7), out)


@pytest.mark.parametrize("name", NAMES)
def test_distance_to_the_clean_image_grows_with_the_severity(name):
  image = scene()
  distance = [float(np.sqrt(np.mean((C.corrupt(name, image, s, BANDS, seed=3)
                                     .astype(np.float64) - image) ** 2)))
              for s in range(6)]
  assert distance[0] == 0.0
  assert all(b >= a for a, b in zip(distance, distance[1:])), distance
  assert 0 < distance[1] < distance[5], distance


def test_look_up_errors_name_the_fix():
  with pytest.raises(errors.ConfigError, match="haze.*striping|striping.*haze"):
    C.corrupt("fog", scene(), 1, BANDS)
  with pytest.raises(errors.ConfigValueError, match="severity"):
    C.corrupt("haze", scene(), 6, BANDS)
  with pytest.raises(errors.ConfigValueError, match="severity"):
    C.haze(scene(), 0, bands=BANDS, rng=np.random.default_rng(0))
  with pytest.raises(errors.InputShapeError, match="6 bands"):
    C.corrupt("haze", scene()[..., :4], 1, BANDS)
  with pytest.raises(errors.ConfigValueError, match="with_stats"):
    C.corrupt("haze", scene(), 1, bands_lib.select(bands_lib.SENTINEL2, BAND_NAMES))
  assert set(NAMES) >= {"gaussian_noise", "shot_noise", "striping", "dead_band",
                        "saturated_band", "misregistration", "haze", "thin_cloud",
                        "cloud_shadow", "defocus_blur", "gain_offset_drift",
                        "quantization"}


# ------------------------------------------------------------------ Noise
@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_noise_has_the_target_std_in_every_band(severity):
  image = scene(size=96)
  noise = C.corrupt("gaussian_noise", image, severity, BANDS, seed=1) - image.astype(np.float64)
  target = NOISE_STD[severity] * STDS
  np.testing.assert_allclose(noise.std((0, 1)), target, rtol=0.03)
  np.testing.assert_allclose(noise.mean((0, 1)), 0.0, atol=0.03 * target.max())


def test_shot_noise_variance_grows_linearly_with_the_signal():
  # Left half at each band's mean, right half at 4x: Poisson noise std
  # doubles, and is the target c_s std at the mean.
  image = constant(size=96)
  image[:, 48:] *= 4
  image[:3, :3] = -5.0  # no light: no photon noise
  out = C.corrupt("shot_noise", image, 2, BANDS, seed=2).astype(np.float64)
  target = NOISE_STD[2] * STDS
  left = out[3:, :48] - image[3:, :48]
  right = out[:, 48:] - image[:, 48:]
  np.testing.assert_allclose(left.std((0, 1)), target, rtol=0.04)
  np.testing.assert_allclose(right.std((0, 1)), 2 * target, rtol=0.04)
  # Unbiased: the mean error is within 4 standard errors of 0.
  np.testing.assert_allclose(right.mean((0, 1)) / (2 * target / math.sqrt(right[..., 0].size)),
                             0.0, atol=4)
  np.testing.assert_array_equal(out[:3, :3], -5.0)


# ------------------------------------------------------- Detector defects
@pytest.mark.parametrize("severity", [1, 4])
def test_striping_is_one_gain_and_offset_per_detector_line(severity):
  image = scene()
  out = C.corrupt("striping", image, severity, BANDS, seed=4).astype(np.float64)
  # Same seed, same detectors: the response to 0 is the offset, that to a
  # constant D the offset plus D times the gain.
  offset = C.corrupt("striping", constant(values=0.0), severity, BANDS, seed=4)
  big = 1e4
  gain = (C.corrupt("striping", constant(values=big), severity, BANDS, seed=4)
          - offset.astype(np.float64)) / big
  chosen = changed_bands(out, image)
  assert len(chosen) == math.ceil(C.STRIPING_BANDS[severity - 1] * len(BANDS))
  for b in chosen:
    np.testing.assert_allclose(out[..., b], gain[..., b] * image[..., b] + offset[..., b],
                               rtol=1e-6, atol=1e-3)
    g = gain[..., b]
    # Lines along one axis share their detector: constant along it, not across.
    axis = 0 if np.ptp(g, axis=0).max() < 1e-2 else 1
    assert np.ptp(g, axis=axis).max() < 1e-6 and np.ptp(offset[..., b], axis=axis).max() < 1e-3
    assert np.ptp(g) > 1e-3 and np.ptp(offset[..., b]) > 1.0


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_dead_bands_read_zero_and_the_others_are_untouched(severity):
  image = scene()
  out = C.corrupt("dead_band", image, severity, BANDS, seed=5)
  chosen = changed_bands(out, image)
  assert len(chosen) == math.ceil(C.DEAD_BANDS[severity - 1] * len(BANDS))
  assert all((out[..., b] == 0).all() for b in chosen)
  # Nested: the bands dead at severity 1 are dead at 5 too.
  first = changed_bands(C.corrupt("dead_band", image, 1, BANDS, seed=5), image)
  assert set(first) <= set(chosen)


@pytest.mark.parametrize("severity", [1, 5])
def test_saturated_bands_clip_at_the_level_and_nothing_else_changes(severity):
  image = scene()
  image[0, :2] = MEANS + 4 * STDS  # bright targets in every band
  out = C.corrupt("saturated_band", image, severity, BANDS, seed=6)
  level = MEANS + C.SATURATION_LEVEL_STD[severity - 1] * STDS
  chosen = changed_bands(out, image)
  assert len(chosen) == math.ceil(C.SATURATED_BANDS[severity - 1] * len(BANDS))
  for b in chosen:
    expected = np.where(image[..., b] > level[b], level[b], image[..., b])
    np.testing.assert_allclose(out[..., b], expected, rtol=1e-7)
    assert (image[..., b] > level[b]).any()


def _shifted(band, dy, dx):
  """Independent shift: pad by repeating edges, then cut the window."""
  h, w = band.shape
  p = max(abs(dy), abs(dx))
  padded = np.pad(band, p, mode="edge")
  return padded[p - dy:p - dy + h, p - dx:p - dx + w]


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_misregistration_shifts_only_the_chosen_bands_exactly(severity):
  image = scene()
  out = C.corrupt("misregistration", image, severity, BANDS, seed=8)
  chosen = changed_bands(out, image)
  assert len(chosen) == math.ceil(C.MISREGISTERED_SHARE * len(BANDS))
  k = SHIFT_PX[severity]
  for b in chosen:
    matches = [(dy, dx) for dy in (-k, 0, k) for dx in (-k, 0, k) if (dy, dx) != (0, 0)
               and np.array_equal(out[..., b], _shifted(image[..., b], dy, dx))]
    assert len(matches) == 1, (b, matches)
  # The same bands at every severity.
  assert chosen == changed_bands(C.corrupt("misregistration", image, 1, BANDS, seed=8), image)


# ------------------------------------------------------------- Atmosphere
def test_haze_adds_more_path_radiance_at_shorter_wavelengths():
  severity = 4
  image = scene()
  out = C.corrupt("haze", image, severity, BANDS).astype(np.float64)
  wavelengths = np.array([b.wavelength_nm for b in BANDS])
  t = np.exp(-0.5 * (wavelengths / 550.0) ** -1.3)  # tau_550 = 0.5 at severity 4
  airlight = MEANS + 2.0 * STDS
  np.testing.assert_allclose(out, image * t + airlight * (1 - t), rtol=1e-6)
  # At each band's mean level, the added radiance in units of the band's std
  # is 2 (1 - t): falling with wavelength, as the optical depth does.
  added = (C.corrupt("haze", constant(), severity, BANDS) - constant())[0, 0] / STDS
  np.testing.assert_allclose(added, 2.0 * (1 - t), rtol=1e-4)
  assert np.all(np.diff(added) < 0)
  # At 550 nm the transmittance is exp(-tau_550).
  green = bands_lib.Band("g", 550.0, mean=100.0, std=10.0)
  hazy = C.corrupt("haze", np.zeros((1, 1, 1)), severity, (green,))
  np.testing.assert_allclose(hazy, 120.0 * (1 - math.exp(-0.5)), rtol=1e-6)


def test_thin_cloud_is_smooth_bright_and_thinner_at_long_wavelengths():
  image = scene(size=64)
  out = C.corrupt("thin_cloud", image, 4, BANDS, seed=9).astype(np.float64)
  brightness = MEANS + 3.0 * STDS
  below = image < brightness
  layer = out - image
  assert (layer[below] >= -1e-3 * brightness.max()).all()
  # Opacity per pixel and band, read back from the mixture.
  opacity = (out - image) / (brightness - image)
  assert opacity.min() >= -1e-6 and opacity.max() <= 1 + 1e-6
  peak = opacity.max((0, 1))
  assert np.all(np.diff(peak) < 0), peak
  wavelengths = np.array([b.wavelength_nm for b in BANDS])
  # Peak opacity 0.65 at 550 nm (severity 4), falling as 1 / wavelength.
  np.testing.assert_allclose(peak, np.minimum(1.0, 0.65 * 550.0 / wavelengths), rtol=1e-4)
  # Smooth: neighbours differ far less than in white noise of the same spread.
  white = np.random.default_rng(0).permutation(opacity[..., 0].reshape(-1)).reshape(64, 64)
  assert high_frequency_energy(opacity[..., :1]) < 0.05 * high_frequency_energy(white[..., None])


def test_cloud_shadow_is_one_smooth_darkening_factor_in_every_band():
  severity = 3
  image = scene(size=64)
  out = C.corrupt("cloud_shadow", image, severity, BANDS, seed=10).astype(np.float64)
  factor = out / image
  np.testing.assert_allclose(factor, factor[..., :1].repeat(len(BANDS), -1), rtol=1e-5)
  darkening = 0.5
  np.testing.assert_allclose([factor.min(), factor.max()], [1 - darkening, 1.0], atol=1e-5)
  white = np.random.default_rng(0).permutation(factor[..., 0].reshape(-1)).reshape(64, 64)
  assert high_frequency_energy(factor[..., :1]) < 0.05 * high_frequency_energy(white[..., None])


# ------------------------------------------------------ Optics, radiometry
def test_blur_conserves_band_means_and_removes_high_frequencies():
  image = scene(smooth=0.7)
  energy = [high_frequency_energy(C.corrupt("defocus_blur", image, s, BANDS))
            for s in range(6)]
  for s in range(1, 6):
    out = C.corrupt("defocus_blur", image, s, BANDS).astype(np.float64)
    np.testing.assert_allclose(out.mean((0, 1)), image.astype(np.float64).mean((0, 1)),
                               rtol=1e-6)
    assert np.all(energy[s] < energy[s - 1])
  # At the widest PSF, the spatial Gaussian filter (mirrored edges) agrees.
  widest = C.BLUR_SIGMA_PX[-1]
  reference = scipy.ndimage.gaussian_filter(image.astype(np.float64),
                                            (widest, widest, 0), mode="reflect",
                                            truncate=10)
  np.testing.assert_allclose(C.corrupt("defocus_blur", image, 5, BANDS), reference,
                             rtol=0, atol=1e-4 * STDS.max())


def test_gain_offset_drift_is_affine_per_band():
  image = scene()
  out = C.corrupt("gain_offset_drift", image, 5, BANDS, seed=11).astype(np.float64)
  gains, offsets = [], []
  for b in range(len(BANDS)):
    design = np.stack([image[..., b].reshape(-1), np.ones(image[..., b].size)], -1)
    (g, o), *_ = np.linalg.lstsq(design.astype(np.float64), out[..., b].reshape(-1),
                                 rcond=None)
    np.testing.assert_allclose(out[..., b], g * image[..., b] + o, rtol=1e-6)
    gains.append(g)
    offsets.append(o)
  assert len(set(np.round(gains, 6))) == len(BANDS)  # each band its own drift
  assert np.max(np.abs(np.array(gains) - 1)) > 0.01


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_quantization_keeps_at_most_n_levels_within_half_a_step(severity):
  image = scene()
  out = C.corrupt("quantization", image, severity, BANDS)
  levels = LEVELS[severity]
  low, high = MEANS - 3 * STDS, MEANS + 3 * STDS
  step = (high - low) / (levels - 1)
  for b in range(len(BANDS)):
    assert len(np.unique(out[..., b])) <= levels
    inside = (image[..., b] >= low[b]) & (image[..., b] <= high[b])
    assert np.abs(out[..., b] - image[..., b])[inside].max() <= step[b] / 2 * (1 + 1e-5)
    # Every value is on the grid low + k step.
    k = (out[..., b] - low[b]) / step[b]
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
