"""Robustness figures: a score per corruption and severity, and what the
corruptions look like.

`plot_robustness_heatmap` colours a (corruption x severity) table of one
metric on a fixed 0-1 scale (so that two runs' figures compare by eye), the
value written in each cell, a last column with each corruption's mean and
the clean score in the title. `plot_corruption_examples` shows one image
clean and under each corruption; every panel is stretched with the SAME
per-band limits (the clean image's percentiles, or given ones), because
haze, shadows, clouds and gain drift change brightness, which a stretch of
each panel on its own would undo. Both return a Figure; save it with
`figures.save_figure`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


def plot_robustness_heatmap(scores: np.ndarray, corruptions: Sequence[str],
                            severities: Sequence[int], *, metric: str = "score",
                            clean: float | None = None, title: str | None = None,
                            value_range: tuple[float, float] = (0.0, 1.0)
                            ) -> Figure:
  """Draws `scores[i, j]`, the metric under corruption i at severity j.

  Args:
    scores: (len(corruptions), len(severities)) values (NaN: not measured).
    corruptions: row names.
    severities: column labels.
    metric: the metric's name, for the colour bar and the title.
    clean: the uncorrupted score, shown in the title.
    title: the first title line (e.g. the run); the clean score follows.
    value_range: the colour scale's (low, high).

  Returns:
    The figure; the last column holds each row's mean over the severities.
  """
  scores = np.asarray(scores, np.float64)
  if scores.shape != (len(corruptions), len(severities)):
    raise ValueError(f"scores has shape {scores.shape}; expected "
                     f"({len(corruptions)}, {len(severities)}) for the "
                     "corruptions and severities given.")
  with np.errstate(invalid="ignore"):
    means = np.nanmean(scores, axis=1, keepdims=True) if scores.size else scores
  table = np.concatenate([scores, means], axis=1)
  columns = [str(s) for s in severities] + ["mean"]
  width = max(5.5, 2.5 + 0.8 * len(columns))
  height = 1.5 + 0.35 * max(len(corruptions), 1)
  fig = Figure(figsize=(width, height), layout="constrained")
  ax = fig.subplots()
  low, high = value_range
  image = ax.imshow(np.ma.masked_invalid(table), cmap="viridis", vmin=low,
                    vmax=high, aspect="auto")
  fig.colorbar(image, ax=ax, label=metric)
  ax.set_xticks(np.arange(len(columns)), labels=columns)
  ax.set_yticks(np.arange(len(corruptions)), labels=list(corruptions))
  ax.set_xlabel("severity")
  # The mean column is not a severity: a line sets it apart.
  ax.axvline(len(severities) - 0.5, color="white", linewidth=2)
  for (i, j), value in np.ndenumerate(table):
    if math.isfinite(value):
      dark = value < low + 0.6 * (high - low)
      ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
              color="white" if dark else "black")
  lines = [title] if title else []
  if clean is not None:
    lines.append(f"{metric}: clean {clean:.3f}")
  if lines:
    # Over the whole figure (colour bar included): a run's name is long.
    fig.suptitle("\n".join(lines), fontsize=10)
  return fig


def shared_stretch(images: np.ndarray, limits: tuple[np.ndarray, np.ndarray]
                   ) -> np.ndarray:
  """(N, H, W, k) values mapped to [0, 1] by per-channel (low, high) limits.

  A channel whose limits coincide is drawn mid-grey; NaN / infinite pixels
  black.
  """
  images = np.asarray(images, np.float64)
  low, high = (np.asarray(v, np.float64) for v in limits)
  span = high - low
  out = np.divide(images - low, span, out=np.full(images.shape, 0.5),
                  where=np.broadcast_to(span > 0, images.shape))
  out = np.where(np.isfinite(images), np.clip(out, 0.0, 1.0), 0.0)
  return out.astype(np.float32)


def plot_corruption_examples(images: Mapping[str, np.ndarray], *,
                             rgb: Sequence[int] = (0, 1, 2),
                             reference: str | None = None,
                             limits: tuple[Sequence[float], Sequence[float]] | None = None,
                             percentiles: tuple[float, float] = (2.0, 98.0),
                             ncols: int = 5, title: str | None = None) -> Figure:
  """A grid of one image under several corruptions, one shared stretch.

  Args:
    images: panel title -> (H, W, C) image in raw units (e.g. 'clean' and
      one entry per corruption), drawn in this order.
    rgb: channels drawn as red, green, blue (three indices) or grey (one).
    reference: the panel whose `percentiles` per channel set the stretch of
      every panel (default: the first).
    limits: per-channel (low, high) in raw units instead (e.g. (0, 255) for
      8-bit images).
    percentiles: (low, high) of the reference used as limits.
    ncols: panels per row.
    title: figure title.

  Returns:
    The figure.
  """
  if not images:
    raise ValueError("No images to draw.")
  channels = [int(c) for c in rgb]
  if len(channels) not in (1, 3):
    raise ValueError(f"rgb must give 3 channels or 1, got {channels}.")
  names = list(images)
  stack = [np.asarray(images[n], np.float64) for n in names]
  shapes = {a.shape for a in stack}
  if len(shapes) != 1 or stack[0].ndim != 3:
    raise ValueError(f"Images must all be (H, W, C) of one shape; got {shapes}.")
  picked = np.stack(stack)[..., channels]
  if limits is None:
    ref = picked[names.index(reference) if reference is not None else 0]
    finite = np.where(np.isfinite(ref), ref, np.nan)
    low, high = np.nanpercentile(finite, percentiles, axis=(0, 1))
  else:
    low, high = (np.broadcast_to(np.asarray(v, np.float64), (len(channels),))
                 for v in limits)
  pictures = shared_stretch(picked, (low, high))
  if len(channels) == 1:
    pictures = np.repeat(pictures, 3, axis=-1)
  ncols = max(1, min(ncols, len(names)))
  nrows = -(-len(names) // ncols)
  fig = Figure(figsize=(2.0 * ncols, 2.2 * nrows + (0.4 if title else 0.0)),
               layout="constrained")
  axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
  for ax in axes.reshape(-1):
    ax.set_axis_off()
  for ax, name, picture in zip(axes.reshape(-1), names, pictures):
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(name, fontsize=9)
  if title:
    fig.suptitle(title)
  return fig
