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

from eo_jax.evaluate.collapse import prototype_usage
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
    used, perplexity = prototype_usage(np.concatenate(self._prototypes))
    out["prototypes_used"] = float(used)
    out["prototype_perplexity"] = perplexity
    return out


@EVALUATORS.register("dino")
class DINOEvaluator(PredictionEvaluator):
  """DINO's eval outputs summarised by `DINOMetrics`; see `PredictionEvaluator`."""

  def make_metrics(self) -> DINOMetrics:
    return DINOMetrics()
