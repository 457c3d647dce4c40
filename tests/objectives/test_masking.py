"""Tests for eo_jax.objectives.masking: counts, un-shuffling, randomness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.models.mae_decoder import unshuffle
from eo_jax.objectives import masking


@pytest.mark.parametrize("n,ratio,keep", [(64, 0.75, 16), (16, 0.75, 4),
                                          (10, 0.75, 3), (2, 0.75, 1),
                                          (49, 0.5, 25)])
def test_num_visible_rounds_half_up(n, ratio, keep):
  # 10 * 0.25 = 2.5 -> 3 and 2 * 0.25 = 0.5 -> 1 (Python's round() gives 2, 0).
  assert masking.num_visible(n, ratio) == keep


@pytest.mark.parametrize("n,ratio", [(16, 0.0), (16, 1.0), (4, 0.1), (4, 0.99)])
def test_ratios_that_keep_all_or_nothing_fail(n, ratio):
  with pytest.raises(ValueError, match="mask_ratio"):
    masking.num_visible(n, ratio)


def test_exact_visible_and_masked_counts():
  m = masking.random_masking(jax.random.key(0), 5, 64, 0.75)
  keep, mask = np.asarray(m.keep_indices), np.asarray(m.mask)
  assert keep.shape == (5, 16) and keep.dtype == np.int32
  assert mask.shape == (5, 64)
  assert set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(mask.sum(axis=1), 48)
  for row in range(5):
    assert len(set(keep[row])) == 16          # no patch kept twice
    np.testing.assert_array_equal(mask[row, keep[row]], 0.0)  # kept = visible


def test_unshuffle_puts_every_visible_token_back_at_its_patch():
  b, n = 3, 20
  m = masking.random_masking(jax.random.key(1), b, n, 0.6)
  k = m.keep_indices.shape[1]
  # A token carrying its own patch id, as the encoder's output would.
  ids = jnp.broadcast_to(jnp.arange(n), (b, n))
  visible = jnp.take_along_axis(ids, m.keep_indices, axis=1)
  placeholders = jnp.full((b, n - k), -1)
  restored = np.asarray(unshuffle(
      jnp.concatenate([visible, placeholders], axis=1), m.restore_indices))
  mask = np.asarray(m.mask) > 0
  np.testing.assert_array_equal(restored[~mask],
                                np.broadcast_to(np.arange(n), (b, n))[~mask])
  np.testing.assert_array_equal(restored[mask], -1)


def test_unshuffle_inverts_the_shuffle_on_feature_vectors():
  m = masking.random_masking(jax.random.key(2), 2, 6, 0.5)
  # restore is the inverse permutation of the shuffle, whose first K
  # entries are the kept patches.
  shuffle = np.argsort(np.asarray(m.restore_indices), axis=1)
  np.testing.assert_array_equal(shuffle[:, :3], np.asarray(m.keep_indices))
  x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
  shuffled = np.take_along_axis(x, shuffle[..., None], axis=1)
  back = unshuffle(jnp.asarray(shuffled), m.restore_indices)
  np.testing.assert_array_equal(np.asarray(back), x)


def test_masks_differ_between_samples_and_keys_but_repeat_for_a_key():
  a = masking.random_masking(jax.random.key(3), 4, 64, 0.75)
  b = masking.random_masking(jax.random.key(3), 4, 64, 0.75)
  c = masking.random_masking(jax.random.key(4), 4, 64, 0.75)
  np.testing.assert_array_equal(a.mask, b.mask)
  assert not np.array_equal(a.mask, c.mask)
  rows = {tuple(r) for r in np.asarray(a.mask)}
  assert len(rows) == 4


def test_every_patch_is_masked_at_the_ratio_on_average():
  m = masking.random_masking(jax.random.key(5), 4000, 16, 0.75)
  freq = np.asarray(m.mask).mean(axis=0)
  # Binomial(4000, 0.75) per patch: std 0.0068; 5 std of slack.
  np.testing.assert_allclose(freq, 0.75, atol=0.035)


# ------------------------------------------------- band-group tokens


@pytest.mark.parametrize("unit,visible_tokens", [("patches", 3 * 4),
                                                 ("tokens", 12),
                                                 ("groups", 1 * 16)])
def test_token_masking_expands_the_units_to_group_patch_tokens(unit,
                                                               visible_tokens):
  b, g, n = 4, 3, 16
  tm = masking.token_masking(jax.random.key(6), b, g, n, 0.75, unit)
  keep = np.asarray(tm.tokens.keep_indices)
  mask = np.asarray(tm.tokens.mask).reshape(b, g, n)
  units = np.asarray(tm.units.mask)
  assert keep.shape == (b, visible_tokens)
  np.testing.assert_array_equal(mask.reshape(b, -1).sum(1), g * n - visible_tokens)
  # The token mask is the unit mask spread over its tokens.
  # Visible tokens: group-major over the kept units, each one once.
  unit_keep = np.asarray(tm.units.keep_indices)
  if unit == "patches":
    expected = np.broadcast_to(units[:, None, :], (b, g, n))
    order = np.arange(g)[None, :, None] * n + unit_keep[:, None, :]
  elif unit == "tokens":
    expected, order = units.reshape(b, g, n), unit_keep
  else:
    expected = np.broadcast_to(units[:, :, None], (b, g, n))
    order = unit_keep[:, :, None] * n + np.arange(n)[None, None]
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(keep, order.reshape(b, -1))
  for row in range(b):
    assert len(set(keep[row])) == visible_tokens
    np.testing.assert_array_equal(mask.reshape(b, -1)[row, keep[row]], 0.0)
  # [visible tokens, placeholders] un-shuffles onto the token grid.
  ids = jnp.broadcast_to(jnp.arange(g * n), (b, g * n))
  visible = jnp.take_along_axis(ids, tm.tokens.keep_indices, axis=1)
  shuffled = jnp.concatenate(
      [visible, jnp.full((b, g * n - visible_tokens), -1)], axis=1)
  restored = np.asarray(unshuffle(shuffled, tm.tokens.restore_indices))
  hidden = mask.reshape(b, -1) > 0
  np.testing.assert_array_equal(restored[~hidden], np.asarray(ids)[~hidden])
  np.testing.assert_array_equal(restored[hidden], -1)


def test_token_masking_of_tokens_is_random_masking_of_g_times_n():
  a = masking.token_masking(jax.random.key(7), 2, 3, 4, 0.5, "tokens")
  b = masking.random_masking(jax.random.key(7), 2, 12, 0.5)
  for x, y in zip(a.tokens, b):
    np.testing.assert_array_equal(x, y)


def test_token_masking_errors_name_the_unit():
  with pytest.raises(ValueError, match="keeps 0 of 1 groups"):
    masking.token_masking(jax.random.key(0), 2, 1, 16, 0.75, "groups")
  with pytest.raises(ValueError, match="config.mae.masking"):
    masking.token_masking(jax.random.key(0), 2, 3, 16, 0.75, "bands")


@pytest.mark.parametrize("groups,ratio,hidden", [(4, 0.25, 1), (5, 0.5, 3),
                                                 (3, 0.9, 2), (2, 0.2, 0)])
def test_random_group_mask_hides_a_fixed_count_and_keeps_one(groups, ratio,
                                                             hidden):
  assert masking.num_masked_groups(groups, ratio) == hidden
  m = np.asarray(masking.random_group_mask(jax.random.key(8), 500, groups,
                                           hidden))
  assert m.shape == (500, groups) and m.dtype == bool
  np.testing.assert_array_equal(m.sum(1), hidden)
  if hidden:
    # Every group is hidden about hidden / groups of the time.
    np.testing.assert_allclose(m.mean(0), hidden / groups, atol=0.1)
