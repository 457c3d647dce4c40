"""The MAE decoder: visible tokens + mask tokens -> pixels of every patch.

He et al., "Masked Autoencoders Are Scalable Vision Learners" (2021). The
encoder sees only the visible patches; this decoder

  1. projects the encoder's tokens (prefix tokens such as cls first, then the
     K visible patch tokens in shuffle order) to its own width,
  2. appends N - K copies of a learned mask token and un-shuffles the patch
     part with `restore_indices`, so token i sits at patch i,
  3. adds its own fixed 2-D sine-cosine position embedding (zero for prefix
     tokens),
  4. runs pre-norm transformer blocks, a LayerNorm and a linear layer to
     `patch_size**2 * num_bands` values per patch, and drops the prefix.

The pixel layout of a predicted patch is `patchify`'s: (row, column, band)
flattened, the order in which the ViT's patch embedding reads its kernel.

Band-group tokens (a spatial-spectral ViT, `wavelengths` set): the decoder
works on the G * N (group, patch) tokens, group-major (token g * N + n), and
each token's position embedding is the spatial one of patch n plus a fixed
sine-cosine encoding of group g's centre wavelength
(`spectral_vit.wavelength_encoding`), so no decoder parameter depends on
the band set but the output layer's size. It predicts p*p*S values per
token, S = the largest group: `group_patchify`'s layout, (row, column,
slot) flattened, slot s of group g = its s-th band (`group_channels` order);
the slots past a smaller group's size are padding (`group_valid` is False
there), zero in the targets and never counted in the loss.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.models import vit as vit_lib
from eo_jax.models.spectral_vit import group_slots, wavelength_encoding

Array = jax.Array


def patchify(image: Array, patch_size: int) -> Array:
  """(B, H, W, C) -> (B, N, p*p*C), patches in row-major grid order."""
  b, h, w, c = image.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"Image {h}x{w} is not a multiple of patch_size {p}.")
  x = image.reshape(b, h // p, p, w // p, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Array, patch_size: int, grid: tuple[int, int],
               num_bands: int) -> Array:
  """Inverse of `patchify`: (B, N, p*p*C) -> (B, gh*p, gw*p, C)."""
  b = patches.shape[0]
  gh, gw = grid
  p = patch_size
  x = patches.reshape(b, gh, gw, p, p, num_bands)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * p, gw * p, num_bands)


def group_valid(patch_size: int, groups: Sequence[Sequence[int]],
                num_patches: int) -> np.ndarray:
  """(G * N, p*p*S) bool: which values of each group token are real bands."""
  _, valid = group_slots(groups)
  per_group = np.broadcast_to(valid[:, None, :],
                              (len(groups), patch_size**2, valid.shape[1]))
  per_group = per_group.reshape(len(groups), -1)
  return np.repeat(per_group, num_patches, axis=0)


def group_patchify(image: Array, patch_size: int,
                   groups: Sequence[Sequence[int]]) -> Array:
  """(B, H, W, C) -> (B, G*N, p*p*S): each (group, patch) token's pixels.

  Token g * N + n holds patch n's pixels of group g's bands as (row, column,
  slot); padding slots are 0.
  """
  b, h, w, _ = image.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"Image {h}x{w} is not a multiple of patch_size {p}.")
  index, valid = group_slots(groups)
  g, s = index.shape
  x = jnp.take(image, jnp.asarray(index.reshape(-1)), axis=-1)
  x = x * jnp.asarray(valid.reshape(-1), image.dtype)
  x = x.reshape(b, h // p, p, w // p, p, g, s)
  x = x.transpose(0, 5, 1, 3, 2, 4, 6)        # (B, G, gh, gw, p, p, S)
  return x.reshape(b, g * (h // p) * (w // p), p * p * s)


def group_unpatchify(tokens: Array, patch_size: int, grid: tuple[int, int],
                     groups: Sequence[Sequence[int]]) -> Array:
  """Inverse of `group_patchify`: (B, G*N, p*p*S) -> (B, gh*p, gw*p, C).

  Every channel is in exactly one group (as `spectral_vit.band_groups`
  makes them), so this is a gather: padding slots are dropped.
  """
  b = tokens.shape[0]
  gh, gw = grid
  p = patch_size
  index, valid = group_slots(groups)
  g, s = index.shape
  x = tokens.reshape(b, g, gh, gw, p, p, s).transpose(0, 2, 4, 3, 5, 1, 6)
  x = x.reshape(b, gh * p, gw * p, g * s)
  slots = np.flatnonzero(valid.reshape(-1))
  channels = index.reshape(-1)[slots]
  if sorted(channels.tolist()) != list(range(len(channels))):
    raise ValueError(f"Band groups {groups} do not hold every channel "
                     "exactly once.")
  return jnp.take(x, jnp.asarray(slots[np.argsort(channels)]), axis=-1)


def unshuffle(shuffled: Array, restore_indices: Array) -> Array:
  """(B, N, ...) sequence in shuffle order -> the same in patch order."""
  index = restore_indices.reshape(restore_indices.shape +
                                  (1,) * (shuffled.ndim - 2))
  return jnp.take_along_axis(shuffled, index, axis=1)


class MAEDecoder(nn.Module):
  """Lightweight transformer decoder of MAE (see the module docstring).

  Attributes:
    patch_size: side of a patch in pixels (the encoder's).
    num_bands: values to predict per pixel of a token: every band of the
      input (ViT), or S, the largest band group's size (band-group tokens).
    width, depth, num_heads: decoder size (MAE: 512, 8, 16).
    mlp_dim: hidden size of the blocks' MLP; None -> 4 * width.
    wavelengths: centre wavelength (nm) of each band group for band-group
      tokens (G * N of them, group-major); () -> one token per patch.
    dtype: compute dtype (params stay float32, predictions are float32).
  """
  patch_size: int
  num_bands: int
  width: int = 512
  depth: int = 8
  num_heads: int = 16
  mlp_dim: int | None = None
  wavelengths: tuple[float, ...] = ()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, restore_indices: Array,
               grid: tuple[int, int], num_prefix: int = 1,
               train: bool = False) -> Array:
    """Predicts the pixels of every patch (or every (group, patch) token).

    Args:
      tokens: (B, num_prefix + K, D_enc) encoder output; prefix tokens (cls,
        registers) first, then the visible patches (tokens) in shuffle order.
      restore_indices: (B, N) from `masking.random_masking`, or (B, G * N)
        from `masking.token_masking` with band groups.
      grid: (gh, gw) patch grid with gh * gw == N.
      num_prefix: number of leading non-patch tokens in `tokens`.
      train: enables dropout in the blocks (none by default).

    Returns:
      (B, N, patch_size**2 * num_bands) float32 predictions in patch order;
      (B, G * N, ...) in token order with band groups.
    """
    b, n = restore_indices.shape
    groups = max(len(self.wavelengths), 1)
    if grid[0] * grid[1] * groups != n:
      raise ValueError(f"grid {grid} has {grid[0] * grid[1]} patches and "
                       f"{groups} band group(s), but restore_indices has {n} "
                       "tokens.")
    x = nn.Dense(self.width, dtype=self.dtype,
                 kernel_init=nn.initializers.xavier_uniform(),
                 name="embed")(tokens)
    prefix, visible = x[:, :num_prefix], x[:, num_prefix:]
    token = self.param("mask_token", nn.initializers.normal(0.02),
                       (1, 1, self.width))
    masked = jnp.broadcast_to(token.astype(x.dtype),
                              (b, n - visible.shape[1], self.width))
    shuffled = jnp.concatenate([visible, masked], axis=1)
    patches = unshuffle(shuffled, restore_indices)
    pos = vit_lib.posemb_sincos_2d(grid, self.width).reshape(
        1, grid[0] * grid[1], self.width)
    if self.wavelengths:
      # Token g * N + n: patch n's position plus group g's wavelength.
      spectral = wavelength_encoding(jnp.asarray(self.wavelengths, jnp.float32),
                                     self.width)
      pos = (pos[:, None] + spectral[None, :, None]).reshape(1, n, self.width)
    x = jnp.concatenate([prefix, patches + pos.astype(x.dtype)], axis=1)
    mlp_dim = self.mlp_dim or 4 * self.width
    for i in range(self.depth):
      x, _ = vit_lib.Block(self.num_heads, mlp_dim, dtype=self.dtype,
                           name=f"block_{i}")(x, train)
    x = nn.LayerNorm(1e-6, dtype=self.dtype, name="norm")(x)
    pred = nn.Dense(self.patch_size**2 * self.num_bands, dtype=self.dtype,
                    kernel_init=nn.initializers.xavier_uniform(),
                    name="pred")(x[:, num_prefix:])
    return pred.astype(jnp.float32)
