"""Training curves: one subplot per metric, its splits overlaid.

`plot_curves` takes a plain history {'train/loss': [(step, value), ...],
'val/loss': [...], 'val/macro_f1': [...]} (the trainer keeps its own, and
saves it across restarts) and returns a figure with one subplot per metric
name, where the splits of that metric ('train/loss' and 'val/loss') share
the axes. Save it with `figures.save_figure`.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

from matplotlib.figure import Figure

History = Mapping[str, Sequence[tuple[int, float]]]


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


def plot_curves(history: History, *, title: str | None = None,
                metrics: Sequence[str] | None = None,
                ncols: int = 3) -> Figure:
  """Draws each metric's curves, all its splits overlaid.

  Args:
    history: {'train/loss': [(step, value), ...], 'val/loss': [...], ...}.
      Keys without a '/' are a metric with no split ('lr').
    title: figure title.
    metrics: metric names (without the split prefix, e.g. 'loss') to draw, in
      this order; all by default.
    ncols: subplots per row.

  Returns:
    The figure: 4.5 x 3.2 inches per subplot (450 x 320 pixels per subplot
    at `save_figure`'s default 100 dpi), plus room for the title.
  """
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
  return fig
