"""Frozen-feature probes at eval time: weighted kNN and a linear classifier.

Any objective that can `embed` images (supervised, MAE, DINO) is probed the
same way: features of a labelled dataset's training and evaluation splits
are extracted with the current state (once per evaluation round, shared by
every probe of the same data), then scored on the evaluation split. This is
how a self-supervised run reports downstream quality while it trains.

  c.evals.knn = dict(type='knn', prefix='probe', data=dict(name=...),
                     train_split='train', split='val', k=(10, 20))
  c.evals.linear = dict(type='linear_probe', prefix='probe', data=...)

Metrics: 'knn<k>/accuracy', 'knn<k>/macro_f1', 'linear/accuracy',
'linear/macro_f1'. With `pca_figure=True` a probe also draws the evaluated
split's features on their first two principal components, coloured by
class ('<name>_pca.png' in the workdir).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from eo_jax.data.datasets.base import CLASSIFICATION
from eo_jax.errors import ConfigValueError
from eo_jax.evaluate import metrics
from eo_jax.evaluate.common import EVALUATORS, EvalContext, EvalOutput, Evaluator
from eo_jax.evaluate.knn import knn_scores
from eo_jax.evaluate.linear_probe import fit_linear_probe


def _scores(name: str, labels: np.ndarray, logits: np.ndarray,
            num_classes: int) -> dict[str, float]:
  cm = metrics.confusion_matrix(labels, np.argmax(logits, -1), num_classes)
  return {f"{name}/accuracy": float(metrics.accuracy(cm)),
          f"{name}/macro_f1": float(metrics.macro_f1(cm))}


def knn_probe_metrics(train: tuple[np.ndarray, np.ndarray],
                      evaluation: tuple[np.ndarray, np.ndarray], *,
                      num_classes: int, k: Sequence[int] = (10, 20),
                      temperature: float = 0.07) -> dict[str, float]:
  """'knn<k>/accuracy' and 'knn<k>/macro_f1' of (features, labels) pairs."""
  (x_train, y_train), (x_eval, y_eval) = train, evaluation
  out: dict[str, float] = {}
  for kk in k:
    out.update(_scores(f"knn{kk}", y_eval, knn_scores(
        x_train, y_train, x_eval, k=int(kk), temperature=temperature,
        num_classes=num_classes), num_classes))
  return out


def linear_probe_metrics(train: tuple[np.ndarray, np.ndarray],
                         evaluation: tuple[np.ndarray, np.ndarray], *,
                         num_classes: int, epochs: int = 100) -> dict[str, float]:
  """'linear/accuracy' and 'linear/macro_f1' of a probe fitted on `train`."""
  predict = fit_linear_probe(*train, num_classes, epochs=epochs)
  return _scores("linear", evaluation[1], predict(evaluation[0]), num_classes)


class _Probe(Evaluator):
  """Features of `train_split` and `split` of labelled data, then a score."""

  def __init__(self, name: str, context: EvalContext, *,
               train_split: str = "train", pca_figure: bool = False,
               **common: Any):
    super().__init__(name, context, **common)
    self.pca_figure = bool(pca_figure)
    self.visualize = True  # restore_run's evaluate turns pictures off
    if self.info.task != CLASSIFICATION:
      raise ConfigValueError(f"config.evals.{name}: dataset {self.info.name!r} is a "
                       f"{self.info.task} dataset; probes need image-level labels.")
    if not context.objective.has_embed:
      raise ConfigValueError(f"config.evals.{name} probes features, but objective "
                       f"{type(context.objective).__name__} has no `embed`.")
    self.train_split = train_split
    self._fn = context.objective.eval_fn("embed")

  def has_split(self) -> bool:
    return super().has_split() and self.train_split in self.dataset.splits

  def features(self, state: Any, step: int
               ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train features, labels), (eval features, labels))."""
    return tuple(self.context.runner.features(
        self._fn, state, self.dataset, split, step=step,
        batch_size=self.batch_size, image_size=self.image_size)
                 for split in (self.train_split, self.split))

  def figures(self, evaluation: tuple[np.ndarray, np.ndarray], step: int
              ) -> dict[str, Any]:
    """With `pca_figure`: '<name>_pca.png', the evaluated split's features
    on their first two principal components, coloured by class."""
    if (not (self.pca_figure and self.visualize) or len(evaluation[0]) < 2
        or jax.process_index()):
      return {}
    from eo_jax.visualize.pca import plot_feature_pca  # pylint: disable=g-import-not-at-top
    return {f"{self.name}_pca.png": plot_feature_pca(
        evaluation[0], evaluation[1], self.info.class_names,
        title=f"{self.info.name} {self.split} features, step {step}")}


@EVALUATORS.register("knn")
class KNNProbe(_Probe):
  """Weighted kNN (DINO's protocol, `evaluate/knn.py`) for each k in `k`."""

  def __init__(self, name: str, context: EvalContext, *,
               k: Sequence[int] = (10, 20), temperature: float = 0.07,
               **settings: Any):
    super().__init__(name, context, **settings)
    self.k = tuple(int(x) for x in k)
    self.temperature = float(temperature)

  def run(self, state: Any, step: int) -> EvalOutput:
    train, evaluation = self.features(state, step)
    return EvalOutput(knn_probe_metrics(
        train, evaluation, num_classes=self.info.num_classes,
        k=self.k, temperature=self.temperature), self.figures(evaluation, step))


@EVALUATORS.register("linear_probe")
class LinearProbe(_Probe):
  """A softmax regression on standardised frozen features (`linear_probe.py`)."""

  def __init__(self, name: str, context: EvalContext, *, epochs: int = 100,
               **settings: Any):
    super().__init__(name, context, **settings)
    self.epochs = int(epochs)

  def run(self, state: Any, step: int) -> EvalOutput:
    train, evaluation = self.features(state, step)
    return EvalOutput(linear_probe_metrics(
        train, evaluation, num_classes=self.info.num_classes,
        epochs=self.epochs), self.figures(evaluation, step))
