"""DINO's validation numbers ('dino' evaluator): loss means and prototype use.

Beside the exact split means of the per-example values (loss, teacher /
student cosine, teacher entropy), it counts how many prototypes are some
image's top prototype: a collapse alarm (1 means every image maps to the
same prototype), with the perplexity of that histogram (the number of
equally used prototypes it is worth).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from eo_jax.evaluate.common import EVALUATORS, PredictionEvaluator
from eo_jax.evaluate.means import MeanMetrics


class DINOMetrics:
  """Means of 'loss', 'cosine', 'teacher_entropy'; use of 'prototype'."""

  MEANS = ("loss", "cosine", "teacher_entropy")

  def __init__(self):
    self._means = MeanMetrics(self.MEANS)
    self._prototypes: list[np.ndarray] = []

  def update(self, outputs: Mapping[str, Any]) -> None:
    self._means.update(outputs)
    self._prototypes.append(np.asarray(outputs["prototype"]).reshape(-1))

  def result(self) -> dict[str, float]:
    out = self._means.result()
    _, counts = np.unique(np.concatenate(self._prototypes), return_counts=True)
    p = counts / counts.sum()
    out["prototypes_used"] = float(len(counts))
    out["prototype_perplexity"] = float(np.exp(-(p * np.log(p)).sum()))
    return out


@EVALUATORS.register("dino")
class DINOEvaluator(PredictionEvaluator):
  """DINO's eval outputs summarised by `DINOMetrics`; see `PredictionEvaluator`."""

  def make_metrics(self) -> DINOMetrics:
    return DINOMetrics()
