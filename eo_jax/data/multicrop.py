"""DINO's multi-crop views of one normalised N-band image.

DINO / DINOv2 train on several views of every image: two large "global"
crops (seen by teacher and student) and several small "local" crops (seen by
the student only), each randomly resized-cropped, flipped and photometrically
augmented. `MultiCrop` makes those views for (H, W, C) images with any number
of bands, with the per-view recipes of DINOv2's `DataAugmentationDINO`:

* global crop 1: colour jitter, blur always;
* global crop 2: colour jitter, blur p=0.1, solarisation p=0.2;
* local crops: colour jitter, blur p=0.5.

It is the `views_fn` that an objective's `train_views()` hands to
`data.pipeline.train_loader`: called with one normalised image and that
example's generator, it returns fixed-shape arrays, so batches stack and the
jitted step compiles once.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from eo_jax.data import transforms
from eo_jax.data.spectral_augment import SpectralAugment, random_flips

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class MultiCrop:
  """Two global and `num_local` local views of an image.

  Every view: a box covering a fraction of the image area drawn from
  `global_scale` / `local_scale` with aspect ratio in `ratio`
  (`transforms.sample_crop_box`), resized bilinearly to the view's size,
  flipped left-right and up-down with probability 1/2 each, then passed
  through its `SpectralAugment` chain.

  Chains: with `augment=None` (the default) the views get DINOv2's three
  recipes (`SpectralAugment.dinov2_global_1`, `dinov2_global_2`,
  `dinov2_local`). An explicit `augment` is used as given for the first
  global crop and, unless `global_augment_2` / `local_augment` are given, for
  the second global crop and the local crops too; so
  `augment=SpectralAugment.identity()` gives purely geometric views.

  Attributes:
    global_size: side of the global crops in pixels (a multiple of the
      model's patch size).
    local_size: side of the local crops.
    num_local: number of local crops (0: none).
    global_scale: (min, max) fraction of the image area a global crop covers.
    local_scale: the same for local crops.
    augment: chain of global crop 1 (and the default of the others).
    global_augment_2: chain of global crop 2.
    ratio: (min, max) aspect ratio w / h of the boxes.
    local_augment: chain of the local crops.
    flips: random flips of every view.
  """
  global_size: int
  local_size: int
  num_local: int
  global_scale: tuple[float, float] = (0.32, 1.0)
  local_scale: tuple[float, float] = (0.05, 0.32)
  augment: SpectralAugment | None = None
  global_augment_2: SpectralAugment | None = None
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  local_augment: SpectralAugment | None = None
  flips: bool = True

  def __post_init__(self):
    if self.global_size <= 0 or self.local_size <= 0 or self.num_local < 0:
      raise ValueError(
          f"MultiCrop needs positive crop sizes and num_local >= 0; got "
          f"global_size={self.global_size}, local_size={self.local_size}, "
          f"num_local={self.num_local}.")
    for name in ("global_scale", "local_scale", "ratio"):
      low, high = getattr(self, name)
      if not 0 < low <= high:
        raise ValueError(f"MultiCrop {name} must satisfy 0 < min <= max, got "
                         f"{getattr(self, name)}.")
      object.__setattr__(self, name, (float(low), float(high)))

  def chains(self) -> tuple[SpectralAugment, SpectralAugment,
                            SpectralAugment]:
    """The (global 1, global 2, local) augmentation chains in use."""
    if self.augment is None:
      first = SpectralAugment.dinov2_global_1()
      second = self.global_augment_2 or SpectralAugment.dinov2_global_2()
      local = self.local_augment or SpectralAugment.dinov2_local()
    else:
      first = self.augment
      second = self.global_augment_2 or self.augment
      local = self.local_augment or self.augment
    return first, second, local

  def _view(self, image: np.ndarray, rng: np.random.Generator, size: int,
            scale: Sequence[float], chain: SpectralAugment
            ) -> tuple[np.ndarray, Box]:
    # `transforms.random_resized_crop` without hiding the box, so that tests
    # (and objectives that relate views) can see where each view came from.
    height, width = image.shape[:2]
    box = transforms.sample_crop_box(rng, height, width, scale, self.ratio)
    top, left, h, w = box
    view = transforms.resize(image[top:top + h, left:left + w], size,
                             "bilinear")
    if self.flips:
      view = random_flips(view, rng)
    return chain(view, rng), box

  def crop_with_boxes(self, image: np.ndarray, rng: np.random.Generator
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The views of `__call__` and the boxes they were cut from.

    Returns:
      (views, boxes): `views` as `__call__` returns them; `boxes` has
      'global_boxes' (2, 4) and, with local crops, 'local_boxes' (L, 4)
      int arrays of (top, left, height, width) in the input image.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
      raise ValueError(f"MultiCrop expects one (H, W, C) image, got shape "
                       f"{image.shape}.")
    first, second, local = self.chains()
    roles = [(self.global_size, self.global_scale, first),
             (self.global_size, self.global_scale, second)]
    roles += [(self.local_size, self.local_scale, local)] * self.num_local
    outputs = [self._view(image, rng, *role) for role in roles]
    # np.stack copies, which also turns flipped (negative-stride) views into
    # contiguous arrays.
    views = {"global_crops": np.stack([v for v, _ in outputs[:2]])}
    boxes = {"global_boxes": np.array([b for _, b in outputs[:2]], np.int64)}
    if self.num_local:
      views["local_crops"] = np.stack([v for v, _ in outputs[2:]])
      boxes["local_boxes"] = np.array([b for _, b in outputs[2:]], np.int64)
    views = {k: v.astype(np.float32, copy=False) for k, v in views.items()}
    return views, boxes

  def __call__(self, image: np.ndarray, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    """Views of one normalised (H, W, C) image.

    Args:
      image: (H, W, C) image, normalised per band.
      rng: the example's generator; the views are a pure function of it.

    Returns:
      {'global_crops': (2, G, G, C) float32, 'local_crops': (L, l, l, C)
      float32}; 'local_crops' is absent when `num_local` is 0.
    """
    return self.crop_with_boxes(image, rng)[0]
