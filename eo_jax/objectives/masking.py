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


def num_visible(num_patches: int, mask_ratio: float) -> int:
  """K = round(N * (1 - mask_ratio)) (halves round up), checked to be in [1, N)."""
  if not 0.0 < mask_ratio < 1.0:
    raise ConfigValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}; set "
                     "config.mae.mask_ratio.")
  # floor(x + 0.5): Python's round() would send 0.5 to 0 (banker's rounding).
  keep = int(math.floor(num_patches * (1.0 - mask_ratio) + 0.5))
  if not 1 <= keep < num_patches:
    raise ConfigValueError(
        f"mask_ratio {mask_ratio} keeps {keep} of {num_patches} patches; at "
        "least one patch must stay visible and one be masked. Change "
        "config.mae.mask_ratio or the image / patch size.")
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

