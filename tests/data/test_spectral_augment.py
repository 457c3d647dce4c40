"""Spectral augmentations: identities, per-band statistics, blur, solarise."""
import math

import numpy as np
import pytest

from eo_jax.data import spectral_augment as sa

BAND_COUNTS = (4, 13, 32)


def _image(bands, size=24, seed=0):
  """A normalised-looking image: smooth structure plus noise, band offsets."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  base = np.sin(6 * x)[..., None] * np.linspace(0.5, 1.5, bands)
  noise = rng.normal(0, 0.7, (size, size, bands))
  return (base + noise + np.linspace(-1, 1, bands)).astype(np.float32)


def _affine_fit(before, after):
  """Per band, (slope, intercept, max residual) of after = slope*before + b."""
  fits = []
  for c in range(before.shape[-1]):
    a = np.stack([before[..., c].ravel(), np.ones(before[..., c].size)], 1)
    coef, *_ = np.linalg.lstsq(a.astype(np.float64),
                               after[..., c].ravel().astype(np.float64),
                               rcond=None)
    resid = np.abs(a @ coef - after[..., c].ravel()).max()
    fits.append((coef[0], coef[1], resid))
  return np.array(fits)


# Strength s; probabilities are 2s, so s = 0.5 always applies.
ALL = [
    lambda im, r, s: sa.brightness_contrast(im, r, s, s),
    lambda im, r, s: sa.band_scaling(im, r, s),
    lambda im, r, s: sa.gaussian_blur(im, r, 2 * s, (0.5, 2.0)),
    lambda im, r, s: sa.solarize(im, r, 2 * s, 0.0),
    lambda im, r, s: sa.SpectralAugment(
        jitter_prob=2 * s, brightness=s, contrast=s, band_scaling=s,
        blur_prob=2 * s, solarize_prob=2 * s)(im, r),
]


@pytest.mark.parametrize("bands", BAND_COUNTS)
@pytest.mark.parametrize("fn", range(len(ALL)))
def test_shape_dtype_kept_and_zero_strength_is_identity(bands, fn):
  image = _image(bands)
  out = ALL[fn](image, np.random.default_rng(1), 0.5)
  assert out.shape == image.shape and out.dtype == np.float32
  assert not np.array_equal(out, image)
  same = ALL[fn](image, np.random.default_rng(1), 0.0)
  np.testing.assert_array_equal(same, image)


@pytest.mark.parametrize("bands", BAND_COUNTS)
def test_brightness_contrast_is_a_per_band_affine_map_within_the_ranges(bands):
  image = _image(bands)
  out = sa.brightness_contrast(image, np.random.default_rng(3), 0.3, 0.2)
  fits = _affine_fit(image, out)
  slope = fits[:, 0]
  assert fits[:, 2].max() < 1e-4  # affine per band, no mixing of bands
  assert np.all((slope >= 0.8 - 1e-5) & (slope <= 1.2 + 1e-5))
  shift = out.mean((0, 1)) - image.mean((0, 1))
  assert np.all(np.abs(shift) <= 0.3 + 1e-5)
  # Per band, not one jitter for all bands.
  assert np.ptp(slope) > 0.01 and np.ptp(shift) > 0.01
  # Brightness alone keeps each band's spread; contrast alone its mean.
  only_b = sa.brightness_contrast(image, np.random.default_rng(4), 0.5, 0.0)
  np.testing.assert_allclose(only_b.std((0, 1)), image.std((0, 1)), rtol=1e-4)
  only_c = sa.brightness_contrast(image, np.random.default_rng(4), 0.0, 0.5)
  np.testing.assert_allclose(only_c.mean((0, 1)), image.mean((0, 1)),
                             atol=1e-5)


@pytest.mark.parametrize("bands", BAND_COUNTS)
def test_band_scaling_scales_each_band_std_and_mean_by_its_factor(bands):
  image = _image(bands)
  strength = 0.5
  out = sa.band_scaling(image, np.random.default_rng(5), strength)
  factor = out.std((0, 1)) / image.std((0, 1))
  # A pure gain: the mean moves by the same factor, and no offset appears.
  np.testing.assert_allclose(out.mean((0, 1)), factor * image.mean((0, 1)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, image * factor, rtol=1e-5, atol=1e-6)
  assert np.all(factor >= 1 / (1 + strength) - 1e-5)
  assert np.all(factor <= 1 + strength + 1e-5)
  assert len(np.unique(np.round(factor, 5))) == bands


def test_band_scaling_factors_are_log_symmetric():
  # Many one-pixel "images": log factors should average ~0 over the range.
  rng = np.random.default_rng(0)
  ones = np.ones((1, 1, 4000), np.float32)
  logs = np.log(sa.band_scaling(ones, rng, 1.0).ravel())
  assert abs(logs.mean()) < 0.03
  assert logs.min() >= -math.log(2) - 1e-6 and logs.max() <= math.log(2) + 1e-6
  assert logs.min() < -0.6 and logs.max() > 0.6


@pytest.mark.parametrize("bands", BAND_COUNTS)
def test_blur_keeps_band_means_smooths_and_never_mixes_bands(bands):
  image = _image(bands)
  out = sa.gaussian_blur(image, np.random.default_rng(0), 1.0, (1.5, 2.0))
  # Mirrored borders: each band's mean is preserved exactly.
  np.testing.assert_allclose(out.mean((0, 1)), image.mean((0, 1)), atol=1e-5)
  # Smoother: neighbouring-pixel differences shrink in every band.
  rough = lambda a: np.abs(np.diff(a, axis=1)).mean((0, 1))
  assert np.all(rough(out) < 0.6 * rough(image))
  # Bands are blurred independently: a single non-zero band stays alone.
  lone = np.zeros_like(image)
  lone[..., 1] = image[..., 1]
  blurred = sa.gaussian_blur(lone, np.random.default_rng(0), 1.0, (1.5, 2.0))
  assert np.all(blurred[..., [0] + list(range(2, bands))] == 0)
  np.testing.assert_allclose(blurred[..., 1], out[..., 1], atol=1e-6)


def test_blur_of_a_point_is_a_gaussian_with_sigma_in_range():
  image = np.zeros((41, 41, 2), np.float32)
  image[20, 20] = 1.0
  for seed in range(5):
    out = sa.gaussian_blur(image, np.random.default_rng(seed), 1.0, (1.0, 3.0))
    profile = out[20, :, 0] / out[20, :, 0].sum()
    x = np.arange(41) - 20
    sigma = math.sqrt((profile * x ** 2).sum())
    assert 1.0 - 0.05 <= sigma <= 3.0 + 0.05


def test_blur_and_solarize_probabilities():
  image = _image(4, size=8)
  changed = lambda f: np.mean([not np.array_equal(f(np.random.default_rng(s)),
                                                  image) for s in range(400)])
  blur = changed(lambda r: sa.gaussian_blur(image, r, 0.25, (0.5, 1.0)))
  sol = changed(lambda r: sa.solarize(image, r, 0.25, 0.0))
  # Binomial(400, 0.25): std ~0.022.
  assert 0.17 < blur < 0.33 and 0.17 < sol < 0.33


@pytest.mark.parametrize("bands", BAND_COUNTS)
def test_solarize_negates_above_threshold_only(bands):
  image = _image(bands)
  out = sa.solarize(image, np.random.default_rng(0), 1.0, 0.5)
  above = image > 0.5
  np.testing.assert_array_equal(out[above], -image[above])
  np.testing.assert_array_equal(out[~above], image[~above])
  # Like 255 - x above 128: the bright values end up below the threshold.
  assert np.all(out[above] < 0.5)
  same = sa.solarize(image, np.random.default_rng(0), 1.0, np.inf)
  np.testing.assert_array_equal(same, image)


def test_random_flips_are_flips_of_both_axes():
  image = _image(3, size=6)
  seen = set()
  for seed in range(40):
    out = sa.random_flips(image, np.random.default_rng(seed))
    matches = [(lr, ud) for lr in (0, 1) for ud in (0, 1)
               if np.array_equal(out, image[::-1 if ud else 1,
                                            ::-1 if lr else 1])]
    assert len(matches) == 1
    seen.add(matches[0])
  assert len(seen) == 4


def test_spectral_augment_presets_and_validation():
  image = _image(13)
  identity = sa.SpectralAugment.identity()
  np.testing.assert_array_equal(identity(image, np.random.default_rng(0)),
                                image)
  g1 = sa.SpectralAugment.dinov2_global_1()
  g2 = sa.SpectralAugment.dinov2_global_2()
  local = sa.SpectralAugment.dinov2_local()
  assert (g1.blur_prob, g1.solarize_prob, g1.jitter_prob) == (1.0, 0.0, 0.8)
  assert (g2.blur_prob, g2.solarize_prob) == (0.1, 0.2)
  assert (local.blur_prob, local.solarize_prob) == (0.5, 0.0)
  # Blur always on: the first global chain always smooths.
  out = g1(image, np.random.default_rng(1))
  rough = lambda a: np.abs(np.diff(a, axis=1)).mean()
  assert rough(out) < rough(image)
  a = g2(image, np.random.default_rng(7))
  b = g2(image, np.random.default_rng(7))
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="probability"):
    sa.SpectralAugment(blur_prob=1.5)
  with pytest.raises(ValueError, match="sigma_range"):
    sa.SpectralAugment(sigma_range=(2.0, 1.0))
  with pytest.raises(ValueError, match=">= 0"):
    sa.band_scaling(image, np.random.default_rng(0), -0.1)
