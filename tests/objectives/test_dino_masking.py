"""iBOT block masks: counts, bounds, stratified ratios, blocks, buffers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.data import block_masking as bm

GRID = (8, 8)
N = 64


@pytest.fixture(scope="module")
def batch_masks():
  s = 64
  rng = jax.random.key(3)
  masks = np.asarray(jax.jit(lambda r: bm.ibot_masks(r, s, GRID))(rng))
  targets = np.asarray(bm.mask_targets(jax.random.split(rng)[0], s, N))
  return masks, targets


def test_targets_are_stratified_over_the_ratio_range():
  targets = np.asarray(bm.mask_targets(jax.random.key(0), 40, 100, (0.1, 0.5), 0.5))
  masked = np.sort(targets[targets > 0])
  assert len(masked) == 20 and (targets == 0).sum() == 20
  # The i-th of 20 masked crops draws from [0.1 + 0.02 i, 0.1 + 0.02 (i + 1)).
  edges = np.linspace(0.1, 0.5, 21)
  assert np.all(masked >= np.floor(100 * edges[:-1]))
  assert np.all(masked <= np.floor(100 * edges[1:]))
  # Shuffled: the masked crops are not simply the first half.
  assert 0 < (targets[:20] > 0).sum() < 20


def test_masks_respect_targets_and_the_static_bound(batch_masks):
  masks, targets = batch_masks
  counts = masks.sum(1)
  assert masks.shape == (64, N) and masks.dtype == bool
  assert np.all(counts <= targets)
  assert np.all(counts <= bm.max_masked(N, 0.5)) and bm.max_masked(N, 0.5) == 32
  np.testing.assert_array_equal(counts == 0, targets == 0)  # half unmasked
  # Fixed attempts still get (almost) every patch DINOv2's loop would.
  assert counts.sum() >= 0.95 * targets.sum()


def test_masks_come_in_blocks(batch_masks):
  masks, _ = batch_masks
  grids = masks.reshape(-1, *GRID)
  padded = np.pad(grids, ((0, 0), (1, 1), (1, 1)))
  neighbours = (padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1]
                | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:])
  with_neighbour = (grids & neighbours).sum() / grids.sum()
  # Random masks at these ratios (~0.3) would give ~1 - 0.7^4 = 0.76.
  assert with_neighbour > 0.95


def test_block_mask_never_exceeds_its_target_and_is_deterministic():
  f = jax.jit(lambda k, n: bm.block_mask(k, (6, 5), n))
  for n in (0, 1, 3, 7, 12):
    m = np.asarray(f(jax.random.key(n), n))
    assert m.shape == (6, 5) and m.sum() <= n
  np.testing.assert_array_equal(f(jax.random.key(9), 10), f(jax.random.key(9), 10))


def test_masked_patch_indices_fill_a_fixed_buffer():
  mask = jnp.array([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]],
                   bool)
  indices, valid = bm.masked_patch_indices(mask, 3)
  np.testing.assert_array_equal(valid, [[1, 1, 1], [0, 0, 0], [1, 1, 0]])
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(valid)],
                                [1, 3, 4, 0, 5])


def test_bad_ratios_are_refused():
  with pytest.raises(ValueError, match="mask ratios"):
    bm.mask_targets(jax.random.key(0), 4, 16, (0.5, 0.1))
  with pytest.raises(ValueError, match="masks no patch"):
    bm.mask_targets(jax.random.key(0), 4, 1, (0.1, 0.5))
