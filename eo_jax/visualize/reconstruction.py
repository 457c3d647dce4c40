"""Masked-image reconstructions: original | masked input | reconstruction.

For masked image modelling (MAE): one row per example, three bands shown as
RGB. The original and the reconstruction are stretched together (one
`rgb_composite` over both side by side), so equal colours mean equal values;
hidden patches of the masked input are drawn grey. `plot_reconstruction`
returns the figure; save it with `figures.save_figure`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from eo_jax.visualize.figures import rgb_composite

MASK_GREY = 0.5


def patch_mask_to_pixels(mask, patch_size: int, grid: tuple[int, int]):
  """(B, N) patch mask (row-major grid) -> (B, gh*p, gw*p) boolean pixels.

  Works on numpy and JAX arrays alike (only reshapes and repeats).
  """
  b = mask.shape[0]
  gh, gw = grid
  m = mask.reshape(b, gh, 1, gw, 1) > 0
  m = m.repeat(patch_size, axis=2).repeat(patch_size, axis=4)
  return m.reshape(b, gh * patch_size, gw * patch_size)


def plot_reconstruction(original: np.ndarray, hidden: np.ndarray,
                        recon: np.ndarray, band_indices: Sequence[int], *,
                        title: str | None = None) -> Figure:
  """Draws original | masked input | reconstruction, one row per example.

  Args:
    original: (N, H, W, C) input images (any units, e.g. band-normalised).
    hidden: (N, H, W) bool, True where the model did not see the pixel.
    recon: (N, H, W, C) reconstructions in the units of `original`.
    band_indices: 3 channels shown as R, G, B (or 1 for grey).
    title: figure title.

  Returns:
    The figure: one row of three panels per example.
  """
  original, recon = np.asarray(original), np.asarray(recon)
  hidden = np.asarray(hidden, bool)
  if original.ndim != 4 or original.shape != recon.shape:
    raise ValueError(f"original and recon must be the same (N, H, W, C) "
                     f"shape, got {original.shape} and {recon.shape}.")
  if hidden.shape != original.shape[:3]:
    raise ValueError(f"hidden must be (N, H, W) = {original.shape[:3]}, got "
                     f"{hidden.shape}.")
  n, _, w, _ = original.shape
  both = rgb_composite(np.concatenate([original, recon], axis=2), band_indices)
  rgb_original, rgb_recon = both[:, :, :w], both[:, :, w:]
  rgb_masked = np.where(hidden[..., None], MASK_GREY, rgb_original)
  shown = hidden.mean()

  fig = Figure(figsize=(7.5, 2.5 * n + 0.5), layout="constrained")
  axes = fig.subplots(n, 3, squeeze=False)
  names = ("original", f"masked input ({shown:.0%} hidden)",
           "reconstruction (+ visible)")
  for row in range(n):
    for col, picture in enumerate((rgb_original[row], rgb_masked[row],
                                   rgb_recon[row])):
      ax = axes[row, col]
      ax.imshow(picture, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(names[col], fontsize="small")
  if title:
    fig.suptitle(title, fontsize="small")
  return fig
