"""Collapse diagnostics against hand-computed values, numpy's SVD, and a
constructed collapse that must raise the warning."""
import logging

import ml_collections
import numpy as np
import pytest

from eo_jax import sharding
from eo_jax.data.datasets import build_dataset
from eo_jax.errors import ConfigValueError
from eo_jax.evaluate import EvalContext, build_evaluators
from eo_jax.evaluate.collapse import (CollapseMetrics, EmbeddingStats,
                                      collapse_warning, effective_rank,
                                      prototype_usage)
from eo_jax.evaluate.runner import EvalRunner


def _stats(*chunks) -> dict[str, float]:
  stats = EmbeddingStats()
  for chunk in chunks:
    stats.update(np.asarray(chunk, np.float64))
  return stats.result()


def test_effective_rank_by_hand():
  # p = (3/4, 1/4): exp(-(0.75 ln 0.75 + 0.25 ln 0.25)) = 1.7548...
  assert effective_rank(np.array([3.0, 1.0, 0.0])) == pytest.approx(1.754765, rel=1e-6)
  assert effective_rank(np.full(7, 2.5)) == pytest.approx(7.0, rel=1e-12)
  assert effective_rank(np.zeros(3)) == 0.0


def test_collapsed_batch():
  """Every embedding the same: no direction varies, std 0, cosine 1."""
  row = np.array([0.3, -1.2, 2.0, 0.7])
  out = _stats(np.tile(row, (5, 1)), np.tile(row, (3, 1)))
  assert out["rank"] == 0.0
  assert out["std"] == pytest.approx(0.0, abs=1e-7)
  assert out["cosine"] == pytest.approx(1.0, rel=1e-12)


def test_isotropic_batch():
  """The rows +-e_i of R^D: equal variance in every direction (rank D), each
  normalised dimension has variance 1/D (std x sqrt(D) = 1), and the mean
  cosine over the 2D(2D-1) ordered pairs is -2D / (2D(2D-1)) = -1/(2D-1)."""
  d = 6
  out = _stats(np.eye(d) * 2.0, -np.eye(d) * 2.0)
  assert out["rank"] == pytest.approx(d, rel=1e-12)
  assert out["std"] == pytest.approx(1.0, rel=1e-12)
  assert out["cosine"] == pytest.approx(-1 / (2 * d - 1), rel=1e-12)


def test_rank_of_a_centred_matrix_by_hand():
  # Centred already; column norms sqrt(18) and sqrt(2): singular values in
  # the ratio 3 : 1, so the rank is 1.7548 as above. A shared offset added
  # to every row changes nothing (centring).
  x = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  assert _stats(x)["rank"] == pytest.approx(1.754765, rel=1e-6)
  assert _stats(x + [10.0, -4.0])["rank"] == pytest.approx(1.754765, rel=1e-6)


def test_matches_numpy_svd_whatever_the_batches():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 8)) @ np.diag([4.0, 2, 1, 1, 0.5, 0.2, 0.1, 0.0]) + 1.5
  s = np.linalg.svd(x - x.mean(0), compute_uv=False)
  p = s / s.sum()
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  cos = unit @ unit.T
  expected = {"rank": np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()),
              "std": unit.std(0).mean() * np.sqrt(8),
              "cosine": (cos.sum() - np.trace(cos)) / (50 * 49)}
  for chunks in ((x,), (x[:7], x[7:31], x[31:])):
    got = _stats(*chunks)
    for key, value in expected.items():
      assert got[key] == pytest.approx(value, rel=1e-9), key


def test_prototype_usage_by_hand():
  used, perplexity = prototype_usage(np.array([5, 5, 1, 9]))
  assert used == 3
  # p = (1/2, 1/4, 1/4): exp(1.5 ln 2) = 2 sqrt(2).
  assert perplexity == pytest.approx(2 * np.sqrt(2), rel=1e-12)
  assert prototype_usage(np.zeros(10, int)) == (1, 1.0)


def test_collapse_metrics_pool_patch_tokens_and_average_scalars():
  rng = np.random.default_rng(1)
  cls = rng.normal(size=(6, 4))
  patch = rng.normal(size=(6, 3, 4))
  entropy = rng.uniform(size=6)
  metrics = CollapseMetrics()
  for part in (slice(0, 2), slice(2, 6)):
    metrics.update({"cls": cls[part], "patch": patch[part],
                    "teacher_entropy": entropy[part],
                    "prototype": np.array([0, 1, 1, 3, 3, 3])[part]})
  out = metrics.result()
  patch_stats = _stats(patch.reshape(18, 4))
  for key in ("rank", "std", "cosine"):
    assert out[f"patch_{key}"] == pytest.approx(patch_stats[key], rel=1e-12)
    assert out[f"cls_{key}"] == pytest.approx(_stats(cls)[key], rel=1e-12)
  assert out["teacher_entropy"] == pytest.approx(entropy.mean(), rel=1e-12)
  assert out["prototypes_used"] == 3
  # p = (1/6, 2/6, 3/6).
  p = np.array([1, 2, 3]) / 6
  assert out["prototype_perplexity"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_warning_names_what_collapsed():
  healthy = {"cls_rank": 12.0, "prototypes_used": 40.0}
  assert collapse_warning(healthy, 10, min_rank=4, min_prototypes=8) == ""
  line = collapse_warning({"cls_rank": 1.2, "prototypes_used": 40.0}, 10,
                          min_rank=4, min_prototypes=8, objective="dino")
  assert "Step 10" in line and "1.20 < 4" in line and "teacher_temp" in line
  assert "prototypes" not in line.split("Try:")[0]
  line = collapse_warning({"cls_rank": 12.0, "prototypes_used": 3.0}, 10,
                          min_rank=4, min_prototypes=8)
  assert "3 prototypes in use < 8" in line and "\n" not in line
  uniform = {"cls_rank": 12.0, "prototypes_used": 40.0, "teacher_uniformity": 0.97}
  assert collapse_warning(uniform, 10, min_rank=4, min_prototypes=8) == ""
  line = collapse_warning(uniform, 10, min_rank=4, min_prototypes=8,
                          max_uniformity=0.95)
  assert "97.0% of uniform > 95%" in line
  # Nearly identical embeddings: centring leaves rounding-sized differences
  # with a high rank, the std tells.
  near = {"cls_rank": 12.0, "cls_std": 0.001}
  assert collapse_warning(near, 10, min_rank=4, min_prototypes=8) == ""
  assert "std of the embeddings 0.001 < 0.05" in collapse_warning(
      near, 10, min_rank=4, min_prototypes=8, min_std=0.05)


DATA = dict(name="synthetic", num_bands=3, num_classes=3, image_size=4,
            num_train=8, num_val=20, num_test=4, noise=3.0)


class _Scaled:
  """An objective whose diagnostics are each image's pixels times `state`."""
  has_diagnostics = True
  has_embed = False
  default_evaluator = "mean"
  config = ml_collections.ConfigDict(dict(objective="dino"))

  def __init__(self, info):
    self.info = info

  def eval_fn(self, name):
    assert name == "diagnostics"
    return lambda state, batch: {
        "cls": batch["image"].reshape(len(batch["image"]), -1) * state,
        "patch": batch["image"].reshape(len(batch["image"]), -1, 3) * state,
        "prototype": (batch["image"][:, 0, 0, 0] > 0).astype(np.int32) * state}


def _evaluator(objective_cls=_Scaled, **settings):
  dataset = build_dataset(ml_collections.ConfigDict(DATA))
  context = EvalContext(
      objective=objective_cls(dataset.info), dataset=dataset,
      runner=EvalRunner(sharding.make_mesh(), ml_collections.ConfigDict(dict(
          batch_size=8, eval_batch_size=0, image_size=0, prefetch=2))))
  evals = ml_collections.ConfigDict(dict(collapse=dict(
      type="collapse", split="val", batch_size=8, **settings)))
  (evaluator,) = build_evaluators(evals, context)
  return evaluator, dataset


def test_evaluator_over_a_split_and_the_warning(caplog):
  evaluator, dataset = _evaluator(min_rank=2.0, min_prototypes=2)
  mean = np.array([b.mean for b in dataset.info.bands])
  std = np.array([b.std for b in dataset.info.bands])
  source = dataset.split("val")
  images = np.stack([(source[i]["image"] - mean) / std for i in range(len(source))])
  with caplog.at_level(logging.WARNING):
    got = evaluator.run(1, step=3).metrics
  assert not [r for r in caplog.records if "collapsed" in r.getMessage()]
  expected = _stats(images.reshape(20, -1))
  for key, value in expected.items():
    assert got[f"cls_{key}"] == pytest.approx(value, rel=1e-5), key
  assert got["cls_rank"] > 2.0 and got["prototypes_used"] == 2
  # A collapsed network: every embedding 0, every image on prototype 0.
  with caplog.at_level(logging.WARNING):
    got = evaluator.run(0, step=4).metrics
  assert got["cls_rank"] == 0.0 and got["prototypes_used"] == 1
  (record,) = [r for r in caplog.records if "collapsed" in r.getMessage()]
  assert record.levelno == logging.WARNING
  assert record.getMessage().startswith("Step 4: the run looks collapsed")


def test_objective_without_diagnostics_is_refused():
  class _NoDiagnostics(_Scaled):
    has_diagnostics = False

  with pytest.raises(ConfigValueError, match="needs an objective with `diagnostics`"):
    _evaluator(_NoDiagnostics)
