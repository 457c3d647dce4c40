"""Segmentation maps: image | ground truth | prediction, one row per example.

`plot_segmentation` returns a figure with a fixed colour per class
(`class_colours`, `colourise`) and a legend; the image is a ready RGB
picture, e.g. from `figures.rgb_composite`. Save it with
`figures.save_figure`.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.colors
import matplotlib.patches
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

IGNORE_COLOUR = (0.0, 0.0, 0.0)
ERROR_COLOURS = {"right": (0.2, 0.7, 0.3), "wrong": (0.85, 0.1, 0.1)}


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
                      class_names: Sequence[str], *,
                      ignore_index: int | None = None,
                      show_errors: bool = False,
                      title: str | None = None) -> Figure:
  """Draws image | ground truth | prediction (| errors), one row per example.

  Args:
    rgb: (H, W, 3) or (N, H, W, 3) picture in [0, 1] (see
      `figures.rgb_composite`).
    mask: (H, W) or (N, H, W) ground-truth class ids.
    pred: predicted class ids, the same shape as `mask`.
    class_names: K names; class k always gets the same colour.
    ignore_index: mask value for unlabelled pixels (drawn black).
    show_errors: add a fourth panel: wrong pixels red, right ones green,
      unlabelled ones black.
    title: figure title.

  Returns:
    The figure: one row of three (four) panels per example, the legend on the
    right.
  """
  rgb, mask, pred = np.asarray(rgb), np.asarray(mask), np.asarray(pred)
  if mask.ndim == 2:
    rgb, mask, pred = rgb[None], mask[None], pred[None]
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise ValueError(f"rgb must be (N, H, W, 3) or (H, W, 3), got {rgb.shape}; "
                     "make one with figures.rgb_composite.")
  if mask.shape != pred.shape or mask.shape != rgb.shape[:3]:
    raise ValueError(f"Shapes differ: rgb {rgb.shape}, mask {mask.shape}, "
                     f"pred {pred.shape}.")
  k = len(class_names)
  truth_rgb = colourise(mask, k, ignore_index)
  pred_rgb = colourise(pred, k, None)
  n = mask.shape[0]
  panels = 4 if show_errors else 3
  if show_errors:
    labelled = (mask != ignore_index) if ignore_index is not None else np.ones(mask.shape, bool)
    errors = np.zeros(mask.shape + (3,), np.float32)
    errors[labelled & (mask == pred)] = ERROR_COLOURS["right"]
    errors[labelled & (mask != pred)] = ERROR_COLOURS["wrong"]

  fig = Figure(figsize=(3.0 * panels + (1.5 if k > 0 else 0), 3.0 * n + 0.4),
               layout="constrained")
  axes = fig.subplots(n, panels, squeeze=False)
  for row in range(n):
    pictures = [(np.clip(rgb[row], 0, 1), "image"), (truth_rgb[row], "ground truth"),
                (pred_rgb[row], "prediction")]
    if show_errors:
      accuracy = float(np.mean(mask[row][labelled[row]] == pred[row][labelled[row]])
                       ) if labelled[row].any() else float("nan")
      pictures.append((errors[row], f"errors (accuracy {accuracy:.2f})"))
    for col, (picture, name) in enumerate(pictures):
      ax = axes[row, col]
      ax.imshow(picture, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0 or col == 3:  # each row has its own error rate
        ax.set_title(name)
  handles = [matplotlib.patches.Patch(color=c, label=name)
             for c, name in zip(class_colours(k), class_names)]
  if ignore_index is not None:
    handles.append(matplotlib.patches.Patch(color=IGNORE_COLOUR,
                                            label=f"ignored ({ignore_index})"))
  fig.legend(handles=handles, loc="outside right center", fontsize="small")
  if title:
    fig.suptitle(title)
  return fig


def plot_label_map(labels: np.ndarray, class_names: Sequence[str], *,
                   ignore_index: int | None = None,
                   title: str | None = None) -> Figure:
  """One (H, W) label map in the fixed class colours, with a legend."""
  labels = np.asarray(labels)
  if labels.ndim != 2:
    raise ValueError(f"labels must be (H, W), got shape {labels.shape}.")
  k = len(class_names)
  h, w = labels.shape
  side = 8.0
  fig = Figure(figsize=(side * min(w / h, 2.0) + 2.0, side * min(h / w, 2.0)),
               layout="constrained")
  ax = fig.subplots()
  ax.imshow(colourise(labels, k, ignore_index), interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  handles = [matplotlib.patches.Patch(color=c, label=name)
             for c, name in zip(class_colours(k), class_names)]
  fig.legend(handles=handles, loc="outside right center", fontsize="small")
  if title:
    ax.set_title(title)
  return fig
