"""Block masking of patch grids for iBOT, in JAX with static shapes.

DINOv2 masks the student's global crops in rectangular blocks (BEiT's
"blockwise" masking): for a target of n patches, it repeatedly draws a
rectangle of random area (at least `min_patches`) and aspect ratio
(log-uniform in [min_aspect, 1 / min_aspect]) at a random place, and keeps
it if it adds between 1 and the still-missing number of new patches. Half
of the crops of a batch (`sample_probability`) get masks; their targets are
stratified over [ratio_min, ratio_max]: the i-th of n masked crops gets
floor(N * u), u uniform in the i-th of n equal sub-intervals. The masks are
then shuffled over the batch's crops.

Differences from DINOv2's numpy generator, for XLA: rectangles are tried a
fixed number of times (`attempts`) per crop instead of "until 10 tries in a
row fail", so the mask of a crop can fall a few patches short of its target
on a crowded grid (as DINOv2's can); and everything runs inside the jitted
step from the step's RNG key, so masks are reproducible on resume.

Static shapes: a crop never has more than M = floor(N * ratio_max) masked
patches. `masked_patch_indices` lists each crop's masked patches in a buffer
of M slots (padding flagged invalid), so the iBOT head runs on B x M tokens
whatever the masks are, and every array stays batch-sharded (no gather
across devices). DINOv2 instead packs all masked patches of the batch into
one buffer bounded by the sum of the targets' upper bounds (about 0.3 M per
crop with the default ratios): fewer head tokens, but a gather over the
whole batch.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp


def max_masked(num_patches: int, ratio_max: float) -> int:
  """M = floor(N * ratio_max): the most patches one crop can have masked."""
  return int(math.floor(num_patches * ratio_max + 1e-9))


def _check(num_patches: int, ratio_min_max: Sequence[float],
           sample_probability: float) -> tuple[float, float]:
  lo, hi = (float(r) for r in ratio_min_max)
  if not 0.0 <= lo <= hi < 1.0:
    raise ValueError(f"The iBOT mask ratios must satisfy 0 <= min <= max < 1, "
                     f"got {tuple(ratio_min_max)}; set config.dino.mask_ratio.")
  if not 0.0 <= sample_probability <= 1.0:
    raise ValueError(f"mask_probability must be in [0, 1], got "
                     f"{sample_probability}.")
  if sample_probability > 0 and max_masked(num_patches, hi) < 1:
    raise ValueError(
        f"A mask ratio of at most {hi} masks no patch of a {num_patches}-patch "
        "crop; use larger global crops, smaller patches or a larger ratio.")
  return lo, hi


def block_mask(rng: jax.Array, grid: tuple[int, int], num_masked: jax.Array,
               *, min_patches: int = 4, min_aspect: float = 0.3,
               max_block: int | None = None, attempts: int = 16) -> jax.Array:
  """One crop's (gh, gw) bool mask of at most `num_masked` patches, in blocks.

  Args:
    rng: PRNG key.
    grid: (gh, gw) patch grid.
    num_masked: target number of masked patches (int, may be traced).
    min_patches: smallest block area drawn (DINOv2: 4).
    min_aspect: aspect ratios are log-uniform in [min_aspect, 1/min_aspect].
    max_block: largest area one block may add (DINOv2: half the grid);
      None -> half the grid.
    attempts: rectangles tried.

  Returns:
    (gh, gw) bool mask; its count never exceeds `num_masked`.
  """
  return _block_mask(jax.random.uniform(rng, (attempts, 4)), grid, num_masked,
                     min_patches, min_aspect, max_block)


def _block_mask(draws: jax.Array, grid: tuple[int, int], num_masked: jax.Array,
                min_patches: int, min_aspect: float, max_block: int | None
                ) -> jax.Array:
  """`block_mask` from (attempts, 4) uniform draws in [0, 1)."""
  gh, gw = grid
  if max_block is None:
    max_block = max(1, (gh * gw) // 2)
  log_lo, log_hi = math.log(min_aspect), -math.log(min_aspect)
  rows = jnp.arange(gh)[:, None]
  cols = jnp.arange(gw)[None, :]
  target = jnp.asarray(num_masked, jnp.int32)

  def attempt(i, mask):
    u = draws[i]
    remaining = target - jnp.sum(mask, dtype=jnp.int32)
    cap = jnp.minimum(remaining, max_block).astype(jnp.float32)
    # random.uniform(a, b) of DINOv2 also works for b < a (small remainders).
    area = min_patches + (cap - min_patches) * u[0]
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[1])
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    top = jnp.floor(u[2] * (gh - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[3] * (gw - w + 1)).astype(jnp.int32)
    rect = ((rows >= top) & (rows < top + h) & (cols >= left)
            & (cols < left + w))
    new = jnp.sum(rect & ~mask, dtype=jnp.int32)
    accept = ((h < gh) & (w < gw) & (new > 0) & (new <= cap)
              & (remaining > 0))
    return mask | (rect & accept)

  return jax.lax.fori_loop(0, draws.shape[0], attempt,
                           jnp.zeros((gh, gw), dtype=bool))


def mask_targets(rng: jax.Array, num_samples: int, num_patches: int,
                 ratio_min_max: Sequence[float] = (0.1, 0.5),
                 sample_probability: float = 0.5) -> jax.Array:
  """(S,) int32 number of patches to mask in each of S crops.

  floor(S * sample_probability) crops get stratified targets (see the module
  docstring), the others 0; the targets are shuffled over the crops.
  """
  lo, hi = _check(num_patches, ratio_min_max, sample_probability)
  num_masked_samples = int(num_samples * sample_probability)
  # One draw: the first row places the targets, the second the ratios.
  u = jax.random.uniform(rng, (2, num_samples))
  edges = jnp.linspace(lo, hi, num_masked_samples + 1)
  ratios = edges[:-1] + (edges[1:] - edges[:-1]) * u[1, :num_masked_samples]
  targets = jnp.floor(num_patches * ratios).astype(jnp.int32)
  targets = jnp.minimum(targets, max_masked(num_patches, hi))
  targets = jnp.concatenate(
      [targets, jnp.zeros((num_samples - num_masked_samples,), jnp.int32)])
  # A random permutation: the order of uniform draws.
  return targets[jnp.argsort(u[0])]


def ibot_masks(rng: jax.Array, num_samples: int, grid: tuple[int, int],
               ratio_min_max: Sequence[float] = (0.1, 0.5),
               sample_probability: float = 0.5, *, min_patches: int = 4,
               min_aspect: float = 0.3, attempts: int = 16) -> jax.Array:
  """(S, gh * gw) bool masks (True = masked) for S crops, patches row-major.

  Every crop has at most `max_masked(gh * gw, ratio_min_max[1])` masked
  patches.
  """
  gh, gw = grid
  target_rng, block_rng = jax.random.split(rng)
  targets = mask_targets(target_rng, num_samples, gh * gw, ratio_min_max,
                         sample_probability)
  # One draw for every crop and attempt: each random-bits call in a jitted
  # step costs compile time.
  draws = jax.random.uniform(block_rng, (num_samples, attempts, 4))
  masks = jax.vmap(lambda d, n: _block_mask(
      d, grid, n, min_patches, min_aspect, None))(draws, targets)
  return masks.reshape(num_samples, gh * gw)


def masked_patch_indices(mask: jax.Array, buffer_size: int
                         ) -> tuple[jax.Array, jax.Array]:
  """Each crop's masked patches in a fixed buffer of `buffer_size` slots.

  Args:
    mask: (S, N) bool, True = masked; no row may have more than
      `buffer_size` masked patches (extra ones would be dropped).
    buffer_size: M.

  Returns:
    (indices (S, M) int32 patch indices, masked ones first in patch order;
     valid (S, M) bool, False on padding slots).
  """
  order = jnp.argsort(~mask, axis=1, stable=True)[:, :buffer_size]
  order = order.astype(jnp.int32)
  return order, jnp.take_along_axis(mask, order, axis=1)
