"""Tests of the spatially disjoint scene splits (eo_jax/data/splits.py)."""
import logging

import numpy as np
import pytest
from scipy import ndimage

from eo_jax import errors
from eo_jax.data import splits


def _cover(corners, size, shape):
  """(H, W) bool: the pixels of every window."""
  covered = np.zeros(shape, bool)
  for top, left in corners:
    covered[top:top + size, left:left + size] = True
  return covered


def _near(mask, distance):
  """Pixels within `distance` (chessboard) of `mask`."""
  return ndimage.binary_dilation(mask, np.ones((2 * distance + 1,) * 2, bool))


def _labels(shape, k=5, seed=0):
  """A class map of k classes in 6 px cells, a quarter unlabelled (-1)."""
  rng = np.random.default_rng(seed)
  cells = rng.integers(0, k, (shape[0] // 6 + 1, shape[1] // 6 + 1))
  labels = np.kron(cells, np.ones((6, 6), int))[:shape[0], :shape[1]]
  labels[rng.random(shape) < 0.25] = -1
  return labels


@pytest.mark.parametrize("shape,patch,stride,seed", [
    ((145, 145), 9, 1, 0), ((101, 100), 16, 8, 3), ((90, 211), 5, 2, 7),
    ((64, 64), 8, 8, 1)])
def test_no_pixel_of_a_test_patch_lies_in_or_near_a_train_patch(
    shape, patch, stride, seed):
  split = splits.spatial_split(shape, patch, seed=seed, labels=_labels(shape))
  assert split.names == ("train", "val", "test") and split.margin == patch
  cover = {name: _cover(split.corners(name, patch, stride), patch, shape)
           for name in split.names}
  for name in split.names:
    assert cover[name].any(), name
    # Footprints lie inside their own split's area.
    assert np.all(split.regions[cover[name]] == split.index(name))
  for a in split.names:
    for b in split.names:
      if a != b:
        # Not only disjoint: more than `margin` px apart.
        assert not (_near(cover[a], patch) & cover[b]).any(), (a, b)


def test_areas_of_different_splits_are_a_margin_apart():
  shape = (120, 130)
  for margin in (7, 10, 13):
    split = splits.spatial_split(shape, 7, seed=2, block_size=30,
                                 margin=margin)
    assert split.margin == margin
    for s in range(3):
      mine = split.regions == s
      others = (split.regions >= 0) & ~mine
      assert not (_near(mine, margin) & others).any()
    # The margin belongs to no split, and is not wider than it must be; the
    # scene's own edge is no border (its corners are blocks' insides).
    assert (split.regions == splits.NO_SPLIT).any()
    assert all(split.regions[r, c] >= 0 for r in (0, -1) for c in (0, -1))
    assert np.mean(split.regions == splits.NO_SPLIT) < 0.6


def test_block_fractions_and_class_shares_are_roughly_respected():
  shape = (300, 300)
  labels = _labels(shape, k=4, seed=5)
  split = splits.spatial_split(shape, 9, fractions=(0.6, 0.2, 0.2), seed=0,
                               labels=labels)
  blocks = np.bincount(split.blocks.ravel(), minlength=3) / split.blocks.size
  np.testing.assert_allclose(blocks, [0.6, 0.2, 0.2], atol=0.03)
  kept = split.regions >= 0
  area = np.bincount(split.regions[kept], minlength=3) / kept.sum()
  np.testing.assert_allclose(area, [0.6, 0.2, 0.2], atol=0.08)
  for c in range(4):
    pixels = (labels == c) & kept
    share = np.bincount(split.regions[pixels], minlength=3) / pixels.sum()
    np.testing.assert_allclose(share, [0.6, 0.2, 0.2], atol=0.1)
  # A mapping names the splits; a zero share leaves a split out.
  two = splits.spatial_split(shape, 9, fractions={"train": 0.75, "val": 0.25})
  assert two.names == ("train", "val")
  assert splits.spatial_split(shape, 9, fractions=(0.8, 0.2, 0.0)).names == (
      "train", "val")


def test_label_balancing_gives_every_split_every_class():
  shape = (96, 96)
  labels = np.full(shape, -1)
  labels[5:20, 5:20] = 0          # a class in one corner only...
  labels[70:90, 60:90] = 1
  labels[30:60, :] = 2
  labels[::7, ::5] = 3
  balanced = splits.spatial_split(shape, 5, seed=0, block_size=12,
                                  labels=labels)
  for name in balanced.names:
    present = np.unique(labels[balanced.area(name) & (labels >= 0)])
    assert set(present) >= {1, 2, 3}, name


def test_deterministic_for_a_seed_and_different_across_seeds():
  shape, labels = (150, 120), _labels((150, 120))
  a = splits.spatial_split(shape, 9, seed=4, labels=labels)
  b = splits.spatial_split(shape, 9, seed=4, labels=labels)
  c = splits.spatial_split(shape, 9, seed=5, labels=labels)
  np.testing.assert_array_equal(a.regions, b.regions)
  np.testing.assert_array_equal(a.corners("test", 9, 3), b.corners("test", 9, 3))
  assert not np.array_equal(a.regions, c.regions)
  d = splits.spatial_split(shape, 9, seed=4)  # no labels: one draw
  np.testing.assert_array_equal(d.regions,
                                splits.spatial_split(shape, 9, seed=4).regions)


def test_window_corners_are_anchored_at_each_area():
  mask = np.zeros((40, 40), bool)
  mask[3:13, 5:14] = True    # 10 x 9: one 8 x 8 window at (3, 5)
  mask[20:36, 21:37] = True  # 16 x 16: four 8 x 8 windows
  corners = splits.window_corners(mask, 8, 8)
  assert corners.tolist() == [[3, 5], [20, 21], [20, 29], [28, 21], [28, 29]]
  dense = splits.window_corners(mask, 8, 1)
  assert len(dense) == 3 * 2 + 9 * 9
  assert all(mask[t:t + 8, l:l + 8].all() for t, l in dense)
  assert splits.window_corners(np.zeros((9, 9), bool), 3, 1).shape == (0, 2)


def test_sizes_that_cannot_work_fail_with_the_key_to_change():
  with pytest.raises(errors.ConfigValueError, match="config.data.margin"):
    splits.spatial_split((100, 100), 9, margin=4)
  with pytest.raises(errors.ConfigValueError, match="block_size"):
    splits.spatial_split((30, 30), 9, block_size=40)
  with pytest.raises(errors.ConfigValueError, match="block_size"):
    splits.spatial_split((100, 100), 9, block_size=5)
  with pytest.raises(errors.ConfigValueError, match="sum to 1"):
    splits.spatial_split((100, 100), 9, fractions=(0.5, 0.2, 0.2))
  with pytest.raises(errors.ConfigValueError, match="train split no share"):
    splits.spatial_split((100, 100), 9, fractions={"val": 0.5, "test": 0.5})
  with pytest.raises(errors.ConfigValueError, match="config.data.split must"):
    splits.make_split("random", (10, 10), 3)
  with pytest.raises(errors.ConfigValueError, match="no label map"):
    splits.make_split(splits.LEAKY, (10, 10), 3)


def test_random_pixel_split_is_explicit_leaky_and_says_why(caplog):
  labels = _labels((60, 60), k=3)
  with caplog.at_level(logging.WARNING):
    split = splits.make_split(splits.LEAKY, labels.shape, 5,
                              (0.5, 0.25, 0.25), seed=1, labels=labels)
  assert split.kind == splits.LEAKY
  assert "inflated" in caplog.text and "Nalepa" in caplog.text
  # Every labelled pixel is in a split, stratified by class; no margins.
  np.testing.assert_array_equal(split.regions >= 0, labels >= 0)
  for c in range(3):
    share = np.bincount(split.regions[labels == c], minlength=3)
    np.testing.assert_allclose(share / share.sum(), [0.5, 0.25, 0.25],
                               atol=0.01)
  # Test pixels sit right next to train pixels: the leak.
  assert (_near(split.area("train"), 1) & split.area("test")).any()
