"""Frozen-feature probes (kNN and linear) on a labelled dataset, at eval time.

Any objective that can `embed` images is probed the same way: features of
the probe dataset's train and eval splits are extracted with the current
state, then a weighted kNN (k from `config.probe.knn_k`) and a linear
classifier are scored on the eval split. This is how a self-supervised run
(MAE, DINO) reports downstream quality while it trains.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import CLASSIFICATION, DatasetInfo
from eo_jax.evaluate import metrics
from eo_jax.evaluate.batches import padded_eval_batches
from eo_jax.evaluate.knn import knn_scores
from eo_jax.evaluate.linear_probe import fit_linear_probe
from eo_jax.train import sharding


class FeatureProbe:
  """Scores frozen features of `config.probe.data` (see module docstring)."""

  def __init__(self, probe_config, train_info: DatasetInfo):
    self.config = probe_config
    self.dataset = build_dataset(probe_config.data)
    info = self.dataset.info
    if info.task != CLASSIFICATION:
      raise ValueError(f"config.probe.data {info.name!r} is a {info.task} dataset; "
                       "probes need image-level labels.")
    bands_lib.check_same(train_info.bands, info.bands,
                         f"config.probe.data ({info.name}) vs the training data")

  def _features(self, embed_step: Callable, state: Any, split: str, mesh
                ) -> tuple[np.ndarray, np.ndarray]:
    local_batch = sharding.local_batch_size(self.config.batch_size)
    feats, labels = [], []
    for local, valid in padded_eval_batches(
        self.dataset, split, {"prefetch": 2}, local_batch, self.config.image_size or None):
      batch = sharding.to_global(local, mesh)
      out, valid, label = sharding.to_host((
          embed_step(state, batch["image"]),
          sharding.to_global({"v": valid}, mesh)["v"], batch["label"]))
      feats.append(np.asarray(out, np.float32)[valid])
      labels.append(np.asarray(label)[valid])
    return np.concatenate(feats), np.concatenate(labels)

  def run(self, embed_step: Callable, state: Any, mesh) -> dict[str, float]:
    """Returns {'knn<k>/accuracy', 'knn<k>/macro_f1', 'linear/...'}."""
    k_classes = self.dataset.info.num_classes
    x_train, y_train = self._features(embed_step, state, self.config.train_split, mesh)
    x_eval, y_eval = self._features(embed_step, state, self.config.eval_split, mesh)
    results: dict[str, float] = {}

    def score(prefix: str, logits: np.ndarray) -> None:
      cm = metrics.confusion_matrix(y_eval, np.argmax(logits, -1), k_classes)
      results[f"{prefix}/accuracy"] = float(metrics.accuracy(cm))
      results[f"{prefix}/macro_f1"] = float(metrics.macro_f1(cm))

    for k in self.config.knn_k:
      score(f"knn{k}", knn_scores(x_train, y_train, x_eval, k=int(k),
                                  temperature=self.config.knn_temperature,
                                  num_classes=k_classes))
    if self.config.linear:
      predict = fit_linear_probe(x_train, y_train, k_classes,
                                 epochs=self.config.linear_epochs)
      score("linear", predict(x_eval))
    return results

