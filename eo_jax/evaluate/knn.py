"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of DINO (Caron et al. 2021): features are L2-normalised, the k
most cosine-similar training examples vote for their class with weight
exp(similarity / temperature), and the class with the largest total wins.
"""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray,
               query_features: np.ndarray, *, k: int, temperature: float,
               num_classes: int, chunk: int = 1024) -> np.ndarray:
  """Returns (n_query, num_classes) vote totals of the k nearest neighbours."""
  if len(train_features) == 0:
    raise ValueError("kNN needs at least one training feature.")
  k = min(k, len(train_features))
  train = l2_normalize(train_features)
  labels = np.asarray(train_labels, np.int64)
  scores = np.zeros((len(query_features), num_classes), np.float64)
  for start in range(0, len(query_features), chunk):
    query = l2_normalize(query_features[start:start + chunk])
    sim = query @ train.T
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    top_sim = np.take_along_axis(sim, nearest, axis=1)
    weights = np.exp(top_sim.astype(np.float64) / temperature)
    rows = np.repeat(np.arange(len(query))[:, None], k, axis=1)
    np.add.at(scores[start:start + chunk], (rows, labels[nearest]), weights)
  return scores
