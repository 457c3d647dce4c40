"""Evaluators as plug-ins: `config.evals` names any number of them.

Each entry of `config.evals` is one evaluator:

  c.evals.val = dict(type='classification', split='val')
  c.evals.test = dict(type='', split='test', every_steps=-1, final=True)
  c.evals.knn = dict(type='knn', prefix='probe', data=dict(name='eolearn_sample'),
                     k=(10, 20))

Keys every evaluator takes:
  type         a name registered in `EVALUATORS`; '' -> the objective's own
               (`Objective.default_evaluator`: classification for
               'supervised', the mean losses for 'mae', ...).
  split        the split to evaluate ('val').
  data         another dataset's config (like `config.data`); empty -> the
               training dataset.
  every_steps  0 -> at every evaluation of the run (config.train.
               eval_every_steps, or once an epoch) and after the last step;
               N > 0 -> every N steps and after the last; -1 -> never during
               training.
  final        also run once at the end, on the state the run reports (the
               best one when early stopping is on); its numbers then go to
               results.json.
  prefix       metric names are '<prefix>/<metric>'; '' -> the entry's name.
               Two evaluators may share a prefix (a kNN and a linear probe
               under 'probe').
  batch_size   the global batch; 0 -> config.input.eval_batch_size.
  image_size   0 -> config.input.image_size, else the dataset's own size.
Each type adds its own keys (see its class); an unknown key is an error that
lists the keys the type takes.

An evaluator's `run(state, step)` returns an `EvalOutput`: metrics (scalars,
written to TensorBoard and the curves, plus arrays such as a confusion
matrix) and figures (matplotlib, saved by the trainer as PNGs under the
workdir). A new evaluator is a class registered with
`@EVALUATORS.register('name')` whose constructor takes `(name, context,
**settings)`; nothing else changes.
"""
from __future__ import annotations

import abc
import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
from absl import logging

from eo_jax import sharding
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import Dataset, DatasetInfo
from eo_jax.errors import ConfigError, ConfigValueError
from eo_jax.evaluate.runner import EvalRunner
from eo_jax.registry import Registry


class EvalOutput(NamedTuple):
  metrics: dict[str, Any]
  figures: dict[str, Any]


@dataclasses.dataclass
class EvalContext:
  """What an evaluator may use: the objective, the data, the runner.

  Attributes:
    objective: the run's objective (its eval functions, info, pictures).
    dataset: the training dataset (evaluators without `data` use its splits).
    runner: the evaluation runner (padding, sharding, host transfer).
    eval_every: the run's default evaluation interval in steps.
  """
  objective: Any
  dataset: Dataset
  runner: EvalRunner
  eval_every: int = 1
  _other_datasets: dict[str, Dataset] = dataclasses.field(default_factory=dict)

  def dataset_for(self, name: str, data: Mapping[str, Any] | None) -> Dataset:
    """The training dataset, or the one `data` describes (built once, so
    evaluators of the same data share it and the features they extract)."""
    if not data or not dict(data).get("name"):
      return self.dataset
    key = repr(sorted(_plain(data).items()))
    if key not in self._other_datasets:
      dataset = build_dataset(data, validate=True)
      bands_lib.check_same(self.objective.info.bands, dataset.info.bands,
                           f"config.evals.{name}.data ({dataset.info.name}) vs "
                           "the training data")
      self._other_datasets[key] = dataset
    return self._other_datasets[key]


class Evaluator(abc.ABC):
  """Base class: the settings every evaluator takes, and its schedule.

  Subclasses implement `run(state, step) -> EvalOutput`.
  """

  def __init__(self, name: str, context: EvalContext, *, split: str = "val",
               data: Mapping[str, Any] | None = None, every_steps: int = 0,
               final: bool = False, prefix: str = "", batch_size: int = 0,
               image_size: int = 0):
    self.name = name
    self.context = context
    self.split = split
    self.every_steps = int(every_steps)
    self.final = bool(final)
    self.prefix = prefix or name
    if "/" in self.prefix:
      raise ConfigValueError(f"config.evals.{name}.prefix={self.prefix!r} may not "
                       "contain '/'.")
    self.batch_size = int(batch_size)
    self.image_size = int(image_size) or None
    self.dataset = context.dataset_for(name, data)

  @property
  def info(self) -> DatasetInfo:
    return self.dataset.info

  def has_split(self) -> bool:
    return self.split in self.dataset.splits

  def due(self, step: int, last_step: int) -> bool:
    """Whether to run after training step `step` of `last_step`."""
    if self.every_steps < 0:
      return False
    every = self.every_steps or self.context.eval_every
    return step % every == 0 or step == last_step

  @abc.abstractmethod
  def run(self, state: Any, step: int) -> EvalOutput:
    """Evaluates `state` (after training step `step`)."""

  def outputs(self, fn: Callable, state: Any, keep: tuple[str, ...] = ()):
    """The runner's per-batch outputs of `fn` over this evaluator's split."""
    return self.context.runner.outputs(
        fn, state, self.dataset, self.split, batch_size=self.batch_size,
        image_size=self.image_size, keep=keep)


EVALUATORS: Registry[Callable[..., Evaluator]] = Registry("evaluator")


def _plain(value: Any) -> Any:
  return value.to_dict() if hasattr(value, "to_dict") else value


def evaluator_settings(name: str, entry: Mapping[str, Any]) -> tuple[str, dict]:
  """(type, keyword settings) of `config.evals.<name>`."""
  settings = {k: _plain(v) for k, v in dict(entry).items()}
  return str(settings.pop("type", "") or ""), settings


def build_evaluator(name: str, entry: Mapping[str, Any],
                    context: EvalContext) -> Evaluator:
  """Builds `config.evals.<name>`; unknown keys fail with the accepted ones."""
  kind, settings = evaluator_settings(name, entry)
  kind = kind or context.objective.default_evaluator
  factory = EVALUATORS.get(kind)
  accepted = _accepted_keys(factory)
  unknown = sorted(set(settings) - accepted)
  if unknown:
    raise ConfigError(f"config.evals.{name} (type {kind!r}) has unknown keys "
                   f"{unknown}; it takes {sorted(accepted | {'type'})}.")
  return factory(name, context, **settings)


def _accepted_keys(factory: Callable) -> set[str]:
  keys: set[str] = set()
  for cls in getattr(factory, "__mro__", (factory,)):
    init = cls.__dict__.get("__init__") if isinstance(cls, type) else cls
    if init is None:
      continue
    params = inspect.signature(init).parameters.values()
    keys |= {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
  return keys


def build_evaluators(evals_config: Mapping[str, Any], context: EvalContext
                     ) -> list[Evaluator]:
  """Every entry of `config.evals`, in order; periodic ones must have data."""
  evaluators = []
  for name, entry in dict(evals_config).items():
    evaluator = build_evaluator(name, entry, context)
    if not evaluator.has_split():
      if evaluator.every_steps >= 0:
        raise ConfigError(
            f"config.evals.{name} evaluates split {evaluator.split!r}, which "
            f"dataset {evaluator.info.name!r} does not have (it has "
            f"{sorted(evaluator.dataset.splits)}). Set config.evals.{name}."
            "split, or every_steps=-1 to run it only if the split exists.")
      logging.info("config.evals.%s: dataset %s has no split %r; skipped.",
                   name, evaluator.info.name, evaluator.split)
      continue
    evaluators.append(evaluator)
  return evaluators



class PredictionEvaluator(Evaluator):
  """Accumulates an objective eval function's per-example outputs.

  Subclasses say which accumulator (`make_metrics`) and which batch entries
  to keep beside the outputs. With `visualize`, the objective draws its
  pictures (`Objective.visualize`) from the first batch on process 0.

  Settings (besides the common ones):
    pred: the objective's eval function ('eval': its `eval_step`).
    visualize: draw the objective's pictures.
  """
  keep: tuple[str, ...] = ()

  def __init__(self, name: str, context: EvalContext, *, pred: str = "eval",
               visualize: bool = True, **common: Any):
    super().__init__(name, context, **common)
    self.pred = pred
    self.visualize = bool(visualize)
    self._fn = context.objective.eval_fn(pred)

  @abc.abstractmethod
  def make_metrics(self) -> Any:
    """A fresh accumulator with `update(outputs)` and `result()`."""

  def run(self, state: Any, step: int) -> EvalOutput:
    metrics = self.make_metrics()
    first = None
    for outputs, local in self.outputs(self._fn, state, keep=self.keep):
      metrics.update(outputs)
      if first is None and len(next(iter(local.values()))):
        first = local
    figures = {}
    if self.visualize:
      # Process 0 draws alone, so split ('fsdp') arrays are gathered first,
      # by every process; the optimiser state is never drawn.
      shown = sharding.gather_sharded(state.replace(opt_state=None)
                                      if hasattr(state, "opt_state") else state)
      if first is not None and jax.process_index() == 0:
        figures = self.context.objective.visualize(shown, first, step, self.split)
    return EvalOutput(metrics.result(), figures)
