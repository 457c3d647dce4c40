"""Training curves: a metric history that survives restarts, and its plot.

`MetricHistory` records `(step, value)` per metric name ('train/loss',
'val/loss', 'val/macro_f1', ...) and saves itself as JSON in the workdir, so
a resumed run reloads it and its curves continue. `plot_curves` draws one
subplot per metric, with the splits of that metric ('train/loss' and
'val/loss') overlaid.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

History = Mapping[str, Sequence[tuple[int, float]]]


def _is_scalar(value: Any) -> bool:
  return np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype, np.number)


class MetricHistory:
  """Per-metric lists of (step, value), saved to and loaded from JSON."""

  def __init__(self, history: History | None = None):
    self._history: dict[str, list[tuple[int, float]]] = {
        k: [(int(s), float(v)) for s, v in points]
        for k, points in (history or {}).items()}

  def append(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Adds the scalar entries of `metrics` at `step`; arrays are skipped."""
    for name, value in metrics.items():
      if _is_scalar(value):
        self._history.setdefault(name, []).append((int(step), float(value)))

  def truncate(self, max_step: int) -> None:
    """Drops points after `max_step`, e.g. those logged after the checkpoint
    a run resumes from, so they are not drawn twice."""
    for name in list(self._history):
      self._history[name] = [(s, v) for s, v in self._history[name]
                             if s <= max_step]
      if not self._history[name]:
        del self._history[name]

  def as_dict(self) -> dict[str, list[tuple[int, float]]]:
    return {k: list(v) for k, v in self._history.items()}

  def __len__(self) -> int:
    return len(self._history)

  def __getitem__(self, name: str) -> list[tuple[int, float]]:
    return list(self._history[name])

  def save(self, path: str | os.PathLike) -> None:
    """Writes JSON atomically (a crash mid-write leaves the old file)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    # NaN/inf are written as JSON's non-standard literals, which json reads back.
    with open(tmp, "w") as f:
      json.dump({k: [[s, v] for s, v in points]
                 for k, points in self._history.items()}, f)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike, max_step: int | None = None
           ) -> "MetricHistory":
    """Reads a saved history; an absent file gives an empty one."""
    if not os.path.exists(path):
      return cls()
    with open(path) as f:
      raw = json.load(f)
    history = cls({k: [tuple(p) for p in pts] for k, pts in raw.items()})
    if max_step is not None:
      history.truncate(max_step)
    return history


def _split_name(key: str) -> tuple[str, str]:
  """'val/loss' -> ('val', 'loss'); 'lr' -> ('', 'lr')."""
  prefix, sep, metric = key.partition("/")
  return (prefix, metric) if sep else ("", key)


def group_metrics(keys: Iterable[str]) -> dict[str, dict[str, str]]:
  """{metric: {split prefix: full key}}, in order of first appearance."""
  groups: dict[str, dict[str, str]] = {}
  for key in keys:
    prefix, metric = _split_name(key)
    groups.setdefault(metric, {})[prefix] = key
  return groups


def plot_curves(history: History | MetricHistory, path: str | os.PathLike,
                title: str | None = None, metrics: Sequence[str] | None = None,
                ncols: int = 3) -> str:
  """Draws each metric's curves (all its splits overlaid) and saves a PNG.

  Args:
    history: {'train/loss': [(step, value), ...], 'val/loss': [...], ...}, or
      a `MetricHistory`.
    path: output PNG file.
    title: figure title.
    metrics: metric names (without the split prefix, e.g. 'loss') to draw, in
      this order; all by default.
    ncols: subplots per row.

  Returns:
    `path` as a string.
  """
  if isinstance(history, MetricHistory):
    history = history.as_dict()
  groups = group_metrics(k for k, pts in history.items() if len(pts))
  if metrics is not None:
    missing = [m for m in metrics if m not in groups]
    if missing:
      raise ValueError(f"No history for metrics {missing}; have {sorted(groups)}.")
    groups = {m: groups[m] for m in metrics}
  if not groups:
    raise ValueError("Nothing to plot: the history is empty.")

  ncols = max(1, min(ncols, len(groups)))
  nrows = math.ceil(len(groups) / ncols)
  fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows + (0.4 if title else 0)),
               layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, (metric, keys) in zip(axes, groups.items()):
    for prefix, key in sorted(keys.items()):
      steps, values = zip(*sorted(history[key]))
      style = "o-" if len(steps) < 30 else "-"
      ax.plot(steps, values, style, markersize=3, label=prefix or metric)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
  """Saves a matplotlib `Figure` as PNG, creating the folder; returns the path.

  Figures are built with `matplotlib.figure.Figure`, not pyplot, so no global
  figure state or display backend is involved (safe in threads and headless).
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=dpi, format="png")
  return path
