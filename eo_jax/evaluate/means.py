"""Exact split means of per-example values ('mean' evaluator).

Self-supervised objectives (MAE) evaluate with per-example losses; their
split value is the mean over every example, not a mean of batch means, so it
does not depend on the batch size or on padding.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from eo_jax.evaluate.common import EVALUATORS, PredictionEvaluator


class MeanMetrics:
  """Exact means of per-example values over a whole split.

  Args:
    keys: the outputs to average; None -> every floating output of the first
      batch.
  """

  def __init__(self, keys: Sequence[str] | None = None):
    self.keys = None if keys is None else tuple(keys)
    self._sums: dict[str, float] = {}
    self._count = 0

  def update(self, outputs: Mapping[str, Any]) -> None:
    if self.keys is None:
      self.keys = tuple(k for k, v in outputs.items()
                        if np.issubdtype(np.asarray(v).dtype, np.floating))
    n = None
    for k in self.keys:
      values = np.asarray(outputs[k], np.float64).reshape(-1)
      if n is not None and len(values) != n:
        raise ValueError(f"Outputs of different lengths: {k} has {len(values)}, "
                         f"expected {n}.")
      n = len(values)
      self._sums[k] = self._sums.get(k, 0.0) + float(values.sum())
    self._count += n or 0

  def result(self) -> dict[str, float]:
    if not self._count:
      raise ValueError("MeanMetrics got no examples; is the split empty?")
    return {k: self._sums[k] / self._count for k in self.keys}


@EVALUATORS.register("mean")
class MeanEvaluator(PredictionEvaluator):
  """The split mean of every floating per-example output of the eval function
  (e.g. MAE's 'loss' and 'pixel_mse'); see `PredictionEvaluator`."""

  def make_metrics(self) -> MeanMetrics:
    return MeanMetrics()
