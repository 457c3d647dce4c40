"""Confusion-matrix plot: counts in the cells, colours normalised per row.

Row normalisation shows recall per class independently of class frequency,
which matters for imbalanced EO datasets; the counts keep the absolute sizes
visible. The title says what the matrix is of: the run, the split (the
evaluator's prefix), the step and the headline metrics, so a PNG found in a
workdir explains itself. `plot_confusion_matrix` returns the figure; save it
with `figures.save_figure`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


# Metrics named in the title, in this order, the first two present; with
# the names a reader knows them by.
TITLE_METRICS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "miou": "mIoU",
                 "overall_acc": "overall accuracy", "mean_acc": "mean class accuracy"}


def confusion_title(*, run: str = "", split: str = "", step: int | None = None,
                    metrics: Mapping[str, Any] | None = None) -> str:
  """'eurosat: val, step 780' over 'accuracy 0.753, macro-F1 0.436'."""
  where = ", ".join(part for part in (split, "" if step is None else f"step {step}")
                    if part)
  first = ": ".join(part for part in (run, where) if part)
  shown = [f"{label} {float(metrics[key]):.3f}"
           for key, label in TITLE_METRICS.items()
           if metrics and key in metrics][:2]
  return "\n".join(line for line in (first, ", ".join(shown)) if line)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], *,
                          normalize: bool = True, title: str | None = None,
                          run: str = "", split: str = "", step: int | None = None,
                          metrics: Mapping[str, Any] | None = None) -> Figure:
  """Draws `cm` (rows = true class, columns = predicted class).

  Args:
    cm: (K, K) counts.
    class_names: K names for the axes.
    normalize: colour each cell by its share of the row (recall); otherwise
      by the raw count. Cells always show counts, plus the row share when
      normalising and K <= 15.
    title: the title as given; by default it is made of `run`, `split`,
      `step` and `metrics` (see `confusion_title`).
    run: the run or dataset name.
    split: the split, or the evaluator prefix, the matrix counts.
    step: the training step of the evaluated state.
    metrics: the evaluation's scalars; accuracy and macro-F1 (classification)
      or mIoU and overall accuracy (segmentation) go into the title.

  Returns:
    The figure, (side + 1) x side inches with side = 0.55 * K + 2.5
    clamped to [4, 30].
  """
  cm = np.asarray(cm)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"Expected a square (K, K) confusion matrix, got {cm.shape}.")
  k = cm.shape[0]
  if len(class_names) != k:
    raise ValueError(f"Got {len(class_names)} class names for a {k}x{k} "
                     "confusion matrix.")
  row_sums = cm.sum(axis=1, keepdims=True)
  if normalize:
    colour = np.divide(cm, row_sums, out=np.zeros(cm.shape, float),
                       where=row_sums > 0)
    vmax = 1.0
  else:
    colour = cm.astype(float)
    vmax = max(colour.max(), 1.0)

  side = min(max(4.0, 0.55 * k + 2.5), 30.0)
  fig = Figure(figsize=(side + 1.0, side), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
               label="fraction of true class" if normalize else "count")
  ticks = np.arange(k)
  ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right",
                rotation_mode="anchor")
  ax.set_yticks(ticks, labels=list(class_names))
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  title = title or confusion_title(run=run, split=split, step=step, metrics=metrics)
  if title:
    ax.set_title(title)

  if k <= 40:
    fontsize = 9 if k <= 10 else 7 if k <= 20 else 5
    show_share = normalize and k <= 15
    for i in range(k):
      for j in range(k):
        text = (f"{cm[i, j]:d}" if np.issubdtype(cm.dtype, np.integer)
                else f"{cm[i, j]:.3g}")
        if show_share and row_sums[i, 0] > 0:
          text += f"\n{colour[i, j]:.0%}"
        # Dark cells get white text so the number stays readable.
        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                color="white" if colour[i, j] > 0.6 * vmax else "black")
  return fig
