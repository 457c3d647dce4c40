"""What a user sees of a run: the console lines, the progress bar's timing,
the closing summary, the metric writer and the titles of the PNGs that
`Reporter.plot` draws."""
import io
import os
import sys
import types

import numpy as np
import pytest
from absl import logging

from eo_jax.data.bands import Band
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.objectives import losses
from eo_jax.train import reporting
from eo_jax.visualize import curves

CLASSES = ("forest", "grassland", "shrubland", "artificial")
INFO = DatasetInfo(name="eolearn_sample", bands=(Band("B02", 490.0),),
                   class_names=CLASSES)


class FakeClock:
  """Seconds that move only when a test says so."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self) -> float:
    return self.now


class NullWriter:

  def write_scalars(self, step, scalars):
    pass


def make_reporter(workdir, *, is_main=True, **kwargs):
  return reporting.Reporter(str(workdir), INFO, writer=NullWriter(),
                            is_main=is_main, **kwargs)


def classification_result(accuracy, macro_f1, k=4):
  return {"accuracy": accuracy, "macro_f1": macro_f1, "map": 0.49, "loss": 0.715,
          **{f"f1/{name}": 0.5 for name in CLASSES},
          "confusion_matrix": np.eye(k, dtype=np.int64) * 5}


# --- Eval lines -------------------------------------------------------------


def test_eval_line_is_compact_and_skips_per_class_metrics(capsys):
  results = {"val": classification_result(0.7531, 0.4362),
             "probe": {"knn10/accuracy": 0.82, "knn10/macro_f1": 0.4}}
  line = reporting.format_eval_line(780, results, class_names=CLASSES)
  assert line == ("step 780 | val accuracy 0.753 macro_f1 0.436 map 0.490 loss 0.715"
                  " | probe knn10/accuracy 0.820 knn10/macro_f1 0.400")
  reporter = make_reporter("unused")
  printed = reporter.eval_line(780, results, note="new best val/macro_f1")
  assert printed == line + " | new best val/macro_f1"
  assert capsys.readouterr().out == printed + "\n"
  assert reporting.format_eval_line(420, {"test": {"miou": 0.5}}, final=True) == (
      "final, step 420 | test miou 0.500")
  # Other processes print nothing.
  make_reporter("unused", is_main=False).eval_line(780, results)
  assert capsys.readouterr().out == ""


def test_headline_order_and_values():
  shown = reporting.headline({"prototype_perplexity": 12.5, "loss": 0.3,
                              "accuracy": 0.9, "iou/water": 0.1, "flag": True,
                              "matrix": np.zeros((2, 2))})
  assert list(shown) == ["accuracy", "loss", "prototype_perplexity"]
  assert [reporting.format_value(v) for v in (0.75312, 4096.0, 3.2e-5, float("nan"))
          ] == ["0.753", "4096", "3.2e-05", "nan"]


# --- Summary ----------------------------------------------------------------


def test_summary_lists_each_prefix_headline_and_the_paths(tmp_path, capsys):
  for name in ("results.json", "curves.png", "confusion_val.png",
               "confusion_test.png", "heatmaps/val_step_000010/ex0.png",
               "checkpoints/540/state", "checkpoints_best/420/state"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
  val = {k: v for k, v in classification_result(0.7531, 0.4362).items()
         if k != "confusion_matrix"}
  test = dict(val, accuracy=0.835, macro_f1=0.441)
  results = {"step": 540, "dataset": "eolearn_sample", "evaluated_step": 420,
             "early_stopping": {"best": 0.452, "best_step": 420, "bad_evaluations": 7,
                                "metric": "val/macro_f1"},
             "val": val, "test": test, "probe": {"knn10/accuracy": 0.82}}
  text = make_reporter(tmp_path).summary(results)
  assert capsys.readouterr().out == text + "\n"
  lines = text.splitlines()
  assert lines[0] == ("Final metrics of eolearn_sample, state of step 420 "
                      "(best val/macro_f1 0.452; trained to step 540):")
  # One table: a header row, then one row per prefix in results' order.
  assert lines[1].split() == ["accuracy", "macro_f1", "map", "loss"]
  assert lines[2].split() == ["val", "0.753", "0.436", "0.490", "0.715"]
  assert lines[3].split() == ["test", "0.835", "0.441", "0.490", "0.715"]
  # The aligned columns: each value starts under its metric's name.
  assert lines[2].index("0.436") == lines[1].index("macro_f1")
  # A prefix reporting other metrics gets its own header.
  assert lines[4].split() == ["knn10/accuracy"]
  assert lines[5].split() == ["probe", "0.820"]
  assert "f1/forest" not in text and "per-class f1 of val, test: in results.json" in text
  for path in ("results.json", "curves.png", "confusion_val.png", "confusion_test.png",
               "checkpoints" + os.sep, "checkpoints_best" + os.sep):
    assert str(tmp_path / path) in text, path
  assert f"{tmp_path / 'heatmaps'}{os.sep} (1 PNG)" in text
  assert f"tensorboard --logdir {tmp_path}" in text
  # Without early stopping the header names the one step.
  plain = reporting.format_summary({"step": 8, "dataset": "tiny", "val": val}, str(tmp_path))
  assert plain.splitlines()[0] == "Final metrics of tiny, state of step 8:"
  make_reporter(tmp_path, is_main=False).summary(results)
  assert capsys.readouterr().out == ""


# --- Progress timing --------------------------------------------------------


def test_step_timer_leaves_out_the_first_step_and_pauses():
  clock = FakeClock()
  timer = reporting.StepTimer(clock)
  assert timer.rate(5) is None  # nothing timed yet
  clock.now += 300.0            # the first step: compilation
  timer.start(1)
  assert timer.rate(1) is None
  clock.now += 10.0
  assert timer.rate(11) == pytest.approx(1.0)
  timer.pause()
  timer.pause()                 # nested: one pause
  clock.now += 50.0
  assert timer.rate(11) == pytest.approx(1.0)  # a pause in progress counts too
  timer.resume()
  clock.now += 5.0
  timer.resume()
  clock.now += 10.0
  assert timer.active_seconds() == pytest.approx(20.0)
  assert timer.rate(31) == pytest.approx(1.5)
  timer.start(99)               # a second start changes nothing
  assert timer.rate(31) == pytest.approx(1.5)


def test_progress_bar_rate_and_eta_exclude_compilation_and_evaluation(capsys):
  clock = FakeClock()
  reporter = make_reporter("unused", clock=clock)
  out = io.StringIO()
  bar = reporter.progress(total=120, initial=20, enabled=True, file=out)
  reporter.compiling("the train step of supervised on resnet for 1 device")
  assert capsys.readouterr().out == (
      "Compiling the train step of supervised on resnet for 1 device "
      "(first step only)...\n")
  clock.now += 3600.0  # a slow compilation
  bar.update(1)        # the first update starts the timer
  assert capsys.readouterr().out == "Compiled and ran the first step in 3600.0 s.\n"
  # Until a timed step, no rate and no ETA instead of a 100-hour estimate.
  assert bar.format_dict["rate"] is None
  assert "?" in bar.format_meter(**bar.format_dict)
  for _ in range(10):
    clock.now += 0.5
    bar.update(1)
  with reporter.paused():  # an evaluation
    clock.now += 600.0
  for _ in range(10):
    clock.now += 0.5
    bar.update(1)
  assert bar.n == 41
  assert bar.format_dict["rate"] == pytest.approx(2.0)
  # 79 steps left at 2 steps/s: 40 s (format_meter rounds to whole seconds).
  meter = bar.format_meter(**(bar.format_dict | {"elapsed": 0}))
  assert "41/120" in meter and "<00:39" in meter and "2.00step/s" in meter
  reporter.first_step_done()  # too late: changes nothing
  assert bar.format_dict["rate"] == pytest.approx(2.0)
  assert capsys.readouterr().out == ""
  bar.close()


def test_first_step_done_before_the_bar_update_counts_the_same():
  clock = FakeClock()
  reporter = make_reporter("unused", clock=clock)
  bar = reporter.progress(total=10, initial=0, enabled=True, file=io.StringIO())
  clock.now += 100.0
  reporter.first_step_done()  # called before progress.update(1)
  bar.update(1)
  clock.now += 4.0
  bar.update(4)
  assert bar.format_dict["rate"] == pytest.approx(1.0)
  bar.close()


def test_absl_lines_go_above_the_bar_while_it_is_shown():
  handler = logging.get_absl_handler().python_handler
  saved = handler.stream
  handler.stream = sys.stderr  # the console, as under absl.app
  try:
    bar = make_reporter("unused").progress(total=5, initial=0, enabled=True,
                                           file=io.StringIO())
    assert isinstance(handler.stream, reporting._TqdmStream)
    bar.close()
    assert handler.stream is sys.stderr
    # Not shown (another process, or progress_bar off): left alone.
    make_reporter("unused", is_main=False).progress(total=5, initial=0, enabled=True)
    assert handler.stream is sys.stderr
  finally:
    handler.stream = saved
  target = io.StringIO()
  reporting._TqdmStream(target).write("I0101 trainer.py:1] New best.\n")
  assert target.getvalue() == "I0101 trainer.py:1] New best.\n"


# --- Writer and loss note ---------------------------------------------------


def test_make_writer_writes_tensorboard_only(tmp_path, caplog):
  writer = reporting.make_writer(str(tmp_path), is_main=True)
  with caplog.at_level("INFO"):
    writer.write_scalars(3, {"train/loss": 0.5})
    writer.flush()
  assert not any("train/loss" in r.getMessage() for r in caplog.records)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  other = reporting.make_writer(str(tmp_path / "other"), is_main=False)
  other.write_scalars(3, {"train/loss": 0.5})
  other.flush()
  other.close()
  assert not (tmp_path / "other").exists()
  writer.close()


def test_describe_loss():
  def loss(weights=(), smoothing=0.0, gamma=0.0):
    return types.SimpleNamespace(class_weights=weights, label_smoothing=smoothing,
                                 focal_gamma=gamma)
  assert losses.describe_loss(loss()) == ""
  assert losses.describe_loss(loss((1.0, 2.8))) == (
      "train: class-weighted CE (config.loss), val: plain CE")
  assert losses.describe_loss(loss(smoothing=0.1, gamma=2.0)) == (
      "train: label-smoothed (0.1) focal (gamma 2) (config.loss), val: plain CE")


# --- Plots ------------------------------------------------------------------


@pytest.fixture
def drawn(monkeypatch):
  """{file name: figure} of what Reporter.plot saves."""
  figures = {}
  monkeypatch.setattr(reporting, "save_figure",
                      lambda fig, path: figures.__setitem__(os.path.basename(path), fig))
  return figures


def test_plot_titles_say_run_split_step_and_metric(tmp_path, drawn):
  note = "train: class-weighted CE (config.loss), val: plain CE"
  reporter = make_reporter(tmp_path, loss_note=note)
  for step, f1 in ((10, 0.40), (20, 0.45), (30, 0.42)):
    reporter.scalars(step, {"train/loss": 1.0 / step})
    reporter.eval_result(step, "val", classification_result(0.70 + step / 1000, f1))
  reporter.eval_result(20, "test", classification_result(0.8, 0.5), final=True)
  # The reported state is the best one, step 20.
  reporter.plot(force=True, best_step=20, best_metric="val/macro_f1", step=20)
  assert drawn["confusion_val.png"].axes[0].get_title() == (
      "eolearn_sample: val, step 20\naccuracy 0.720, macro-F1 0.450")
  assert drawn["confusion_test.png"].axes[0].get_title() == (
      "eolearn_sample: test (final evaluation), step 20\n"
      "accuracy 0.800, macro-F1 0.500")
  fig = drawn["curves.png"]
  assert fig.get_suptitle() == "eolearn_sample: training to step 30"
  panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_visible()}
  assert note in " ".join(panels["loss"].get_title().split())
  for ax in panels.values():
    assert [list(line.get_xdata()) for line in ax.get_lines()
            if line.get_gid() == curves.BEST_STEP_GID] == [[20, 20]]
  # A later call without the best step still marks it; without `step` the
  # newest confusion matrix is drawn.
  drawn.clear()
  reporter.plot(force=True)
  assert drawn["confusion_val.png"].axes[0].get_title().startswith(
      "eolearn_sample: val, step 30\n")
  assert any(line.get_gid() == curves.BEST_STEP_GID
             for line in drawn["curves.png"].axes[0].get_lines())


def test_confusion_matrices_kept_are_bounded_but_keep_the_best(tmp_path):
  reporter = make_reporter(tmp_path, min_plot_interval=1e9)
  reporter.eval_result(1, "val", classification_result(0.5, 0.5))
  reporter.plot(best_step=1, best_metric="val/macro_f1")  # throttled: draws nothing
  for step in range(2, 40):
    reporter.eval_result(step, "val", classification_result(0.5, 0.4))
  kept = sorted(reporter._confusions["val"])
  assert kept == [1] + list(range(30, 40))
