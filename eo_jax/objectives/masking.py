"""Per-sample random patch masking with static shapes (MAE).

Each sample draws uniform noise over its N patches; sorting the noise gives
a random shuffle, whose first K = round(N * (1 - mask_ratio)) entries are the
visible patches. K is the same for every sample, so the visible tokens form
a dense (B, K, D) array and XLA compiles one program for every batch.

With `shuffle = argsort(noise)` and `restore = argsort(shuffle)`,
`restore[i]` is patch i's rank in the shuffle, hence patch i is visible
exactly when `restore[i] < K`, and gathering a shuffled sequence
[visible tokens, mask tokens] with `restore` puts every token back at its
patch (`models.mae_decoder.unshuffle`, the un-shuffle of MAE's decoder).

Band-group tokens (a spatial-spectral ViT: G band groups x N patches, token
g * N + n) are masked by one of three units (`token_masking`):

  'patches'  whole spatial patches, every group of a patch together;
  'tokens'   single (group, patch) tokens;
  'groups'   whole band groups, every patch of a group together.

The units are masked as above (`random_masking` over N, G * N or G units),
then expanded to the G * N tokens: a `TokenMask` holds both levels. The
visible tokens are listed group-major over the kept units (kept patches in
shuffle order within each group; kept groups in shuffle order, each with
its N patches in order), which is the order in which a spatial-spectral
ViT returns them for those `keep_indices`. `random_group_mask` draws a
fixed number of hidden groups per view (DINO's spectral masking).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from eo_jax.errors import ConfigValueError


class RandomMask(NamedTuple):
  """One random masking of a batch.

  Attributes:
    keep_indices: (B, K) int32 indices of the visible patches, in shuffle
      order (not sorted).
    mask: (B, N) float32, 1 = masked (to reconstruct), 0 = visible.
    restore_indices: (B, N) int32; `take_along_axis(shuffled, restore)` maps
      a sequence in shuffle order back to patch order.
  """
  keep_indices: jax.Array
  mask: jax.Array
  restore_indices: jax.Array


#: Masking units of band-group tokens (see the module docstring).
UNITS = ("patches", "tokens", "groups")


def num_visible(num_patches: int, mask_ratio: float, unit: str = "patches"
                ) -> int:
  """K = round(N * (1 - mask_ratio)) (halves round up), checked to be in [1, N).

  `unit` names what is counted ('patches', 'tokens', 'groups'), for errors.
  """
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}; set "
                     "config.mae.mask_ratio.")
  # floor(x + 0.5): Python's round() would send 0.5 to 0 (banker's rounding).
  keep = int(math.floor(num_patches * (1.0 - mask_ratio) + 0.5))
  if not 1 <= keep < num_patches:
    raise ConfigValueError(
        f"mask_ratio {mask_ratio} keeps {keep} of {num_patches} {unit}; at "
        f"least one must stay visible and one be masked. Change "
        f"config.mae.mask_ratio or the number of {unit} (image / patch "
        "size, band groups).")
  return keep


def random_masking(rng: jax.Array, batch_size: int, num_patches: int,
                   mask_ratio: float = 0.75) -> RandomMask:
  """Masks `mask_ratio` of the patches of each sample independently.

  Args:
    rng: a JAX PRNG key.
    batch_size: B.
    num_patches: N, patches per sample.
    mask_ratio: fraction of patches to hide.

  Returns:
    A `RandomMask` with exactly N - K masked patches per sample.
  """
  keep = num_visible(num_patches, mask_ratio)
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
  restore = jnp.argsort(shuffle, axis=1).astype(jnp.int32)
  mask = (restore >= keep).astype(jnp.float32)
  return RandomMask(keep_indices=shuffle[:, :keep], mask=mask,
                    restore_indices=restore)



class TokenMask(NamedTuple):
  """One random masking of band-group tokens, at two levels.

  Attributes:
    tokens: the G * N (group, patch) tokens g * N + n: `keep_indices`
      (B, K_t) the visible tokens, group-major over the kept units (the
      order of the encoder's visible tokens), `mask` (B, G * N) and
      `restore_indices` (B, G * N) as in `random_masking`.
    units: the same masking of the units it was drawn over (N patches,
      G * N tokens or G groups): what an encoder that drops whole patches,
      or hides whole groups, is given.
  """
  tokens: RandomMask
  units: RandomMask


def _restore_from_keep(keep: jax.Array, mask: jax.Array) -> jax.Array:
  """(B, T) un-shuffle for visible tokens `keep` (B, K) then masked ones.

  Token keep[j] sits at position j of the shuffled sequence; the masked
  tokens follow in token order. Each token gets a distinct sort key (its
  shuffled position), so `restore` is the rank of the key.
  """
  b, t = mask.shape
  k = keep.shape[1]
  key = jnp.where(mask > 0, k + jnp.arange(t, dtype=jnp.int32), 0)
  rows = jnp.arange(b, dtype=jnp.int32)[:, None]
  key = key.at[rows, keep].set(jnp.arange(k, dtype=jnp.int32)[None])
  return jnp.argsort(jnp.argsort(key, axis=1), axis=1).astype(jnp.int32)


def token_masking(rng: jax.Array, batch_size: int, num_groups: int,
                  num_patches: int, mask_ratio: float = 0.75,
                  unit: str = "patches") -> TokenMask:
  """Masks `mask_ratio` of the `unit`s of each sample (module docstring).

  Args:
    rng: a JAX PRNG key; the units are drawn as `random_masking(rng, B, U,
      mask_ratio)` with U = N, G * N or G.
    batch_size: B.
    num_groups: G, band groups (tokens per patch).
    num_patches: N, spatial patches.
    mask_ratio: fraction of the units to hide.
    unit: 'patches', 'tokens' or 'groups'.

  Returns:
    A `TokenMask`; its tokens' masked fraction equals the units'.
  """
  g, n = num_groups, num_patches
  if unit not in UNITS:
    raise ConfigValueError(f"Masking unit must be one of {UNITS}, got "
                           f"{unit!r}; set config.mae.masking.")
  count = {"patches": n, "tokens": g * n, "groups": g}[unit]
  num_visible(count, mask_ratio, unit)  # the error names the unit
  units = random_masking(rng, batch_size, count, mask_ratio)
  if unit == "tokens":
    return TokenMask(tokens=units, units=units)
  if unit == "patches":
    token_keep = (jnp.arange(g, dtype=jnp.int32)[None, :, None] * n
                  + units.keep_indices[:, None, :])          # (B, G, K)
    mask = jnp.broadcast_to(units.mask[:, None, :], (batch_size, g, n))
  else:
    token_keep = (units.keep_indices[:, :, None] * n
                  + jnp.arange(n, dtype=jnp.int32)[None, None])  # (B, K, N)
    mask = jnp.broadcast_to(units.mask[:, :, None], (batch_size, g, n))
  token_keep = token_keep.reshape(batch_size, -1)
  mask = mask.reshape(batch_size, g * n)
  return TokenMask(
      tokens=RandomMask(keep_indices=token_keep, mask=mask,
                        restore_indices=_restore_from_keep(token_keep, mask)),
      units=units)


def num_masked_groups(num_groups: int, mask_ratio: float) -> int:
  """round(G * mask_ratio) (halves up), at most G - 1: one group stays."""
  return min(int(math.floor(num_groups * mask_ratio + 0.5)), num_groups - 1)


def random_group_mask(rng: jax.Array, batch_size: int, num_groups: int,
                      num_masked: int) -> jax.Array:
  """(B, G) bool, True on `num_masked` random groups of each sample."""
  noise = jax.random.uniform(rng, (batch_size, num_groups))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
  return rank < num_masked
