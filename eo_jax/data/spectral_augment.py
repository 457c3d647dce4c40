"""Photometric ("colour") augmentations for normalised N-band images.

DINO-style self-supervision relies on colour jitter, blur and solarisation
so that two views of a scene differ in appearance but not in content. The
torchvision versions assume 8-bit RGB; these work on (H, W, C) float32 images
with any number of bands, AFTER per-band normalisation (each band roughly
zero mean, unit variance over the dataset), and draw every random number from
an explicit `np.random.Generator` so the data pipeline stays deterministic.

What each RGB augmentation becomes:

* Brightness / contrast jitter (`brightness_contrast`): per band, an additive
  offset (in units of the band's dataset std) and a gain around the image's
  own band mean, as ColorJitter jitters each RGB channel.
* Saturation / hue have no meaning for N bands; `band_scaling` plays their
  part by multiplying each band by its own random factor, which changes the
  spectral signature the way a different illumination or sensor gain would.
* Gaussian blur (`gaussian_blur`): the same spatial blur on every band.
* Solarisation (`solarize`): see its docstring.

Every strength or probability of 0 returns the input unchanged (bit for bit).
`SpectralAugment` chains them with DINOv2's probabilities as presets.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import ndimage

from eo_jax.data import transforms


def _check_image(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f"Expected an (H, W, C) image, got shape {image.shape}.")
  return image


def _check_prob(name: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")


def brightness_contrast(image: np.ndarray, rng: np.random.Generator,
                        brightness: float, contrast: float) -> np.ndarray:
  """Per-band brightness (offset) and contrast (gain) jitter.

  Band c becomes `(x - m_c) * g_c + m_c + b_c`, where m_c is the band's mean
  over this image, g_c ~ U(max(0, 1 - contrast), 1 + contrast) and
  b_c ~ U(-brightness, brightness). On normalised data an additive offset is
  the analogue of torchvision's multiplicative brightness (a multiplicative
  factor on raw reflectance is an offset plus a gain after normalisation,
  whose size depends on the band's statistics); the gain about the image mean
  is exactly ColorJitter's contrast, per band instead of per luminance.

  Args:
    image: (H, W, C) normalised image.
    rng: source of the random offsets and gains.
    brightness: half-width of the offset range, in dataset stds (>= 0).
    contrast: half-width of the gain range around 1 (>= 0).

  Returns:
    float32 (H, W, C) image; `image` itself when both strengths are 0.
  """
  image = _check_image(image)
  if brightness < 0 or contrast < 0:
    raise ValueError(f"brightness ({brightness}) and contrast ({contrast}) "
                     "must be >= 0.")
  if brightness == 0 and contrast == 0:
    return image
  num_bands = image.shape[-1]
  gain = rng.uniform(max(0.0, 1.0 - contrast), 1.0 + contrast, num_bands)
  offset = rng.uniform(-brightness, brightness, num_bands)
  mean = image.mean(axis=(0, 1))
  out = (image - mean) * gain.astype(np.float32) + (mean + offset).astype(
      np.float32)
  return out.astype(np.float32, copy=False)


def band_scaling(image: np.ndarray, rng: np.random.Generator,
                 strength: float) -> np.ndarray:
  """Multiplies each band by its own random factor (illumination/sensor gain).

  Factors are log-uniform in [1 / (1 + strength), 1 + strength], so
  brightening and darkening by the same ratio are equally likely. Unlike the
  contrast gain, the scaling is about 0, the band's DATASET mean, so the
  band's mean and spread move together, as they do when a whole scene is lit
  more or a detector amplifies more.

  Args:
    image: (H, W, C) normalised image.
    rng: source of the factors.
    strength: >= 0; 0 is the identity.

  Returns:
    float32 (H, W, C) image; `image` itself when `strength` is 0.
  """
  image = _check_image(image)
  if strength < 0:
    raise ValueError(f"band_scaling strength must be >= 0, got {strength}.")
  if strength == 0:
    return image
  limit = math.log1p(strength)
  factors = np.exp(rng.uniform(-limit, limit, image.shape[-1]))
  return (image * factors.astype(np.float32)).astype(np.float32, copy=False)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, prob: float,
                  sigma_range: Sequence[float] = (0.1, 2.0)) -> np.ndarray:
  """With probability `prob`, blurs every band with one random sigma.

  sigma ~ U(sigma_range) in output pixels (DINOv2: 0.1-2.0 on 224-pixel
  crops; smaller images may want a smaller range). The borders are mirrored
  ('reflect'), which keeps each band's mean exactly, so blur changes texture
  and not the spectrum.

  Args:
    image: (H, W, C) image.
    rng: decides whether to blur and draws sigma.
    prob: probability of blurring, in [0, 1].
    sigma_range: (low, high) standard deviation of the kernel in pixels.

  Returns:
    float32 (H, W, C) image; `image` itself when not blurred.
  """
  image = _check_image(image)
  _check_prob("blur prob", prob)
  low, high = float(sigma_range[0]), float(sigma_range[1])
  if not 0 <= low <= high:
    raise ValueError(f"sigma_range must satisfy 0 <= low <= high, got "
                     f"{tuple(sigma_range)}.")
  if prob == 0 or rng.random() >= prob:
    return image
  sigma = rng.uniform(low, high)
  # sigma 0 on the band axis: bands are never mixed.
  return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0),
                                 mode="reflect").astype(np.float32, copy=False)


def solarize(image: np.ndarray, rng: np.random.Generator, prob: float,
             threshold: float = 0.0) -> np.ndarray:
  """With probability `prob`, negates every value above `threshold`.

  On 8-bit images solarisation maps x -> 255 - x above a threshold (128 in
  DINO): the bright half of the range is reflected about the middle of the
  range, so it turns dark while the dark half is left alone. After per-band
  normalisation the middle of a band's range is its mean, i.e. 0, and the
  reflection about it is x -> -x. The default threshold 0 is therefore the
  analogue of 128; a threshold of +inf never changes anything.

  Args:
    image: (H, W, C) normalised image.
    rng: decides whether to solarise.
    prob: probability of solarising, in [0, 1].
    threshold: values strictly above it are negated.

  Returns:
    float32 (H, W, C) image; `image` itself when not solarised.
  """
  image = _check_image(image)
  _check_prob("solarize prob", prob)
  if prob == 0 or rng.random() >= prob:
    return image
  out = np.where(image > threshold, -image, image)
  return out.astype(np.float32, copy=False)


def random_flips(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Left-right and up-down flips, each with probability 1/2.

  Both axes are fair game for overhead imagery (no canonical "up"), unlike
  DINOv2's horizontal-only flip of photographs.
  """
  flipped, _ = transforms.random_flips(image, rng)
  return flipped


@dataclasses.dataclass(frozen=True)
class SpectralAugment:
  """A chain of photometric augmentations and their probabilities.

  Applied in DINOv2's order: with probability `jitter_prob` brightness /
  contrast jitter followed by band scaling (together DINOv2's ColorJitter,
  p=0.8), then blur with probability `blur_prob`, then solarisation with
  probability `solarize_prob`. The defaults are DINOv2's jitter with blur
  p=0.5 (its local-crop recipe); `dinov2_global_1` / `dinov2_global_2` /
  `dinov2_local` give its three recipes and `identity` none at all.

  Attributes:
    jitter_prob: probability of the jitter step (brightness, contrast, band
      scaling).
    brightness: see `brightness_contrast`.
    contrast: see `brightness_contrast`.
    band_scaling: see `band_scaling`.
    blur_prob: see `gaussian_blur`.
    sigma_range: see `gaussian_blur`.
    solarize_prob: see `solarize`.
    solarize_threshold: see `solarize`.
  """
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  band_scaling: float = 0.2
  blur_prob: float = 0.5
  sigma_range: tuple[float, float] = (0.1, 2.0)
  solarize_prob: float = 0.0
  solarize_threshold: float = 0.0

  def __post_init__(self):
    for name in ("jitter_prob", "blur_prob", "solarize_prob"):
      _check_prob(name, getattr(self, name))
    for name in ("brightness", "contrast", "band_scaling"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
    low, high = self.sigma_range
    if not 0 <= low <= high:
      raise ValueError(f"sigma_range must satisfy 0 <= low <= high, got "
                       f"{self.sigma_range}.")
    # A tuple keeps the frozen dataclass hashable when configs give lists.
    object.__setattr__(self, "sigma_range", (float(low), float(high)))

  @classmethod
  def identity(cls) -> SpectralAugment:
    """Changes nothing (geometry-only views)."""
    return cls(jitter_prob=0.0, blur_prob=0.0, solarize_prob=0.0)

  @classmethod
  def dinov2_global_1(cls, **overrides) -> SpectralAugment:
    """DINOv2's first global crop: jitter p=0.8, blur always."""
    return cls(**{"blur_prob": 1.0, **overrides})

  @classmethod
  def dinov2_global_2(cls, **overrides) -> SpectralAugment:
    """DINOv2's second global crop: jitter p=0.8, blur p=0.1, solarise
    p=0.2."""
    return cls(**{"blur_prob": 0.1, "solarize_prob": 0.2, **overrides})

  @classmethod
  def dinov2_local(cls, **overrides) -> SpectralAugment:
    """DINOv2's local crops: jitter p=0.8, blur p=0.5."""
    return cls(**{"blur_prob": 0.5, **overrides})

  def __call__(self, image: np.ndarray, rng: np.random.Generator
               ) -> np.ndarray:
    """Augments one normalised (H, W, C) image; returns float32 (H, W, C)."""
    image = _check_image(image)
    if self.jitter_prob > 0 and rng.random() < self.jitter_prob:
      image = brightness_contrast(image, rng, self.brightness, self.contrast)
      image = band_scaling(image, rng, self.band_scaling)
    image = gaussian_blur(image, rng, self.blur_prob, self.sigma_range)
    return solarize(image, rng, self.solarize_prob, self.solarize_threshold)
