"""Where a run's numbers go: metric writers, the console, history and PNGs.

Scalars go to TensorBoard event files and the log through clu's default
writer and into a history that is checkpointed with the run, so the training
curves of a resumed run continue where they stopped. `curves.png` and, for
evaluators that report a confusion matrix, `confusion_<prefix>.png` are
redrawn after an evaluation when the last drawing is older than
`min_plot_interval` seconds (matplotlib takes ~1 s a figure on a small CPU),
and always at the end.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np
import tqdm

from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.visualize.confusion import plot_confusion_matrix
from eo_jax.visualize.curves import plot_curves
from eo_jax.visualize.figures import save_figure


class Reporter:
  """Collects and writes the metrics of one run (plots only on process 0)."""

  def __init__(self, workdir: str, info: DatasetInfo, *, writer, is_main: bool,
               min_plot_interval: float = 60.0):
    self.workdir = workdir
    self.min_plot_interval = min_plot_interval
    self._last_plot = time.monotonic()
    self._confusions: dict[str, np.ndarray] = {}
    self.info = info
    self.writer = writer
    self.is_main = is_main
    self.history: dict[str, list[list[float]]] = {}
    self._latest: dict[str, dict[str, float]] = {}

  # Scalars ---------------------------------------------------------------
  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self.writer.write_scalars(step, dict(values))
    for name, value in values.items():
      series = self.history.setdefault(name, [])
      # A resumed run may repeat steps after the last checkpoint; keep the newest.
      while series and series[-1][0] >= step:
        series.pop()
      series.append([int(step), float(value)])

  def eval_result(self, step: int, prefix: str, result: Mapping[str, Any], *,
                  final: bool = False) -> None:
    """Records an evaluator's result; final ones as 'final_<prefix>/...'."""
    scalars = {k: float(v) for k, v in result.items() if np.ndim(v) == 0}
    name = f"final_{prefix}" if final else prefix
    self.scalars(step, {f"{name}/{k}": v for k, v in scalars.items()})
    self._latest[prefix] = scalars
    if "confusion_matrix" in result:
      self._confusions[prefix] = np.asarray(result["confusion_matrix"])

  def latest(self, prefix: str) -> dict[str, float]:
    return dict(self._latest.get(prefix, {}))

  def at_step(self, prefix: str, step: int) -> dict[str, float]:
    """`prefix`'s scalars of its latest evaluation at or before `step`."""
    series = {k[len(prefix) + 1:]: v for k, v in self.history.items()
              if k.startswith(prefix + "/")}
    steps = [s for points in series.values() for s, _ in points if s <= step]
    if not steps:
      return {}
    last = max(steps)
    return {name: value for name, points in series.items()
            for s, value in points if s == last}

  # Plots -----------------------------------------------------------------
  def plot(self, *, force: bool = False) -> None:
    """Redraws the PNGs if forced or if the last drawing is old enough."""
    if not self.is_main or not self.history:
      return
    if not force and time.monotonic() - self._last_plot < self.min_plot_interval:
      return
    self._last_plot = time.monotonic()
    for prefix, cm in self._confusions.items():
      names = (list(self.info.class_names) if len(self.info.class_names) == len(cm)
               else [str(i) for i in range(len(cm))])
      save_figure(plot_confusion_matrix(cm, names),
                  os.path.join(self.workdir, f"confusion_{prefix}.png"))
    curves = {k: [tuple(p) for p in v] for k, v in self.history.items()
              if not k.startswith("final_")}
    save_figure(plot_curves(curves, title=f"{self.info.name}"),
                os.path.join(self.workdir, "curves.png"))

  # Progress --------------------------------------------------------------
  def progress(self, total: int, initial: int, *, enabled: bool) -> tqdm.tqdm:
    return tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                     disable=not (enabled and self.is_main))

  # Checkpointing ---------------------------------------------------------
  def dump(self) -> dict:
    return {"history": self.history, "latest": self._latest}

  def load(self, saved: Mapping[str, Any]) -> None:
    self.history = {k: [list(p) for p in v] for k, v in saved["history"].items()}
    self._latest = {k: dict(v) for k, v in saved["latest"].items()}
