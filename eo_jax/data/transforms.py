"""Per-example image transforms in plain numpy, for any number of bands.

Images are (H, W, C) arrays in a dataset's raw units, masks (H, W) integer
arrays. Every random transform draws from an explicit `np.random.Generator`,
so the pipeline can make augmentation a pure function of (seed, example
index, epoch) and a resumed run sees exactly the same data.

Geometry is applied identically to an optional mask: bilinear interpolation
for the image, nearest neighbour for the mask (labels must never be blended).
Resizing uses half-pixel centres (the convention of PyTorch's
`align_corners=False` and TF2's `tf.image.resize`), without antialiasing.

Each random transform is split into a draw (`sample_crop_box`,
`sample_flips`, `sample_rot90`) and its deterministic application
(`crop_and_resize`, `flip`, `rot90`), so a caller can move any number of
aligned arrays (the pipeline's spatial keys) with one draw;
`resize_method` picks the resampling that keeps an array's meaning.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from eo_jax.data.bands import Band

Size = int | Sequence[int]


def size_pair(size: Size) -> tuple[int, int]:
  """(height, width) from an int (square) or a pair."""
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  h, w = size
  return int(h), int(w)


def _linear_weights(in_size: int, out_size: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and weights of a 1-D linear resize (half-pixel centres)."""
  scale = in_size / out_size
  x = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  x = np.clip(x, 0.0, in_size - 1)
  x0 = np.floor(x).astype(np.int64)
  x1 = np.minimum(x0 + 1, in_size - 1)
  return x0, x1, (x - x0).astype(np.float32)


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  # Rounding the half-pixel centre (PyTorch's 'nearest-exact') keeps the
  # sampling symmetric; the legacy floor(o * scale) shifts masks by up to a
  # pixel towards the origin.
  x = np.floor((np.arange(out_size) + 0.5) * (in_size / out_size))
  return np.minimum(x.astype(np.int64), in_size - 1)


def resize(image: np.ndarray, size: Size, method: str = "bilinear"
           ) -> np.ndarray:
  """Resizes an (H, W, ...) array to `size` = (out_h, out_w) or an int.

  Args:
    image: (H, W) or (H, W, C) array; any number of channels.
    size: output height and width (an int means square).
    method: 'bilinear' (returns float32) or 'nearest' (keeps the dtype; use it
      for label masks).

  Returns:
    The resized array; the input itself when the size does not change.
  """
  out_h, out_w = size_pair(size)
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f"resize: output size must be positive, got {size}.")
  in_h, in_w = image.shape[:2]
  if method == "nearest":
    if (in_h, in_w) == (out_h, out_w):
      return image
    rows = _nearest_indices(in_h, out_h)
    cols = _nearest_indices(in_w, out_w)
    return image[rows][:, cols]
  if method != "bilinear":
    raise ValueError(f"resize: unknown method {method!r}; use 'bilinear' or "
                     "'nearest'.")
  image = np.asarray(image, np.float32)
  if (in_h, in_w) == (out_h, out_w):
    return image
  r0, r1, wr = _linear_weights(in_h, out_h)
  c0, c1, wc = _linear_weights(in_w, out_w)
  extra = (1,) * (image.ndim - 2)
  wr = wr.reshape((-1, 1) + extra)
  wc = wc.reshape((1, -1) + extra)
  rows = image[r0] * (1.0 - wr) + image[r1] * wr
  return rows[:, c0] * (1.0 - wc) + rows[:, c1] * wc


def resize_method(dtype: np.dtype | type) -> str:
  """The `resize` method that keeps the meaning of an array of `dtype`.

  Integer and boolean arrays are labels, ids or flags: blending two of them
  invents a value that was never there, so they take 'nearest'. Floating
  arrays are measurements and take 'bilinear' (and become float32).
  """
  dtype = np.dtype(dtype)
  if dtype == np.bool_ or np.issubdtype(dtype, np.integer):
    return "nearest"
  if np.issubdtype(dtype, np.floating):
    return "bilinear"
  raise TypeError(f"Cannot resample an array of dtype {dtype}; spatial arrays "
                  "must be integer, boolean or floating.")


def sample_crop_box(rng: np.random.Generator, height: int, width: int,
                    scale: Sequence[float] = (0.08, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3)
                    ) -> tuple[int, int, int, int]:
  """Samples (top, left, h, w) of a crop with random area and aspect ratio.

  The crop covers a fraction `scale` of the image area and has aspect ratio
  w/h in `ratio` (sampled log-uniformly). Like Inception-style cropping, it
  tries 10 times and then falls back to the largest centred crop whose aspect
  ratio is clipped into `ratio`.
  """
  lo_s, hi_s = float(scale[0]), float(scale[1])
  lo_r, hi_r = float(ratio[0]), float(ratio[1])
  if not 0 < lo_s <= hi_s or not 0 < lo_r <= hi_r:
    raise ValueError(f"random_resized_crop: need 0 < scale[0] <= scale[1] and "
                     f"0 < ratio[0] <= ratio[1]; got scale={tuple(scale)}, "
                     f"ratio={tuple(ratio)}.")
  area = height * width
  log_lo, log_hi = math.log(lo_r), math.log(hi_r)
  for _ in range(10):
    target = area * rng.uniform(lo_s, hi_s)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < lo_r:
    w, h = width, int(round(width / lo_r))
  elif in_ratio > hi_r:
    h, w = height, int(round(height * hi_r))
  else:
    w, h = width, height
  h, w = max(1, min(h, height)), max(1, min(w, width))
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        out_size: Size, scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        mask: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
  """Crops a random box (see `sample_crop_box`) and resizes it to `out_size`.

  All bands are resized bilinearly; `mask`, if given, gets the same box and a
  nearest-neighbour resize.

  Returns:
    (image, mask): float32 (out_h, out_w, C) image and the mask (None if none
    was given).
  """
  height, width = image.shape[:2]
  box = sample_crop_box(rng, height, width, scale, ratio)
  image = crop_and_resize(image, box, out_size, "bilinear")
  if mask is not None:
    mask = crop_and_resize(mask, box, out_size, "nearest")
  return image, mask


def crop_and_resize(x: np.ndarray, box: tuple[int, int, int, int],
                    out_size: Size, method: str = "bilinear") -> np.ndarray:
  """Crops the (top, left, h, w) `box` of an (H, W, ...) array and resizes
  it to `out_size` with `method` (see `resize`)."""
  top, left, h, w = box
  return resize(x[top:top + h, left:left + w], out_size, method)


def flip(x: np.ndarray, left_right: bool, up_down: bool) -> np.ndarray:
  """Mirrors the first two axes (views; np.flip's axis checks cost more than
  the flip itself on small patches)."""
  return x[::-1 if up_down else 1, ::-1 if left_right else 1]


def rot90(x: np.ndarray, k: int) -> np.ndarray:
  """Rotates the first two axes by k * 90 degrees counter-clockwise, like
  `np.rot90(x, k, axes=(0, 1))`, as a view."""
  k %= 4
  if k == 0:
    return x
  if k == 2:
    return x[::-1, ::-1]
  swapped = x.swapaxes(0, 1)
  return swapped[::-1] if k == 1 else swapped[:, ::-1]


def sample_flips(rng: np.random.Generator) -> tuple[bool, bool]:
  """(left_right, up_down) for `flip`, each True with probability 1/2."""
  left_right, up_down = (bool(f) for f in rng.random(2) < 0.5)
  return left_right, up_down


def sample_rot90(rng: np.random.Generator, height: int, width: int) -> int:
  """Quarter turns for `rot90` of an (height, width) array: any of 0-3 when
  square, else 0 or 2, so the shape (and hence the batch shape) never
  changes."""
  if height == width:
    return int(rng.integers(0, 4))
  return 2 * int(rng.integers(0, 2))


def random_flips(image: np.ndarray, rng: np.random.Generator,
                 mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """Flips left-right and up-down, each with probability 1/2."""
  left_right, up_down = sample_flips(rng)
  image = flip(image, left_right, up_down)
  if mask is not None:
    mask = flip(mask, left_right, up_down)
  return image, mask


def random_rot90(image: np.ndarray, rng: np.random.Generator,
                 mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
  """Rotates by a random multiple of 90 degrees.

  Non-square images only get 0 or 180 degrees, so the shape (and hence the
  batch shape) never changes.
  """
  k = sample_rot90(rng, image.shape[0], image.shape[1])
  image = rot90(image, k)
  if mask is not None:
    mask = rot90(mask, k)
  return image, mask


def band_mean_std(bands: Sequence[Band]) -> tuple[np.ndarray, np.ndarray]:
  """Per-band (mean, std) as float32 arrays; a zero std is replaced by 1.

  A constant band (std 0) would otherwise turn into inf/nan; mapping it to
  (x - mean) keeps it at exactly 0 after normalisation.
  """
  missing = [b.name for b in bands if b.mean is None or b.std is None]
  if missing:
    raise ValueError(
        f"Bands {missing} carry no mean/std. Build the dataset with "
        "eo_jax.data.datasets.build_dataset(config.data), which fills them in "
        "from the training split.")
  mean = np.array([b.mean for b in bands], np.float32)
  std = np.array([b.std for b in bands], np.float32)
  std = np.where(std > 0, std, np.float32(1.0))
  return mean, std


def _check_channels(image: np.ndarray, bands: Sequence[Band]) -> None:
  if image.shape[-1] != len(bands):
    raise ValueError(
        f"Image has {image.shape[-1]} channels but {len(bands)} bands are "
        f"declared ({[b.name for b in bands]}).")


def normalize(image: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
  """(image - mean) / std per band, as float32; channels last."""
  _check_channels(image, bands)
  mean, std = band_mean_std(bands)
  return ((np.asarray(image, np.float32) - mean) / std).astype(np.float32)


def denormalize(image: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
  """Inverse of `normalize`: back to the dataset's raw units."""
  _check_channels(image, bands)
  mean, std = band_mean_std(bands)
  return (np.asarray(image, np.float32) * std + mean).astype(np.float32)
