"""Patch features as colours: the first three principal components as RGB.

DINOv2's signature picture: fit a PCA to the patch tokens of a few images
jointly, map the first three components to red, green and blue, and parts
that the network considers alike get alike colours across images. Optionally,
as in DINOv2, the first component separates foreground from background: the
patches below a threshold on it are blacked out and the PCA is refitted on
the rest, so the colours are spent on the foreground. `plot_patch_pca`
returns a figure of each image's RGB composite (`figures.rgb_composite`)
next to its PCA colours; save it with `figures.save_figure`.

`plot_feature_pca` does the same for whole images: pooled features on their
first two principal components, coloured by class.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from eo_jax.visualize.figures import rgb_composite


def fit_pca(features: np.ndarray, num_components: int = 3
            ) -> tuple[np.ndarray, np.ndarray]:
  """Principal axes of (M, D) features, by SVD of the centred matrix.

  Sign convention: each component is oriented so that the scores along it
  have a non-negative third moment (the long tail is positive). A small
  distinct group of patches, which is what a foreground usually is, then
  sits at the HIGH end of the first component.

  Args:
    features: (M, D) rows are samples.
    num_components: k <= min(M, D).

  Returns:
    (mean (D,), components (k, D)) as float64; components are orthonormal
    rows, in order of decreasing variance.
  """
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f"features must be (M, D), got {x.shape}.")
  if not 1 <= num_components <= min(x.shape):
    raise ValueError(f"num_components must be in [1, {min(x.shape)}] for "
                     f"features of shape {x.shape}, got {num_components}.")
  mean = x.mean(axis=0)
  centred = x - mean
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:num_components]
  skew = ((centred @ components.T) ** 3).sum(axis=0)
  components = components * np.where(skew < 0, -1.0, 1.0)[:, None]
  return mean, components


def _min_max(scores: np.ndarray) -> np.ndarray:
  low, high = scores.min(axis=0), scores.max(axis=0)
  span = np.where(high > low, high - low, 1.0)
  return (scores - low) / span


def pca_rgb(patch_tokens: np.ndarray,
            background_threshold: float | None = None) -> np.ndarray:
  """Patch tokens -> RGB from their first three principal components.

  The PCA is fitted over all given images jointly, so a colour means the
  same thing in every image; each component is then min-max scaled to [0, 1]
  over all of them.

  Args:
    patch_tokens: (N, gh, gw, D) or (gh, gw, D), e.g.
      `features['patch_tokens']`.
    background_threshold: None, or a threshold in [0, 1] on the min-max
      scaled first component (DINOv2's recipe): patches below it are
      background, drawn black, and the three components shown are refitted
      on the foreground patches only. Which end of the first component is
      "foreground" follows `fit_pca`'s sign convention.

  Returns:
    float32 (N, gh, gw, 3) (or (gh, gw, 3)) with values in [0, 1].
  """
  tokens = np.asarray(patch_tokens, np.float64)
  single = tokens.ndim == 3
  if single:
    tokens = tokens[None]
  if tokens.ndim != 4:
    raise ValueError(f"patch_tokens must be (N, gh, gw, D) or (gh, gw, D), got "
                     f"{np.shape(patch_tokens)}.")
  flat = tokens.reshape(-1, tokens.shape[-1])
  mean, components = fit_pca(flat, 3)
  rgb = _min_max((flat - mean) @ components.T)
  if background_threshold is not None:
    foreground = rgb[:, 0] >= background_threshold
    rgb = np.zeros_like(rgb)
    if foreground.sum() >= 3:
      fg_mean, fg_components = fit_pca(flat[foreground], 3)
      rgb[foreground] = _min_max((flat[foreground] - fg_mean) @ fg_components.T)
  rgb = rgb.reshape(tokens.shape[:3] + (3,)).astype(np.float32)
  return rgb[0] if single else rgb


def plot_patch_pca(images: np.ndarray, rgb_band_indices: Sequence[int],
                   pca_rgb: np.ndarray, *,
                   title: str | None = None) -> Figure:
  """Draws each image's RGB composite next to its patch-PCA colours.

  Args:
    images: (N, H, W, C) or (H, W, C) images, any units.
    rgb_band_indices: three channels shown as red, green, blue (one for grey).
    pca_rgb: (N, gh, gw, 3) or (gh, gw, 3) from `pca_rgb`, drawn over the
      same extent as its image (one block per patch).
    title: figure title.

  Returns:
    The figure: one row of two panels per image.
  """
  images = np.asarray(images, np.float32)
  colours = np.asarray(pca_rgb, np.float32)
  if images.ndim == 3:
    images = images[None]
  if colours.ndim == 3:
    colours = colours[None]
  if images.ndim != 4 or colours.ndim != 4 or colours.shape[-1] != 3:
    raise ValueError(f"Expected (N, H, W, C) images and (N, gh, gw, 3) PCA "
                     f"colours; got {images.shape} and {colours.shape}.")
  if len(images) != len(colours):
    raise ValueError(f"{len(images)} images but {len(colours)} PCA maps.")
  composites = rgb_composite(images, rgb_band_indices)
  n = len(images)
  fig = Figure(figsize=(5.6, 2.8 * n + 0.4), layout="constrained")
  axes = fig.subplots(n, 2, squeeze=False)
  height, width = images.shape[1:3]
  for row in range(n):
    axes[row, 0].imshow(composites[row], interpolation="nearest")
    # The same extent as the image, so each patch's colour covers its patch.
    axes[row, 1].imshow(np.clip(colours[row], 0, 1), interpolation="nearest",
                        extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    for ax in axes[row]:
      ax.set_xticks([])
      ax.set_yticks([])
  axes[0, 0].set_title(f"image (bands {', '.join(map(str, rgb_band_indices))})")
  axes[0, 1].set_title("patch PCA (1st-3rd components)")
  if title:
    fig.suptitle(title)
  return fig


def feature_pca_scores(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Image features on their first two principal components.

  Args:
    features: (N, D) pooled features, N >= 2, D >= 2.

  Returns:
    ((N, 2) scores, (2,) fraction of the total variance each explains).
  """
  x = np.asarray(features, np.float64)
  mean, components = fit_pca(x, 2)
  centred = x - mean
  total = float(np.sum(centred ** 2))
  scores = centred @ components.T
  explained = np.sum(scores ** 2, axis=0) / (total if total > 0 else 1.0)
  return scores, explained


def plot_feature_pca(features: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str], *,
                     title: str | None = None) -> Figure:
  """Scatter of pooled image features on their first two principal
  components, one colour per class (a linear probe's view of the data:
  classes that separate here separate for a linear classifier).

  Args:
    features: (N, D) features, e.g. what a frozen backbone extracts.
    labels: (N,) class indices into `class_names`.
    class_names: the dataset's classes.
    title: figure title.
  """
  labels = np.asarray(labels)
  if len(labels) != len(features):
    raise ValueError(f"{len(features)} feature rows but {len(labels)} labels.")
  scores, explained = feature_pca_scores(features)
  fig = Figure(figsize=(6.4, 4.8), layout="constrained")
  ax = fig.subplots()
  cmap = matplotlib.colormaps["tab20" if len(class_names) > 10 else "tab10"]
  for k, name in enumerate(class_names):
    chosen = labels == k
    if np.any(chosen):
      ax.scatter(scores[chosen, 0], scores[chosen, 1], s=8, alpha=0.7,
                 color=cmap(k % cmap.N), label=f"{name} ({int(chosen.sum())})")
  ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of the variance)")
  ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}%)")
  if len(class_names) <= 20:
    ax.legend(fontsize="small", markerscale=2, loc="best")
  if title:
    ax.set_title(title)
  return fig
