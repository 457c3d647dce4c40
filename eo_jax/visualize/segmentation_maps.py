"""Segmentation maps next to their image, and RGB composites of N-band images.

`rgb_composite` turns any multispectral or hyperspectral image into a
displayable RGB picture by picking three bands and stretching each between
low and high percentiles (EO reflectances are mostly dark, so a min-max
stretch would waste the range on a few bright pixels). `plot_segmentation`
draws image | ground truth | prediction, one row per example, with a fixed
colour per class and a legend.
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib.colors
import matplotlib.patches
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from eo_jax.visualize.curves import save_figure

IGNORE_COLOUR = (0.0, 0.0, 0.0)


def rgb_composite(image: np.ndarray, band_indices: Sequence[int] = (0, 1, 2),
                  percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
  """An RGB picture in [0, 1] from three bands of an (…, H, W, C) image.

  Args:
    image: (H, W, C) or (N, H, W, C), any units (raw or normalised).
    band_indices: channels shown as red, green, blue (e.g. the indices of
      'B04', 'B03', 'B02' from `data.bands.indices`). One index gives a grey
      picture.
    percentiles: each band is stretched linearly so that these percentiles
      (over each image's pixels) map to 0 and 1, then clipped.

  Returns:
    float32 array of shape (..., H, W, 3) with values in [0, 1].
  """
  image = np.asarray(image, np.float32)
  if image.ndim not in (3, 4):
    raise ValueError("Expected an (H, W, C) or (N, H, W, C) image, got "
                     f"{image.shape}.")
  num_bands = image.shape[-1]
  band_indices = list(band_indices)
  if len(band_indices) not in (1, 3):
    raise ValueError("Give 3 band indices (R, G, B) or 1 (grey); got "
                     f"{band_indices}.")
  bad = [i for i in band_indices if not -num_bands <= i < num_bands]
  if bad:
    raise ValueError(f"Band indices {bad} out of range for {num_bands} bands.")
  low_p, high_p = percentiles
  if not 0 <= low_p < high_p <= 100:
    raise ValueError("percentiles must satisfy 0 <= low < high <= 100, got "
                     f"{percentiles}.")
  bands = image[..., band_indices]
  if len(band_indices) == 1:
    bands = np.repeat(bands, 3, axis=-1)
  # Stretch per image and per band, over the spatial axes.
  spatial = (-3, -2)
  low = np.percentile(bands, low_p, axis=spatial, keepdims=True)
  high = np.percentile(bands, high_p, axis=spatial, keepdims=True)
  scale = np.where(high > low, high - low, 1.0)
  out = np.clip((bands - low) / scale, 0.0, 1.0)
  return np.nan_to_num(out, nan=0.0).astype(np.float32)


def class_colours(num_classes: int) -> np.ndarray:
  """(K, 3) fixed RGB colours in [0, 1]: tab10/tab20, then evenly spaced hues."""
  if num_classes <= 10:
    return np.asarray(colormaps["tab10"].colors[:num_classes])
  if num_classes <= 20:
    return np.asarray(colormaps["tab20"].colors[:num_classes])
  hues = np.arange(num_classes) / num_classes
  # Alternate lightness so neighbouring ids differ in more than hue.
  values = np.where(np.arange(num_classes) % 2, 0.65, 0.95)
  hsv = np.stack([hues, np.full(num_classes, 0.75), values], axis=1)
  return matplotlib.colors.hsv_to_rgb(hsv)


def colourise(mask: np.ndarray, num_classes: int,
              ignore_index: int | None = None) -> np.ndarray:
  """(…, H, W) class ids -> (…, H, W, 3) colours; ignored pixels black."""
  mask = np.asarray(mask)
  colours = class_colours(num_classes)
  ignored = (mask == ignore_index if ignore_index is not None
             else np.zeros(mask.shape, bool))
  bad = ~ignored & ((mask < 0) | (mask >= num_classes))
  if bad.any():
    raise ValueError(f"Mask values {np.unique(mask[bad])[:10].tolist()} are not "
                     f"classes 0..{num_classes - 1}"
                     + ("" if ignore_index is not None else
                        "; pass ignore_index for unlabelled pixels") + ".")
  out = colours[np.where(ignored, 0, mask)]
  out[ignored] = IGNORE_COLOUR
  return out


def plot_segmentation(rgb: np.ndarray, mask: np.ndarray, pred: np.ndarray,
                      class_names: Sequence[str], path: str | os.PathLike,
                      ignore_index: int | None = None,
                      title: str | None = None) -> str:
  """Saves image | ground truth | prediction side by side, one row per example.

  Args:
    rgb: (H, W, 3) or (N, H, W, 3) picture in [0, 1] (see `rgb_composite`).
    mask: (H, W) or (N, H, W) ground-truth class ids.
    pred: predicted class ids, the same shape as `mask`.
    class_names: K names; class k always gets the same colour.
    path: output PNG file.
    ignore_index: mask value for unlabelled pixels (drawn black).
    title: figure title.

  Returns:
    `path` as a string.
  """
  rgb, mask, pred = np.asarray(rgb), np.asarray(mask), np.asarray(pred)
  if mask.ndim == 2:
    rgb, mask, pred = rgb[None], mask[None], pred[None]
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f"rgb must be (N, H, W, 3) or (H, W, 3), got {rgb.shape}; "
                     "make one with rgb_composite.")
  if mask.shape != pred.shape or mask.shape != rgb.shape[:3]:
    raise ValueError(f"Shapes differ: rgb {rgb.shape}, mask {mask.shape}, "
                     f"pred {pred.shape}.")
  k = len(class_names)
  truth_rgb = colourise(mask, k, ignore_index)
  pred_rgb = colourise(pred, k, None)
  n = mask.shape[0]

  fig = Figure(figsize=(9.0 + (1.5 if k > 0 else 0), 3.0 * n + 0.4),
               layout="constrained")
  axes = fig.subplots(n, 3, squeeze=False)
  for row in range(n):
    for col, (picture, name) in enumerate(
        ((np.clip(rgb[row], 0, 1), "image"), (truth_rgb[row], "ground truth"),
         (pred_rgb[row], "prediction"))):
      ax = axes[row, col]
      ax.imshow(picture, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(name)
  handles = [matplotlib.patches.Patch(color=c, label=name)
             for c, name in zip(class_colours(k), class_names)]
  if ignore_index is not None:
    handles.append(matplotlib.patches.Patch(color=IGNORE_COLOUR,
                                            label=f"ignored ({ignore_index})"))
  fig.legend(handles=handles, loc="outside right center", fontsize="small")
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)
