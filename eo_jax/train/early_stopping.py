"""Early stopping on a chosen evaluator metric, with min-delta and patience."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence
from eo_jax.errors import ConfigError, ConfigValueError


@dataclasses.dataclass
class EarlyStopping:
  """Tracks the best value of `metric` ('<evaluator prefix>/<name>', e.g.
  'val/macro_f1').

  An evaluation improves on the best when it is better by more than
  `min_delta`; after `patience` evaluations without improvement,
  `should_stop` becomes true. An empty metric disables stopping but still
  records the best value of the objective's main metric.
  """
  metric: str
  mode: str = "max"
  min_delta: float = 0.0
  patience: int = 5
  enabled: bool = True
  best: float | None = None
  best_step: int = -1
  bad_evaluations: int = 0

  @classmethod
  def from_config(cls, config, main_metric: str,
                  prefixes: Sequence[str] = ("val",)) -> "EarlyStopping":
    """From `config.train.early_stopping`.

    Args:
      config: the early-stopping section.
      main_metric: the objective's main metric, recorded when no metric is set.
      prefixes: the prefixes of the evaluators that run during training; the
        metric must belong to one of them.
    """
    default_prefix = "val" if "val" in prefixes or not prefixes else prefixes[0]
    metric = config.metric or f"{default_prefix}/{main_metric}"
    if "/" not in metric:
      raise ConfigValueError(f"config.train.early_stopping.metric={metric!r} must name "
                       "an evaluator prefix and a metric, e.g. 'val/loss' or "
                       "'val/macro_f1'.")
    if config.metric and metric.split("/", 1)[0] not in prefixes:
      raise ConfigValueError(
          f"config.train.early_stopping.metric={metric!r}: no evaluator with "
          f"prefix {metric.split('/', 1)[0]!r} runs during training (those "
          f"that do: {list(prefixes)}); see config.evals.")
    mode = config.mode
    if mode == "auto":
      mode = "min" if metric.split("/", 1)[1].endswith("loss") else "max"
    if mode not in ("min", "max"):
      raise ConfigValueError(f"early_stopping.mode must be min, max or auto, not {mode!r}.")
    return cls(metric=metric, mode=mode, min_delta=float(config.min_delta),
               patience=int(config.patience), enabled=bool(config.metric))

  @property
  def split(self) -> str:
    return self.metric.split("/", 1)[0]

  @property
  def should_stop(self) -> bool:
    return self.enabled and self.bad_evaluations >= self.patience

  def update(self, step: int, split: str, results: Mapping[str, Any]) -> bool:
    """Feeds one evaluation of `split`; returns True on a new best."""
    wanted_split, name = self.metric.split("/", 1)
    if split != wanted_split:
      return False
    if name not in results:
      raise ConfigError(f"Early-stopping metric {self.metric!r} is not computed; "
                     f"{split} has {sorted(results)}.")
    value = float(results[name])
    sign = 1.0 if self.mode == "max" else -1.0
    if self.best is None or sign * (value - self.best) > self.min_delta:
      self.best, self.best_step, self.bad_evaluations = value, step, 0
      return True
    self.bad_evaluations += 1
    return False

  def dump(self) -> dict:
    return {"best": self.best, "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations}

  def load(self, saved: Mapping[str, Any]) -> None:
    self.best = saved["best"]
    self.best_step = int(saved["best_step"])
    self.bad_evaluations = int(saved["bad_evaluations"])
