"""Training curves: one subplot per metric, its splits overlaid.

`plot_curves` takes a plain history {'train/loss': [(step, value), ...],
'val/loss': [...], 'val/macro_f1': [...]} (the trainer keeps its own, and
saves it across restarts) and returns a figure with one subplot per metric
name, where the splits of that metric ('train/loss' and 'val/loss') share
the axes. A note per metric says when its splits are not the same quantity
(a class-weighted training loss above a plain validation loss is not
overfitting), and a dashed line in every panel marks the best step of early
stopping. Save it with `figures.save_figure`.
"""
from __future__ import annotations

import math
import textwrap
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


# Gid of the best-step lines, for whoever inspects a figure (tests).
BEST_STEP_GID = "best_step"


def _value_at(points: Sequence[tuple[int, float]], step: int) -> float | None:
  """The value at `step`, else at the newest step before it."""
  before = [(s, v) for s, v in sorted(points) if s <= step]
  return before[-1][1] if before else None


def plot_curves(history: History, *, title: str | None = None,
                metrics: Sequence[str] | None = None,
                ncols: int = 3, best_step: int | None = None,
                best_metric: str = "",
                notes: Mapping[str, str] | None = None) -> Figure:
  """Draws each metric's curves, all its splits overlaid.

  Args:
    history: {'train/loss': [(step, value), ...], 'val/loss': [...], ...}.
      Keys without a '/' are a metric with no split ('lr').
    title: figure title.
    metrics: metric names (without the split prefix, e.g. 'loss') to draw, in
      this order; all by default.
    ncols: subplots per row.
    best_step: a step to mark with a dashed vertical line in every panel
      (early stopping's best).
    best_metric: the full key it is best in ('val/macro_f1'); its panel
      gets the line in its legend and the value marked.
    notes: {metric: text} shown under the panel's title, e.g. {'loss':
      'train: class-weighted CE (config.loss), val: plain CE'}.

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
  best_prefix, best_name = _split_name(best_metric)
  for ax, (metric, keys) in zip(axes, groups.items()):
    for prefix, key in sorted(keys.items()):
      steps, values = zip(*sorted(history[key]))
      style = "o-" if len(steps) < 30 else "-"
      ax.plot(steps, values, style, markersize=3, label=prefix or metric)
    if best_step is not None:
      is_best_panel = bool(best_metric) and metric == best_name and best_prefix in keys
      # Underscore labels stay out of the legend: only the metric's own
      # panel names the line.
      label = (f"best {best_metric} (step {best_step})" if is_best_panel
               else "_best step")
      ax.axvline(best_step, linestyle="--", linewidth=1, color="0.35",
                 label=label, gid=BEST_STEP_GID)
      value = (_value_at(history[keys[best_prefix]], best_step)
               if is_best_panel else None)
      if value is not None:
        ax.plot([best_step], [value], "*", markersize=10, color="0.15",
                label="_best value")
        ax.annotate(f"{value:.3f}", (best_step, value), xytext=(4, 4),
                    textcoords="offset points", fontsize="small")
    note = (notes or {}).get(metric, "")
    if note:
      # Wrapped to the panel's width (about 55 characters at 4.5 inches).
      ax.set_title(metric + "\n" + textwrap.fill(note, 55), fontsize="medium")
    else:
      ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  for ax in axes[len(groups):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  return fig
