"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of DINO (Caron et al. 2021): features are L2-normalised, the k
most cosine-similar training examples vote for their class with weight
exp(similarity / temperature), and the class with the largest total wins.

Ties at the k-th place go to the training examples that come first in the
training set, so the votes never depend on how a partial sort happens to
order equal similarities.
"""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def nearest(sim: np.ndarray, k: int) -> np.ndarray:
  """(n_query, n_train) bool: each row's k largest entries, earliest on ties."""
  kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1:k]
  better = sim > kth
  tied = sim == kth
  # Of the tied entries, the first (k - #better) in training order.
  room = k - better.sum(axis=1, keepdims=True)
  return better | (tied & (np.cumsum(tied, axis=1) <= room))


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray,
               query_features: np.ndarray, *, k: int, temperature: float,
               num_classes: int, chunk: int = 1024) -> np.ndarray:
  """Returns (n_query, num_classes) vote totals of the k nearest neighbours."""
  if len(train_features) == 0:
    raise ValueError("kNN needs at least one training feature.")
  k = min(k, len(train_features))
  train = l2_normalize(train_features)
  onehot = np.eye(num_classes)[np.asarray(train_labels, np.int64)]
  scores = np.zeros((len(query_features), num_classes), np.float64)
  for start in range(0, len(query_features), chunk):
    sim = l2_normalize(query_features[start:start + chunk]) @ train.T
    weights = np.where(nearest(sim, k), np.exp(sim.astype(np.float64) / temperature),
                       0.0)
    scores[start:start + chunk] = weights @ onehot
  return scores
