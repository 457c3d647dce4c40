"""Where a run's numbers go: TensorBoard, the console, history and PNGs.

Every scalar goes to TensorBoard event files (`make_writer`) and into a
history that is checkpointed with the run, so the training curves of a
resumed run continue where they stopped. The console gets what a person
reads while waiting, on process 0 only:

  Compiling the train step of supervised on resnet for 1 device (first step only)...
  Compiled and ran the first step in 14.2 s.
  step 780 | val accuracy 0.753 macro_f1 0.436 map 0.492 loss 0.715
   52%|#####     | 780/1500 [01:10<01:02, 11.52step/s, loss=0.4410]

and, at the end, a table of the final metrics with the paths of what the run
left behind (`Reporter.summary`). The bar's rate and ETA leave out the first
step (it includes compilation) and the time spent in `Reporter.paused()`
(evaluations), and absl log lines are written above the bar instead of
through it.

`curves.png` and, for evaluators that report a confusion matrix,
`confusion_<prefix>.png` are redrawn after an evaluation when the last
drawing is older than `min_plot_interval` seconds (matplotlib takes ~1 s a
figure on a small CPU), and always at the end. Each says which run, split
and step it shows.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import numpy as np
import tqdm
from absl import logging

from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.visualize.confusion import plot_confusion_matrix
from eo_jax.visualize.curves import plot_curves
from eo_jax.visualize.figures import save_figure

Clock = Callable[[], float]

# Metrics shown first, in this order, wherever a result is summarised; the
# rest follow in the evaluator's order.
HEADLINE = ("accuracy", "macro_f1", "miou", "overall_acc", "mean_acc", "map",
            "loss")
# '<group>/<class name>' metrics: one value per class, too many for a line.
PER_CLASS_GROUPS = ("f1", "iou", "precision", "recall")
# Confusion matrices kept per prefix for `plot(step=...)`; older ones are
# dropped (the best step's is kept) so a long run's memory stays flat.
_KEEP_CONFUSIONS = 10


# ------------------------------------------------------------ Formatting
def is_per_class(name: str, class_names: Sequence[str] = ()) -> bool:
  """'f1/Forest', 'iou/water' or '<anything>/<a class name>'."""
  group, sep, rest = name.partition("/")
  return bool(sep) and (group in PER_CLASS_GROUPS or rest in class_names)


def _is_number(value: Any) -> bool:
  """A real scalar (Python, numpy or 0-d array), not a bool or a string."""
  if isinstance(value, (bool, np.bool_, str)) or np.ndim(value) != 0:
    return False
  return np.issubdtype(np.asarray(value).dtype, np.number)


def headline(metrics: Mapping[str, Any],
             class_names: Sequence[str] = ()) -> dict[str, float]:
  """The scalar metrics worth a glance, `HEADLINE` ones first, per-class
  ones and arrays (confusion matrices) left out."""
  scalars = {k: float(v) for k, v in metrics.items()
             if _is_number(v) and not is_per_class(k, class_names)}
  first = {k: scalars[k] for k in HEADLINE if k in scalars}
  return first | {k: v for k, v in scalars.items() if k not in first}


def format_value(value: float) -> str:
  """0.7531 -> '0.753', 4096.0 -> '4096', 3.2e-05 -> '3.2e-05'."""
  value = float(value)
  if not np.isfinite(value):
    return str(value)
  if value == int(value) and abs(value) >= 10:
    return str(int(value))  # counts such as prototypes_used
  if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
    return f"{value:.3g}"
  return f"{value:.3f}"


def format_eval_line(step: int, results: Mapping[str, Mapping[str, Any]], *,
                     class_names: Sequence[str] = (), final: bool = False,
                     note: str = "") -> str:
  """One evaluation round on one line, e.g.

    step 780 | val accuracy 0.753 macro_f1 0.436 loss 0.715 | probe knn10/accuracy 0.820

  `results` is {prefix: metrics}; per-class metrics are left out (they are
  in TensorBoard and results.json). `note` ('new best val/macro_f1') ends
  the line.
  """
  parts = [f"{'final, ' if final else ''}step {int(step)}"]
  for prefix, metrics in results.items():
    values = " ".join(f"{k} {format_value(v)}"
                      for k, v in headline(metrics, class_names).items())
    parts.append(f"{prefix} {values}" if values else prefix)
  if note:
    parts.append(note)
  return " | ".join(parts)


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
  """Left-aligned columns two spaces apart."""
  widths = [max(len(row[i]) for row in rows if i < len(row))
            for i in range(max(len(row) for row in rows))]
  return [indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
          for row in rows]


def _metric_sections(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
  """The {prefix: metrics} entries of a results.json-like dict."""
  return {k: v for k, v in results.items()
          if isinstance(v, Mapping) and k != "early_stopping"
          and all(_is_number(x) for x in v.values())}


def _pngs(workdir: str) -> list[str]:
  """PNG paths under `workdir`: files at the top, one entry per subfolder."""
  if not os.path.isdir(workdir):
    return []
  top = sorted(os.path.join(workdir, f) for f in os.listdir(workdir)
               if f.endswith(".png") and os.path.isfile(os.path.join(workdir, f)))
  folders = []
  for entry in sorted(os.listdir(workdir)):
    folder = os.path.join(workdir, entry)
    if not os.path.isdir(folder) or entry.startswith("checkpoints"):
      continue
    count = sum(f.endswith(".png") for _, _, files in os.walk(folder) for f in files)
    if count:
      folders.append(f"{folder}{os.sep} ({count} PNG{'s' if count > 1 else ''})")
  return top + folders


def format_summary(results: Mapping[str, Any], workdir: str, *,
                   class_names: Sequence[str] = ()) -> str:
  """The closing table: each prefix's headline metrics, then the paths.

  Args:
    results: what the trainer writes to results.json ('step', 'dataset',
      optionally 'evaluated_step' and 'early_stopping', and one {metric:
      value} dict per evaluator prefix).
    workdir: the run's folder (results.json, PNGs, checkpoints).
    class_names: the dataset's classes, to recognise per-class metrics.
  """
  step = results.get("step")
  evaluated = results.get("evaluated_step", step)
  head = f"Final metrics of {results.get('dataset', 'the run')}, state of step {evaluated}"
  stopping = results.get("early_stopping") or {}
  if evaluated != step:
    best = stopping.get("best")
    best = f" {format_value(best)}" if best is not None else ""
    head += f" (best {stopping.get('metric', 'metric')}{best}; trained to step {step})"
  lines = [head + ":"]

  # One header row per run of prefixes reporting the same metrics, so a
  # probe's kNN scores do not widen the classification table.
  rows: list[list[str]] = []
  columns: list[str] | None = None
  per_class: dict[str, list[str]] = {}
  for prefix, metrics in _metric_sections(results).items():
    shown = headline(metrics, class_names)
    if list(shown) != columns:
      columns = list(shown)
      rows.append(["", *columns])
    rows.append([prefix, *(format_value(v) for v in shown.values())])
    for name in metrics:
      if is_per_class(name, class_names):
        per_class.setdefault(name.split("/", 1)[0], []).append(prefix)
  if rows:
    lines += _table(rows)
  for group, prefixes in per_class.items():
    lines.append(f"  per-class {group} of {', '.join(dict.fromkeys(prefixes))}: "
                 "in results.json")

  files = [["results", os.path.join(workdir, "results.json")]]
  for i, png in enumerate(_pngs(workdir)):
    files.append(["figures" if i == 0 else "", png])
  for name, what in (("checkpoints", "checkpoints"),
                     ("checkpoints_best", "best state")):
    folder = os.path.join(workdir, name)
    if os.path.isdir(folder):
      files.append([what, folder + os.sep])
  files.append(["TensorBoard", f"tensorboard --logdir {workdir}"])
  lines.append("Files:")
  lines += _table(files)
  return "\n".join(lines)


def last_logged_step(workdir: str) -> int | None:
  """The largest step in the workdir's TensorBoard event files, if any."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  last = None
  for name in sorted(os.listdir(workdir)):
    if not name.startswith("events.out.tfevents"):
      continue
    try:
      for event in event_file_loader.EventFileLoader(os.path.join(workdir, name)).Load():
        if event.HasField("summary"):
          last = event.step if last is None else max(last, event.step)
    except Exception:  # pylint: disable=broad-except; a file cut by a crash
      continue
  return last


def make_writer(workdir: str, *, is_main: bool):
  """The metric writer of a run: TensorBoard event files in `workdir` on
  process 0, a writer that drops everything elsewhere.

  Unlike clu's `create_default_writer`, it does not log every scalar through
  absl: those lines would cut through the progress bar. The console gets
  `Reporter.eval_line` instead.
  """
  # Imported here: clu's summary writer imports TensorFlow (seconds).
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if is_main:
    return metric_writers.SummaryWriter(workdir)
  return metric_writers.MultiWriter([])


# ----------------------------------------------------------- Step timing
class StepTimer:
  """Steps per second over training time only.

  The first step (tracing and compilation, often minutes) and the paused
  intervals (evaluations) are left out, so the rate and the ETA describe
  the steps still to come.
  """

  def __init__(self, clock: Clock = time.monotonic):
    self._clock = clock
    self._start: float | None = None  # when the timed steps began
    self._start_n = 0                 # the step count at that moment
    self._paused = 0.0                # seconds paused since then
    self._pause_began: float | None = None
    self._depth = 0                   # nested pauses count once

  @property
  def started(self) -> bool:
    return self._start is not None

  def start(self, n: int) -> None:
    """Times the steps after the first `n` (the first one compiled)."""
    if self._start is None:
      self._start, self._start_n, self._paused = self._clock(), int(n), 0.0
      if self._pause_began is not None:
        self._pause_began = self._start

  def pause(self) -> None:
    self._depth += 1
    if self._depth == 1:
      self._pause_began = self._clock()

  def resume(self) -> None:
    if self._depth == 0:
      return
    self._depth -= 1
    if self._depth == 0 and self._pause_began is not None:
      if self._start is not None:
        self._paused += self._clock() - self._pause_began
      self._pause_began = None

  def active_seconds(self) -> float:
    """Seconds since `start` not spent paused."""
    if self._start is None:
      return 0.0
    now = self._clock()
    ongoing = now - self._pause_began if self._pause_began is not None else 0.0
    return max(now - self._start - self._paused - ongoing, 0.0)

  def rate(self, n: int) -> float | None:
    """Steps per second for a count of `n`; None before any timed step."""
    seconds = self.active_seconds()
    if self._start is None or n <= self._start_n or seconds <= 0:
      return None
    return (n - self._start_n) / seconds


class _TqdmStream:
  """A stream whose lines go through `tqdm.write`, above any bar."""

  def __init__(self, target: TextIO):
    self.target = target

  def write(self, text: str) -> int:
    if text.strip():
      tqdm.tqdm.write(text.rstrip("\n"), file=self.target)
    return len(text)

  def flush(self) -> None:
    self.target.flush()


def _absl_lines_above_bars() -> Callable[[], None]:
  """Sends absl's console lines through `tqdm.write`; returns the undo.

  Only the console stream is redirected: a log file, or logging before
  flags are parsed (absl then writes to stderr itself), is left alone.
  """
  handler = logging.get_absl_handler().python_handler
  original = handler.stream
  if original not in (sys.stderr, sys.stdout):
    return lambda: None
  handler.setStream(_TqdmStream(original))

  def undo() -> None:
    if isinstance(handler.stream, _TqdmStream):
      handler.setStream(original)

  return undo


class ProgressBar(tqdm.tqdm):
  """tqdm whose rate and ETA come from a `StepTimer`.

  Until the first timed step the rate and the ETA show '?' rather than the
  compilation's estimate. The first `update` starts the timer if
  `Reporter.first_step_done` has not.
  """

  def __init__(self, *args, timer: StepTimer,
               on_first_update: Callable[[], None],
               on_close: Callable[[], None], **kwargs):
    self.timer = timer
    self._on_first_update = on_first_update
    self._on_close = on_close
    super().__init__(*args, **kwargs)

  def update(self, n: int = 1):
    if not self.timer.started:
      self._on_first_update()
    return super().update(n)

  @property
  def format_dict(self):
    values = super().format_dict
    rate = self.timer.rate(self.n)
    values["rate"] = rate
    if rate is None:
      # tqdm would fall back to n / elapsed, elapsed including compilation.
      values["initial"] = self.n
    return values

  def close(self):
    self._on_close()
    super().close()


# ------------------------------------------------------------ Reporter
@dataclasses.dataclass
class _Confusion:
  """A confusion matrix with what its title needs."""
  step: int
  matrix: np.ndarray
  scalars: dict[str, float]
  final: bool


class Reporter:
  """Collects and writes the metrics of one run (console and plots only on
  process 0).

  Args:
    workdir: the run's folder.
    info: the dataset's info (name and class names for titles and tables).
    writer: a clu metric writer (`make_writer`).
    is_main: whether this is process 0.
    min_plot_interval: seconds between redraws of the PNGs in the loop.
    loss_note: how the training loss differs from the validation loss
      ('train: class-weighted CE (config.loss), val: plain CE', see
      `describe_loss`); shown on the loss panel of curves.png.
    clock: seconds, for the progress bar's rate (tests pass a fake one).
  """

  def __init__(self, workdir: str, info: DatasetInfo, *, writer, is_main: bool,
               min_plot_interval: float = 60.0, loss_note: str = "",
               clock: Clock = time.monotonic):
    self.workdir = workdir
    self.min_plot_interval = min_plot_interval
    self._last_plot = time.monotonic()
    self._confusions: dict[str, dict[int, _Confusion]] = {}
    self.info = info
    self.writer = writer
    self._logged_until: int | None = None
    self.is_main = is_main
    self.loss_note = loss_note
    self.history: dict[str, list[list[float]]] = {}
    self._latest: dict[str, dict[str, float]] = {}
    self._clock = clock
    self._timer = StepTimer(clock)
    self._initial = 0
    self._compile_began: float | None = None
    self._best: tuple[int, str] | None = None

  # Console ---------------------------------------------------------------
  def write(self, line: str) -> None:
    """Prints `line` on process 0, above the progress bar if one is shown."""
    if self.is_main:
      tqdm.tqdm.write(line)

  def compiling(self, what: str) -> None:
    """Says what the first step compiles, e.g. 'the train step of supervised
    on resnet for 8 devices'; call it just before the first step."""
    self._compile_began = self._clock()
    self.write(f"Compiling {what} (first step only)...")

  def first_step_done(self) -> None:
    """Starts timing the steps after the first; call it once the first step
    has returned. Calling it again, or after the bar's first update (which
    calls it), does nothing."""
    if self._timer.started:
      return
    self._timer.start(self._initial + 1)
    if self._compile_began is not None:
      seconds = self._clock() - self._compile_began
      self.write(f"Compiled and ran the first step in {seconds:.1f} s.")

  def pause(self) -> None:
    """Stops the bar's clock (evaluations, checkpoints) until `resume`."""
    self._timer.pause()

  def resume(self) -> None:
    self._timer.resume()

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """`with reporter.paused(): ...` leaves the block's time out of the rate."""
    self.pause()
    try:
      yield
    finally:
      self.resume()

  def eval_line(self, step: int, results: Mapping[str, Mapping[str, Any]], *,
                final: bool = False, note: str = "") -> str:
    """Prints one evaluation round ({prefix: metrics}) as one line on
    process 0 (see `format_eval_line`) and returns it."""
    line = format_eval_line(step, results, class_names=self.info.class_names,
                            final=final, note=note)
    self.write(line)
    return line

  def summary(self, results: Mapping[str, Any]) -> str:
    """Prints the closing table of `results` (as in results.json) and the
    paths of the run's files on process 0, and returns it."""
    text = format_summary(results, self.workdir, class_names=self.info.class_names)
    self.write(text)
    return text

  # Scalars ---------------------------------------------------------------
  def skip_logged_steps(self, last_step: int | None) -> None:
    """Steps up to `last_step` are already in TensorBoard's event files (a
    run killed after its last checkpoint logged them): a resumed run, which
    computes the same values, does not write them a second time."""
    self._logged_until = last_step

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._logged_until is None or step > self._logged_until:
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
      kept = self._confusions.setdefault(prefix, {})
      kept[int(step)] = _Confusion(int(step), np.asarray(result["confusion_matrix"]),
                                   scalars, final)
      self._prune(kept)

  def _prune(self, kept: dict[int, _Confusion]) -> None:
    best = self._best[0] if self._best else None
    for step in sorted(kept)[:-_KEEP_CONFUSIONS]:
      if step != best:
        del kept[step]

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
  def plot(self, *, force: bool = False, best_step: int | None = None,
           best_metric: str = "", step: int | None = None) -> None:
    """Redraws the PNGs if forced or if the last drawing is old enough.

    Args:
      force: draw even if the last drawing is recent.
      best_step: early stopping's best step, marked on every curve panel
        (remembered for later calls); None or a negative step: unknown.
      best_metric: the metric it is best in ('val/macro_f1'), annotated on
        its panel.
      step: draw the confusion matrices of the evaluations at or before this
        step (the state results.json reports); default the latest.
    """
    if best_step is not None and best_step >= 0:
      self._best = (int(best_step), best_metric)
    if not self.is_main or not self.history:
      return
    if not force and time.monotonic() - self._last_plot < self.min_plot_interval:
      return
    self._last_plot = time.monotonic()
    for prefix, kept in self._confusions.items():
      entry = self._confusion_at(kept, step)
      cm = entry.matrix
      names = (list(self.info.class_names) if len(self.info.class_names) == len(cm)
               else [str(i) for i in range(len(cm))])
      split = f"{prefix} (final evaluation)" if entry.final else prefix
      save_figure(plot_confusion_matrix(cm, names, run=self.info.name, split=split,
                                        step=entry.step, metrics=entry.scalars),
                  os.path.join(self.workdir, f"confusion_{prefix}.png"))
    curves = {k: [tuple(p) for p in v] for k, v in self.history.items()
              if not k.startswith("final_")}
    last = max((int(s) for points in curves.values() for s, _ in points), default=0)
    best, metric = self._best if self._best else (None, "")
    save_figure(plot_curves(curves, title=f"{self.info.name}: training to step {last}",
                            best_step=best, best_metric=metric,
                            notes={"loss": self.loss_note} if self.loss_note else None),
                os.path.join(self.workdir, "curves.png"))

  @staticmethod
  def _confusion_at(kept: Mapping[int, _Confusion], step: int | None) -> _Confusion:
    """The newest entry at or before `step`, else the newest of all (a
    resumed run no longer has the matrices of before the restart)."""
    steps = sorted(kept)
    before = [s for s in steps if step is None or s <= step]
    return kept[before[-1] if before else steps[-1]]

  # Progress --------------------------------------------------------------
  def progress(self, total: int, initial: int, *, enabled: bool,
               file: TextIO | None = None) -> ProgressBar:
    """The training bar; its rate and ETA leave out the first step and the
    time spent in `paused()`. While it is shown, absl's console lines are
    written above it."""
    self._initial = int(initial)
    shown = enabled and self.is_main
    undo = _absl_lines_above_bars() if shown else (lambda: None)
    return ProgressBar(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       disable=not shown, file=file, timer=self._timer,
                       on_first_update=self.first_step_done, on_close=undo)

  # Checkpointing ---------------------------------------------------------
  def dump(self) -> dict:
    return {"history": self.history, "latest": self._latest}

  def load(self, saved: Mapping[str, Any]) -> None:
    self.history = {k: [list(p) for p in v] for k, v in saved["history"].items()}
    self._latest = {k: dict(v) for k, v in saved["latest"].items()}
