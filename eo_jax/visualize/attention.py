"""Where a ViT's class token looks: per-head attention maps over the image.

The DINO papers show that the class token's self-attention in the last block
of a self-supervised ViT segments objects without any labels. For a model
run with `return_attention=True`, `features['attention_<last>']` is
(B, heads, T, T) with tokens ordered [cls, registers..., patches...] (see
`models.vit`); `cls_attention_maps` takes one example's class-token row over
the patch tokens, per head, and lays it out on the patch grid, and
`plot_attention` returns a figure of those maps, upsampled to the image,
next to an RGB composite of any three bands (`figures.rgb_composite`); save
it with `figures.save_figure`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from eo_jax.visualize.figures import rgb_composite


def cls_attention_maps(attention: np.ndarray, grid: Sequence[int],
                       num_prefix_tokens: int) -> np.ndarray:
  """The class token's attention to each patch, per head, on the patch grid.

  Args:
    attention: (heads, T, T) attention weights of one example (rows are
      queries and sum to 1), T = num_prefix_tokens + gh * gw.
    grid: (gh, gw) patch grid, patches in row-major order.
    num_prefix_tokens: tokens before the patches (1 for the class token plus
      the number of registers); the class token is token 0.

  Returns:
    (heads, gh, gw) float32. Each map sums to at most 1: what the class token
    does not spend on patches goes to itself and the registers.
  """
  attention = np.asarray(attention, np.float32)
  gh, gw = (int(g) for g in grid)
  if attention.ndim != 3 or attention.shape[1] != attention.shape[2]:
    raise ValueError(f"attention must be (heads, T, T) for one example, got "
                     f"{attention.shape}; index the batch axis first.")
  if num_prefix_tokens < 1:
    raise ValueError(f"num_prefix_tokens must be >= 1 (the class token), got "
                     f"{num_prefix_tokens}.")
  tokens = attention.shape[-1]
  if tokens != num_prefix_tokens + gh * gw:
    raise ValueError(
        f"attention has {tokens} tokens, but {num_prefix_tokens} prefix "
        f"tokens + a {gh}x{gw} grid make {num_prefix_tokens + gh * gw}.")
  row = attention[:, 0, num_prefix_tokens:]
  return row.reshape(-1, gh, gw)


def upsample_patches(maps: np.ndarray, patch_size: int) -> np.ndarray:
  """Repeats each grid cell over its patch_size x patch_size pixels.

  Nearest, not smooth, upsampling: a token stands for exactly its patch, and
  interpolating would suggest a resolution the model does not have.
  """
  maps = np.asarray(maps)
  return np.repeat(np.repeat(maps, patch_size, axis=-2), patch_size, axis=-1)


def plot_attention(image: np.ndarray, rgb_band_indices: Sequence[int],
                   attention: np.ndarray, grid: Sequence[int],
                   num_prefix_tokens: int, patch_size: int, *,
                   title: str | None = None) -> Figure:
  """Draws the RGB composite, then the class token's attention per head.

  Each head's map has its own colour scale (heads differ a lot in how peaked
  they are); the panel title gives the share of the class token's attention
  that goes to patches at all. A last panel shows the mean over heads.

  Args:
    image: (H, W, C) image, any units, H = gh * patch_size, W = gw *
      patch_size (the model's input).
    rgb_band_indices: three channels shown as red, green, blue (one for grey).
    attention: (heads, T, T) weights of one example, usually the last block's
      `features['attention_<depth - 1>'][b]`.
    grid: (gh, gw) patch grid.
    num_prefix_tokens: 1 + number of registers.
    patch_size: pixels per patch side.
    title: figure title.

  Returns:
    The figure: up to 5 panels of 2.6 inches per row.
  """
  image = np.asarray(image, np.float32)
  maps = cls_attention_maps(attention, grid, num_prefix_tokens)
  gh, gw = maps.shape[1:]
  if image.ndim != 3 or image.shape[:2] != (gh * patch_size, gw * patch_size):
    raise ValueError(
        f"image must be (H, W, C) with H, W = {gh * patch_size}, "
        f"{gw * patch_size} (a {gh}x{gw} grid of {patch_size}-pixel patches); "
        f"got {image.shape}.")
  composite = rgb_composite(image, rgb_band_indices)
  panels = [(upsample_patches(m, patch_size), f"head {h} ({m.sum():.2f})")
            for h, m in enumerate(maps)]
  panels.append((upsample_patches(maps.mean(0), patch_size), "mean of heads"))

  columns = min(len(panels) + 1, 5)
  rows = -(-(len(panels) + 1) // columns)
  fig = Figure(figsize=(2.6 * columns, 2.6 * rows + 0.4), layout="constrained")
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  axes[0].imshow(composite, interpolation="nearest")
  axes[0].set_title(f"image (bands {', '.join(map(str, rgb_band_indices))})")
  for ax, (picture, name) in zip(axes[1:], panels):
    ax.imshow(picture, cmap="inferno", interpolation="nearest")
    ax.set_title(name, fontsize="small")
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes[len(panels) + 1:]:
    ax.set_axis_off()
  fig.suptitle(title or "class-token attention to patches "
               "(share of attention on patches)", fontsize="medium")
  return fig
