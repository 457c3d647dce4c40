"""Tests for eo_jax.evaluate.knn and eo_jax.evaluate.linear_probe.

The kNN vote totals are worked out by hand from cosine similarities that are
exact decimals (3-4-5 triangles); the linear probe is checked against
properties that follow from its definition (training-set standardisation,
a per-example affine map, symmetry of a symmetric problem).
"""
import numpy as np
import pytest

from eo_jax.evaluate.knn import knn_scores
from eo_jax.evaluate.linear_probe import fit_linear_probe

# Training features are NOT unit length, so the votes below are only right
# if the code normalises them: |(3, 4)| = 5, |(8, 6)| = 10, |(0, 2)| = 2.
TRAIN = np.array([[1.0, 0.0],    # label 0, direction (1, 0)
                  [3.0, 4.0],    # label 1, direction (0.6, 0.8)
                  [8.0, 6.0],    # label 1, direction (0.8, 0.6)
                  [0.0, 2.0],    # label 0, direction (0, 1)
                  [-1.0, 0.0]],  # label 2, direction (-1, 0)
                 np.float32)
LABELS = np.array([0, 1, 1, 0, 2])
# Query (2, 0) has cosines 1, 0.6, 0.8, 0, -1 with the five training points;
# query (0, -3) has cosines 0, -0.8, -0.6, -1, 0.
QUERIES = np.array([[2.0, 0.0], [0.0, -3.0]], np.float32)


def _knn(train=TRAIN, labels=LABELS, queries=QUERIES, **kw):
  kw.setdefault("num_classes", 3)
  return knn_scores(train, labels, queries, **kw)


# --- kNN -------------------------------------------------------------------


def test_knn_votes_by_hand_at_two_temperatures():
  # k = 3 for query (2, 0): cosines 1 (class 0), 0.8 and 0.6 (class 1).
  # T = 0.5: class 0 gets e^2 = 7.389056, class 1 e^1.6 + e^1.2 = 4.953032 +
  # 3.320117 = 8.273149: the two farther class-1 neighbours outvote the
  # nearest one.
  # Query (0, -3): cosines 0 (class 0), 0 (class 2), -0.6 (class 1):
  # e^0 = 1, e^0 = 1, e^-1.2 = 0.301194.
  got = _knn(k=3, temperature=0.5)
  np.testing.assert_allclose(got, [[7.389056099, 8.273149347, 0.0],
                                   [1.0, 0.301194212, 1.0]], rtol=1e-6)
  assert got[0].argmax() == 1
  # T = 0.1 sharpens the weights: e^10 = 22026.47 against e^8 + e^6 =
  # 2980.958 + 403.429 = 3384.387, and the nearest neighbour's class wins.
  got = _knn(queries=QUERIES[:1], k=3, temperature=0.1)
  np.testing.assert_allclose(got, [[22026.46579, 3384.386781, 0.0]],
                             rtol=1e-6)
  assert got[0].argmax() == 0


def test_knn_normalises_training_and_query_features():
  ref = _knn(k=3, temperature=0.5)
  # Rescaling any training or query vector by a positive factor changes no
  # cosine, hence no vote.
  scales = np.array([[7.0], [0.01], [3.0], [250.0], [0.5]], np.float32)
  np.testing.assert_allclose(_knn(train=TRAIN * scales, k=3, temperature=0.5),
                             ref, rtol=1e-6)
  np.testing.assert_allclose(
      _knn(queries=QUERIES * np.float32([[1e-3], [40.0]]), k=3,
           temperature=0.5), ref, rtol=1e-6)


def test_k_larger_than_the_training_set_uses_every_point():
  # All five points vote for query (2, 0) at T = 0.5: class 0 gets
  # e^2 + e^0 = 8.389056 (the orthogonal point now tips the balance back),
  # class 1 e^1.6 + e^1.2 = 8.273149, class 2 e^-2 = 0.135335.
  expected = [[8.389056099, 8.273149347, 0.135335283]]
  for k in (5, 6, 100):
    np.testing.assert_allclose(_knn(queries=QUERIES[:1], k=k, temperature=0.5),
                               expected, rtol=1e-6)


def test_tie_at_the_kth_place_goes_to_the_earlier_training_example():
  # (0.6, 0.8) and (0.6, -0.8) both have cosine exactly 0.6 with (1, 0) (the
  # same float32 products). With k = 2 the nearest point (cosine 1) and the
  # tied point that comes FIRST in the training set vote, whatever the
  # labels: the result cannot depend on how a partial sort orders ties.
  train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
  for labels, winner in (([0, 1, 2], 1), ([0, 2, 1], 2)):
    got = _knn(train=train, labels=np.array(labels), queries=QUERIES[:1],
               k=2, temperature=0.5)
    expected = np.zeros(3)
    expected[0] = 7.389056099          # e^(1 / 0.5)
    expected[winner] = 3.320116923     # e^(0.6 / 0.5)
    np.testing.assert_allclose(got[0], expected, rtol=1e-6)
  # Many equal similarities: the first k in training order, exactly k votes.
  train = np.tile(np.array([[1.0, 0.0]], np.float32), (6, 1))
  got = _knn(train=train, labels=np.arange(6), queries=QUERIES[:1], k=4,
             temperature=0.5, num_classes=6)
  np.testing.assert_allclose(got[0], [np.e ** 2] * 4 + [0, 0], rtol=1e-6)


def test_chunking_does_not_change_the_scores():
  rng = np.random.default_rng(0)
  train = rng.normal(size=(40, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 40)
  queries = rng.normal(size=(7, 8)).astype(np.float32)
  whole = knn_scores(train, labels, queries, k=5, temperature=0.5,
                     num_classes=4)
  for chunk in (1, 3, 7):  # chunk 3 leaves a short last chunk
    got = knn_scores(train, labels, queries, k=5, temperature=0.5,
                     num_classes=4, chunk=chunk)
    # A one-row float32 matmul may round the last bit of a cosine
    # differently from the batched one (measured: <= 6e-7 relative), so
    # the totals agree to rounding, not bit for bit.
    np.testing.assert_allclose(got, whole, rtol=1e-5)
    np.testing.assert_array_equal(got.argmax(-1), whole.argmax(-1))
  # Every query got exactly k = 5 votes, each in [e^-2, e^2] (|cos| <= 1).
  assert ((whole > 0).sum(-1) <= 5).all()
  assert (whole.sum(-1) >= 5 * np.exp(-2.0)).all()
  assert (whole.sum(-1) <= 5 * np.exp(2.0)).all()


def test_knn_without_training_features_fails_clearly():
  with pytest.raises(ValueError, match="at least one"):
    knn_scores(np.zeros((0, 2)), np.zeros((0,)), QUERIES, k=1,
               temperature=0.1, num_classes=2)


# --- Linear probe ------------------------------------------------------------


def _standard_normal_features(n, d, seed):
  """(n, d) features whose columns have mean exactly 0 and std exactly 1."""
  z = np.random.default_rng(seed).normal(size=(n, d))
  return (z - z.mean(0)) / z.std(0)


def test_probe_standardises_queries_with_the_training_statistics():
  # Z has per-dimension mean 0 and std 1; X = 100 + 5 Z, -3 + 0.5 Z has mean
  # (100, -3) and std (5, 0.5). After standardising with the TRAINING
  # statistics both probes see the same features, fit the same weights, and
  # the X-probe must score a query x exactly as the Z-probe scores
  # (x - (100, -3)) / (5, 0.5).
  z = _standard_normal_features(60, 2, seed=1)
  labels = (z[:, 0] + 0.5 * z[:, 1] > 0).astype(np.int32)
  mean, std = np.array([100.0, -3.0]), np.array([5.0, 0.5])
  x = mean + std * z
  predict_z = fit_linear_probe(z, labels, 2, epochs=50)
  predict_x = fit_linear_probe(x, labels, 2, epochs=50)

  rng = np.random.default_rng(2)
  # Queries with statistics far from the training set's.
  query_z = rng.normal(3.0, 4.0, size=(9, 2))
  got = predict_x(mean + std * query_z)
  want = predict_z(query_z)
  assert np.abs(want).max() > 1.0  # a fitted, non-trivial probe
  # float32 rounding of 100 + 5 z and the 1e-6 added to the std: ~1e-5.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  # The training mean is the origin of the standardised space, and one
  # training std along dimension i moves the logits by the i-th row of the
  # standardised weights: predict is affine in the standardised query.
  origin = predict_x(mean[None])
  step0 = predict_x((mean + [std[0], 0.0])[None]) - origin
  step1 = predict_x((mean + [0.0, std[1]])[None]) - origin
  np.testing.assert_allclose(
      predict_x((mean + [2.5 * std[0], -1.5 * std[1]])[None]),
      origin + 2.5 * step0 - 1.5 * step1, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(origin, predict_z(np.zeros((1, 2))), atol=1e-4)


def test_probe_scores_each_query_on_its_own():
  z = _standard_normal_features(40, 3, seed=3)
  labels = np.argmax(z, axis=1).astype(np.int32)
  predict = fit_linear_probe(z, labels, 3, epochs=30)
  rng = np.random.default_rng(4)
  # A batch whose mean and spread are far from the training set's, and
  # whose rows differ wildly from each other.
  batch = rng.normal(size=(6, 3)) * np.array([[1.0], [100.0], [1e-3], [5.0],
                                              [20.0], [1.0]]) + 50.0
  together = predict(batch)
  for i in range(len(batch)):
    np.testing.assert_allclose(predict(batch[i:i + 1])[0], together[i],
                               rtol=1e-6, atol=1e-5)
  # The same row inside a different batch gets the same logits.
  np.testing.assert_allclose(predict(np.stack([batch[2], -batch[2] * 7]))[0],
                             together[2], rtol=1e-6, atol=1e-5)


def test_probe_separates_a_symmetric_1d_problem():
  # Class 0 on the left of 0, class 1 on the right, mirror images of each
  # other. With zero init the exact gradient of the biases is 0 at every
  # step (the classes balance), so the decision boundary is the training
  # mean, 0, and the logit margin is odd in x. In float32 the bias gradient
  # is rounding noise that Adam scales up to steps of up to lr; measured:
  # the boundary sits 3e-4 from 0 (margin slope 2.9 per unit of x).
  x = np.array([[-3.0], [-2.0], [-1.0], [1.0], [2.0], [3.0]])
  y = np.array([0, 0, 0, 1, 1, 1], np.int32)
  predict = fit_linear_probe(x, y, 2)
  logits = predict(np.array([[-0.5], [0.0], [0.5], [-10.0], [10.0]]))
  margin = logits[:, 1] - logits[:, 0]
  slope = (margin[4] - margin[3]) / 20.0
  assert slope > 1.0  # a confident fit of separable data
  assert abs(margin[1] / slope) < 1e-2  # the boundary, in units of x
  np.testing.assert_allclose(margin[0], -margin[2], atol=0.01 * slope)
  np.testing.assert_allclose(margin[3], -margin[4], atol=0.01 * slope)
  # Held-out points on either side are classified correctly, and so is the
  # training set.
  assert margin[0] < 0 < margin[2] and margin[3] < 0 < margin[4]
  np.testing.assert_array_equal(predict(x).argmax(-1), y)


def test_probe_is_deterministic_and_ignores_the_seed():
  z = _standard_normal_features(30, 4, seed=5)
  labels = (z[:, 0] > z[:, 1]).astype(np.int32) + (z[:, 2] > 1).astype(np.int32)
  queries = np.random.default_rng(6).normal(size=(5, 4))
  a = fit_linear_probe(z, labels, 3, epochs=20, seed=0)(queries)
  b = fit_linear_probe(z, labels, 3, epochs=20, seed=0)(queries)
  c = fit_linear_probe(z, labels, 3, epochs=20, seed=7)(queries)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a, c)  # zero init: no randomness to seed
  assert np.abs(a).max() > 0.1  # and it did train
