"""Tests of the deterministic stratified split shared by the datasets."""
import numpy as np
import pytest

from eo_jax.data.datasets.base import stratified_split


def _labels():
  # Unequal class sizes, shuffled order.
  labels = np.repeat(np.arange(4), [100, 50, 30, 7])
  return np.random.default_rng(0).permutation(labels)


def test_split_is_a_disjoint_cover_with_class_proportions():
  labels = _labels()
  parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
  together = np.concatenate(parts)
  assert len(together) == len(labels) == len(set(together.tolist()))
  for c, n in enumerate([100, 50, 30, 7]):
    counts = [int((labels[p] == c).sum()) for p in parts]
    # Cumulative cuts at round(0.6 n), round(0.8 n).
    cut1, cut2 = round(0.6 * n), round(0.8 * n)
    assert counts == [cut1, cut2 - cut1, n - cut2]


def test_split_is_deterministic_and_depends_on_the_seed():
  labels = _labels()
  a = stratified_split(labels, (0.5, 0.5), seed=1)
  b = stratified_split(labels, (0.5, 0.5), seed=1)
  c = stratified_split(labels, (0.5, 0.5), seed=2)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[0], c[0])
  assert all(np.all(np.diff(p) > 0) for p in a)  # sorted indices


def test_fractions_must_sum_to_one():
  with pytest.raises(ValueError, match="sum to 1"):
    stratified_split([0, 1], (0.5, 0.4), seed=0)
