"""Collapse diagnostics ('collapse' evaluator): is self-supervised training learning?

A self-distillation run can collapse while its loss looks reasonable: every
image gets the same embedding (complete collapse), the embeddings fill a few
directions only (dimensional collapse), or DINO's teacher sends every image
to one prototype or to none in particular. One pass over a split, at every
evaluation, tells these apart. For the class-token (or pooled) embeddings
('cls', (B, D)) and the patch tokens ('patch', (B, N, D), all tokens of all
images pooled) of the objective's `diagnostics`:

* '<t>_rank': the effective rank, exp of the entropy of the normalised
  singular values s_k / sum(s) of the CENTRED embedding matrix (Roy &
  Vetterli 2007; RankMe, Garrido et al. 2023, without centring): the number
  of directions the embeddings vary in. 0 when every embedding is the same,
  1 when they differ along one line, D when all D directions carry the same
  variance. Centred because an offset shared by every embedding (large in a
  freshly initialised ViT) tells images apart no better than nothing.
* '<t>_std': the standard deviation of each dimension of the l2-normalised
  embeddings, averaged over dimensions and multiplied by sqrt(D) (SimSiam's
  collapse curve, rescaled): 0 when every embedding is the same, about 1
  for embeddings spread evenly over the sphere.
* '<t>_cosine': the mean cosine similarity over pairs of different
  embeddings: 1 when collapsed, about 0 when spread.

and, where the objective provides them (DINO): the split means of its
per-example scalars ('teacher_entropy', 'student_entropy', 'kl' =
KL(teacher || student), 'loss', 'cosine', 'teacher_uniformity' = teacher
entropy / ln(prototypes): 1 for a uniform teacher) and, from each image's top teacher
prototype, 'prototypes_used' and 'prototype_perplexity' (exp of the entropy
of the usage histogram: the number of equally used prototypes it is worth).

Every number is exact over the split whatever the batch size: the rank comes
from the covariance accumulated as sums of x and x x^T (its eigenvalues
are the squared singular values of the centred matrix, over n), the std and
cosine from running sums of the normalised embeddings.

When 'cls_rank' falls below `min_rank`, 'cls_std' below `min_std`,
'prototypes_used' below `min_prototypes` or 'teacher_uniformity' rises
above `max_uniformity`, the
evaluator logs a one-line warning with what to try. A uniform teacher is
normal for the first steps of a run (its temperature warmup); it should
sharpen within the warmup. The rank alone misses a near-complete collapse:
centring removes the shared direction, and embeddings that differ by
rounding-sized amounts in every direction still have a high rank; their
'cls_std' is then ~0 and their 'cls_cosine' ~1.
Downstream quality (kNN accuracy on labelled data) is the 'knn' evaluator's
job, run in the same round (`config.probe_evals`).

  c.evals.collapse = dict(type='collapse', split='val', min_rank=4.0,
                          min_std=0.05, min_prototypes=8, max_uniformity=0.95)
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from absl import logging

from eo_jax.errors import ConfigValueError
from eo_jax.evaluate.common import EVALUATORS, EvalContext, EvalOutput, Evaluator

EMBEDDINGS = ("cls", "patch")


def _perplexity(weights: np.ndarray) -> float:
  """exp(entropy) of the distribution proportional to positive `weights`."""
  p = weights[weights > 0] / weights.sum()
  return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(singular_values: np.ndarray) -> float:
  """exp(entropy of s / sum(s)); 0 for an all-zero matrix."""
  s = np.clip(np.asarray(singular_values, np.float64), 0.0, None)
  return _perplexity(s) if s.sum() > 0 else 0.0


def prototype_usage(indices: np.ndarray) -> tuple[int, float]:
  """(distinct prototypes among `indices`, perplexity of their histogram)."""
  _, counts = np.unique(np.asarray(indices).reshape(-1), return_counts=True)
  return int(len(counts)), _perplexity(counts.astype(np.float64))


class EmbeddingStats:
  """Effective rank, normalised std and mean pairwise cosine of the rows of
  every (n, D) matrix passed to `update`, as if they were one matrix."""

  def __init__(self):
    self._gram: np.ndarray | None = None
    self._sum: np.ndarray | None = None
    self._sum_unit: np.ndarray | None = None
    self._sum_unit_sq: np.ndarray | None = None
    self._count = 0

  def update(self, x: np.ndarray) -> None:
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    unit = x / np.maximum(norms, 1e-12)
    if self._gram is None:
      d = x.shape[-1]
      self._gram = np.zeros((d, d))
      self._sum = np.zeros(d)
      self._sum_unit = np.zeros(d)
      self._sum_unit_sq = np.zeros(d)
    self._gram += x.T @ x
    self._sum += x.sum(0)
    self._sum_unit += unit.sum(0)
    self._sum_unit_sq += (unit ** 2).sum(0)
    self._count += len(x)

  @property
  def count(self) -> int:
    return self._count

  def result(self) -> dict[str, float]:
    if not self._count:
      raise ValueError("EmbeddingStats got no embeddings; is the split empty?")
    n, d = self._count, len(self._sum_unit)
    # n * covariance = X^T X - n m m^T: the centred matrix's Gram. Variances
    # below 1e-9 of the embeddings' energy are rounding (identical
    # embeddings leave ~1e-16 of it), not directions.
    eigenvalues = np.linalg.eigvalsh(self._gram - np.outer(self._sum, self._sum) / n)
    eigenvalues[eigenvalues < 1e-9 * np.trace(self._gram)] = 0.0
    mean = self._sum_unit / n
    var = np.clip(self._sum_unit_sq / n - mean ** 2, 0.0, None)
    out = {"rank": effective_rank(np.sqrt(np.clip(eigenvalues, 0.0, None))),
           "std": float(np.sqrt(var).mean() * np.sqrt(d))}
    if n > 1:
      # sum over pairs i != j of u_i . u_j = |sum u|^2 - sum |u|^2.
      pairs = float(self._sum_unit @ self._sum_unit - self._sum_unit_sq.sum())
      out["cosine"] = pairs / (n * (n - 1))
    return out


class CollapseMetrics:
  """Accumulates `diagnostics` outputs; see the module docstring."""

  def __init__(self):
    self._stats = {name: EmbeddingStats() for name in EMBEDDINGS}
    self._sums: dict[str, float] = {}
    self._count = 0
    self._prototypes: list[np.ndarray] = []

  def update(self, outputs: Mapping[str, Any]) -> None:
    for name, value in outputs.items():
      value = np.asarray(value)
      if name in self._stats:
        self._stats[name].update(value)
      elif name == "prototype":
        self._prototypes.append(value.reshape(-1))
      elif value.ndim == 1 and np.issubdtype(value.dtype, np.floating):
        self._sums[name] = self._sums.get(name, 0.0) + float(value.astype(np.float64).sum())
    self._count += len(np.asarray(next(iter(outputs.values()))))

  def result(self) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, stats in self._stats.items():
      if stats.count:
        out.update({f"{name}_{k}": v for k, v in stats.result().items()})
    out.update({k: v / self._count for k, v in self._sums.items()})
    if self._prototypes:
      used, perplexity = prototype_usage(np.concatenate(self._prototypes))
      out["prototypes_used"] = float(used)
      out["prototype_perplexity"] = perplexity
    return out


_ADVICE = {
    "dino": ("a teacher temperature of 0.04 throughout (config.dino.teacher_temp "
             "and warmup_teacher_temp; the DINO configs' small_batch=True), "
             "centering='sinkhorn_knopp', a larger config.dino.koleo_weight, "
             "LayerScale off (config.model.layerscale_init=None), or a lower "
             "config.optim.lr with a longer warmup"),
    "": ("lower config.optim.lr or lengthen its warmup, and check the "
         "augmentations are not removing all content"),
}


def collapse_warning(result: Mapping[str, float], step: int, *, min_rank: float,
                     min_prototypes: float, min_std: float = 0.0,
                     max_uniformity: float = 1.0, objective: str = "") -> str:
  """A one-line warning if `result` shows collapse, else ''."""
  signs = []
  if "cls_rank" in result and result["cls_rank"] < min_rank:
    signs.append(f"effective rank of the embeddings {result['cls_rank']:.2f} "
                 f"< {min_rank:g}")
  if "cls_std" in result and result["cls_std"] < min_std:
    signs.append(f"normalised std of the embeddings {result['cls_std']:.3g} "
                 f"< {min_std:g}")
  if "prototypes_used" in result and result["prototypes_used"] < min_prototypes:
    signs.append(f"{result['prototypes_used']:.0f} prototypes in use "
                 f"< {min_prototypes:g}")
  if result.get("teacher_uniformity", 0.0) > max_uniformity:
    signs.append(f"teacher entropy {result['teacher_uniformity']:.1%} of uniform "
                 f"> {max_uniformity:.0%}")
  if not signs:
    return ""
  advice = _ADVICE.get(objective, _ADVICE[""])
  return (f"Step {step}: the run looks collapsed ({'; '.join(signs)}). "
          f"Try: {advice}.")


@EVALUATORS.register("collapse")
class CollapseEvaluator(Evaluator):
  """Collapse diagnostics of the objective's `diagnostics` over a split.

  Settings (besides the common ones):
    min_rank: warn when 'cls_rank' is below it.
    min_prototypes: warn when 'prototypes_used' is below it (DINO).
    min_std: warn when 'cls_std' is below it.
    max_uniformity: warn when 'teacher_uniformity' is above it (DINO).
  """

  def __init__(self, name: str, context: EvalContext, *, min_rank: float = 4.0,
               min_std: float = 0.05, min_prototypes: float = 8,
               max_uniformity: float = 0.95, **common: Any):
    super().__init__(name, context, **common)
    if not context.objective.has_diagnostics:
      raise ConfigValueError(
          f"config.evals.{name} (type 'collapse') needs an objective with "
          f"`diagnostics` (dino, mae); {type(context.objective).__name__} has none.")
    self.min_rank = float(min_rank)
    self.min_std = float(min_std)
    self.min_prototypes = float(min_prototypes)
    self.max_uniformity = float(max_uniformity)
    self._fn = context.objective.eval_fn("diagnostics")
    self._objective = str(context.objective.config.get("objective", ""))

  def run(self, state: Any, step: int) -> EvalOutput:
    metrics = CollapseMetrics()
    for outputs, _ in self.outputs(self._fn, state):
      metrics.update(outputs)
    result = metrics.result()
    warning = collapse_warning(result, step, min_rank=self.min_rank,
                               min_prototypes=self.min_prototypes,
                               min_std=self.min_std,
                               max_uniformity=self.max_uniformity,
                               objective=self._objective)
    if warning:
      logging.warning("%s", warning)
    return EvalOutput(result, {})
