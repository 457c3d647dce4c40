r"""Runs a list (or grid) of configs and tabulates them: one table, one chart.

  python -m benchmarks.sweep --workdir_root runs/sweep \
      --configs "configs/bagnet.py:model=bagnet9,data=eolearn,opt=sgd" \
                "configs/bagnet.py:model=resnet18,data=eolearn,opt=sgd" \
      [--override train.epochs=2 ...]
  python -m benchmarks.sweep --workdir_root runs/bagnet_eolearn --grid data=eolearn
  python -m benchmarks.sweep --workdir_root runs/bagnet_tin \
      --grid data=tiny_imagenet,path=/data/tiny-imagenet-200 --models bagnet17 resnet18

`--grid ARGS` expands to `configs/bagnet.py:model=M,opt=O,ARGS` for every
model M of `--models` and optimiser O of `--opts` (default: all of them).

Each config runs in this process, one after another, through `eo_jax.run`
in `workdir_root/<name>` (name: the config string with punctuation
replaced). Its numbers are read back from the run itself: `results.json`
(test accuracy and macro-F1; with early stopping on, the test split is
scored at the best validation state) and the metric history saved in its
checkpoint (best validation accuracy and its step). Parameters and the
receptive field come from the model: a model's own `rf` where it reports one
(BagNets), else the largest receptive field that `eo_jax.summary` traces.
Wall time is measured around `eo_jax.run` (compilation included, not the
~10 s of importing JAX and TensorFlow once per sweep).

A run whose workdir already holds results.json and a sweep_run.json for the
same config and overrides is not run again; its recorded numbers are
reused, so an interrupted sweep continues where it stopped (the trainer
itself resumes a half-finished run). Delete a run's workdir to redo it. A
run that fails (e.g. diverges) is reported in the table and the sweep goes
on, unless `--fail_fast`.

Writes to workdir_root: results.md (the markdown table, with the command),
results.json (the same rows, full precision) and best_val_accuracy.png.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections

from eo_jax import config as config_lib

BAGNET_CONFIG = "configs/bagnet.py"
GRID_MODELS = ("bagnet9", "bagnet17", "bagnet33", "resnet18")
GRID_OPTS = ("sgd", "adam", "adadelta")


@dataclasses.dataclass
class Row:
  """One run of the sweep, as tabulated."""
  config: str
  name: str
  model: str = ""
  optimizer: str = ""
  params: int | None = None
  receptive_field: int | None = None
  input_size: int | None = None
  best_val_accuracy: float | None = None
  best_step: int | None = None
  test_accuracy: float | None = None
  test_macro_f1: float | None = None
  wall_s: float | None = None
  error: str = ""


# ------------------------------------------------------------------ Configs
def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:args]' as main.py's --config does (locked)."""
  return config_lib.load_config(spec)


def apply_override(config: ml_collections.ConfigDict, text: str) -> None:
  """Sets 'a.b.c=value' (a Python literal, else a string) on a locked config."""
  key, sep, value = text.partition("=")
  if not sep or not key.strip():
    raise ValueError(f"--override {text!r} must look like 'train.epochs=2'.")
  try:
    value = ast.literal_eval(value.strip())
  except (ValueError, SyntaxError):
    value = value.strip()
  try:
    config_lib.set_dotted(config, key.strip(), value)
  except KeyError as e:
    raise KeyError(f"--override {text!r}: {e.args[0]}") from None


def run_name(spec: str) -> str:
  """A folder name for a config string: 'bagnet.model-bagnet9.opt-sgd'."""
  path, _, arg = spec.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  parts = [stem] + [p.strip() for p in arg.split(",") if p.strip()]
  return re.sub(r"[^A-Za-z0-9_.-]+", "_",
                ".".join(p.replace("=", "-") for p in parts))


def expand_grid(grid_args: str, models: Sequence[str] = GRID_MODELS,
                opts: Sequence[str] = GRID_OPTS,
                config_file: str = BAGNET_CONFIG) -> list[str]:
  """'data=eolearn' -> one configs/bagnet.py string per (model, optimiser)."""
  extra = f",{grid_args}" if grid_args else ""
  return [f"{config_file}:model={m},opt={o}{extra}" for m in models
          for o in opts]


def short_labels(specs: Sequence[str]) -> list[str]:
  """Chart labels: each config's arguments, less those all configs share."""
  args = [[p.strip() for p in s.partition(":")[2].split(",") if p.strip()]
          for s in specs]
  common = set.intersection(*(set(a) for a in args)) if args else set()
  labels = []
  for spec, own in zip(specs, args):
    kept = [p.split("=", 1)[-1] for p in own if p not in common]
    labels.append(" ".join(kept) or run_name(spec))
  return labels


# --------------------------------------------------------------------- Runs
def _model_facts(config: ml_collections.ConfigDict, info
                 ) -> tuple[int, int | None, int]:
  """(parameters, receptive field in px, input side in px) of the run's model."""
  from eo_jax import summary  # pylint: disable=g-import-not-at-top
  from eo_jax.models import build_model  # pylint: disable=g-import-not-at-top
  size = config.input.image_size or info.image_size
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  model = build_model(config.model, bands=info.bands,
                      num_classes=info.num_classes)
  rows = summary.summarize(model, (1, height, width, info.num_bands))
  params = summary.totals(rows)["params"]
  rf = getattr(model, "rf", None)
  if rf is not None:
    field = int(rf.size)
  else:
    fields = [r.receptive_field for r in rows if r.receptive_field is not None]
    field = max(fields) if fields else None
  return params, field, int(height)


def summarize_run(spec: str, workdir: str, config: ml_collections.ConfigDict,
                  wall_s: float | None) -> Row:
  """Reads a finished run's numbers back from its workdir."""
  from eo_jax.data.datasets.base import DatasetInfo  # pylint: disable=g-import-not-at-top
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    meta = checkpointer.restore_meta()
  finally:
    checkpointer.close()
  info = DatasetInfo.from_dict(meta["info"])
  row = Row(config=spec, name=run_name(spec), model=config.model.name,
            optimizer=config.optim.name, wall_s=wall_s)
  row.params, row.receptive_field, row.input_size = _model_facts(config, info)
  val = meta["history"]["history"].get("val/accuracy", [])
  if val:
    best_step, best = max(val, key=lambda p: (p[1], -p[0]))
    row.best_val_accuracy, row.best_step = float(best), int(best_step)
  test = results.get("test", {})
  row.test_accuracy = test.get("accuracy")
  row.test_macro_f1 = test.get("macro_f1")
  return row


def run_one(spec: str, overrides: Sequence[str], workdir_root: str) -> Row:
  """Trains one config (or reuses its finished run) and returns its row."""
  import jax  # pylint: disable=g-import-not-at-top
  import eo_jax  # pylint: disable=g-import-not-at-top
  config = load_config(spec)
  for text in overrides:
    apply_override(config, text)
  workdir = os.path.join(workdir_root, run_name(spec))
  record_path = os.path.join(workdir, "sweep_run.json")
  record = {"config": spec, "overrides": list(overrides)}
  if os.path.exists(record_path) and os.path.exists(
      os.path.join(workdir, "results.json")):
    with open(record_path) as f:
      saved = json.load(f)
    if {k: saved.get(k) for k in record} == record:
      print(f"[sweep] {spec}: finished earlier, reusing {workdir}", flush=True)
      return summarize_run(spec, workdir, config, saved.get("wall_s"))
  print(f"[sweep] {spec} -> {workdir}", flush=True)
  start = time.perf_counter()
  eo_jax.run(config, workdir)
  wall_s = time.perf_counter() - start
  with open(record_path, "w") as f:
    json.dump(dict(record, wall_s=wall_s), f, indent=2)
  # Each run compiles its own programs; drop them before the next one.
  jax.clear_caches()
  row = summarize_run(spec, workdir, config, wall_s)
  print(f"[sweep] {spec}: best val acc {row.best_val_accuracy}, test acc "
        f"{row.test_accuracy}, {wall_s:.0f} s", flush=True)
  return row


# ------------------------------------------------------------------ Outputs
def _fmt(value: Any, spec: str = ".4f") -> str:
  return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[Row]) -> str:
  """The markdown table of `rows`."""
  lines = ["| config | model | optimizer | params | RF (px) | input (px) | "
           "best val acc (step) | test acc | test macro-F1 | wall (s) |",
           "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
  for r in rows:
    if r.error:
      lines.append(f"| `{r.config}` | {r.model} | {r.optimizer} | | | | "
                   f"failed: {r.error} | | | {_fmt(r.wall_s, '.0f')} |")
      continue
    best = _fmt(r.best_val_accuracy)
    if r.best_step is not None:
      best += f" ({r.best_step})"
    lines.append(
        f"| `{r.config}` | {r.model} | {r.optimizer} | "
        f"{_fmt(r.params, ',')} | {_fmt(r.receptive_field, 'd')} | "
        f"{_fmt(r.input_size, 'd')} | {best} | {_fmt(r.test_accuracy)} | "
        f"{_fmt(r.test_macro_f1)} | {_fmt(r.wall_s, '.0f')} |")
  return "\n".join(lines) + "\n"


def plot_best_val(rows: Sequence[Row], path: str) -> str:
  """Horizontal bars of the best validation accuracy, coloured by optimiser."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  labels = short_labels([r.config for r in rows])
  optimizers = list(dict.fromkeys(r.optimizer for r in rows))
  colours = {o: f"C{i}" for i, o in enumerate(optimizers)}
  fig = Figure(figsize=(7, 0.45 * len(rows) + 1.4))
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  y = list(range(len(rows)))[::-1]
  values = [r.best_val_accuracy or 0.0 for r in rows]
  ax.barh(y, values, color=[colours[r.optimizer] for r in rows])
  for yi, r, v in zip(y, rows, values):
    text = "failed" if r.error else f"{v:.3f}"
    ax.text(v + 0.005, yi, text, va="center", fontsize=8)
  ax.set_yticks(y)
  ax.set_yticklabels(labels, fontsize=8)
  ax.set_xlim(0, 1.08)
  ax.set_xlabel("best validation accuracy")
  ax.legend(handles=[Patch(color=colours[o], label=o) for o in optimizers],
            loc="lower right", fontsize=8, title="optimizer")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  return path


def write_outputs(rows: Sequence[Row], workdir_root: str,
                  command: str) -> dict[str, str]:
  """Writes results.md, results.json and best_val_accuracy.png."""
  os.makedirs(workdir_root, exist_ok=True)
  paths = {"table": os.path.join(workdir_root, "results.md"),
           "json": os.path.join(workdir_root, "results.json"),
           "chart": os.path.join(workdir_root, "best_val_accuracy.png")}
  with open(paths["table"], "w") as f:
    f.write(f"```\n{command}\n```\n\n{format_table(rows)}")
  with open(paths["json"], "w") as f:
    json.dump([dataclasses.asdict(r) for r in rows], f, indent=2)
  plot_best_val(rows, paths["chart"])
  return paths


def sweep(specs: Sequence[str], workdir_root: str, *,
          overrides: Sequence[str] = (), fail_fast: bool = False,
          command: str = "") -> list[Row]:
  """Runs every config in turn and writes the table and the chart."""
  if not specs:
    raise ValueError("Nothing to run: give --configs and/or --grid.")
  names = [run_name(s) for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"Two configs map to the same workdir: {names}.")
  for spec in specs:
    # Every config must load before hours are spent on the first one.
    config = load_config(spec)
    for text in overrides:
      apply_override(config, text)
  rows = []
  for spec in specs:
    try:
      rows.append(run_one(spec, overrides, workdir_root))
    except Exception as e:  # pylint: disable=broad-except
      if fail_fast:
        raise
      logging.exception("Run %s failed.", spec)
      config = load_config(spec)
      first_line = (str(e).splitlines() or [""])[0][:120].replace("|", "/")
      rows.append(Row(config=spec, name=run_name(spec),
                      model=config.model.name, optimizer=config.optim.name,
                      error=f"{type(e).__name__}: {first_line}"))
    write_outputs(rows, workdir_root, command)
  return rows


# ------------------------------------------------------------- Command line
def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m benchmarks.sweep",
      description=__doc__.split("\n\n", 1)[0].strip(),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", nargs="+", default=[],
                      help="config strings, 'path.py:key=value,...'")
  parser.add_argument("--grid", default=None,
                      help=f"arguments added to {BAGNET_CONFIG} for every "
                      "model x optimiser, e.g. 'data=eolearn'")
  parser.add_argument("--models", nargs="+", default=list(GRID_MODELS))
  parser.add_argument("--opts", nargs="+", default=list(GRID_OPTS))
  parser.add_argument("--workdir_root", required=True)
  parser.add_argument("--override", action="append", default=[],
                      help="'a.b=value' applied to every config (repeatable)")
  parser.add_argument("--fail_fast", action="store_true")
  parser.add_argument("--verbose", action="store_true",
                      help="log the runs at INFO (default: warnings only)")
  args = parser.parse_args(argv[1:])
  # Grain worker processes need absl flags marked as parsed.
  flags.FLAGS.mark_as_parsed()
  return args


def main(args: argparse.Namespace) -> None:
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  specs = list(args.configs)
  if args.grid is not None:
    specs += expand_grid(args.grid, args.models, args.opts)
  command = "python -m benchmarks.sweep " + shlex.join(sys.argv[1:])
  rows = sweep(specs, args.workdir_root, overrides=args.override,
               fail_fast=args.fail_fast, command=command)
  print(format_table(rows))
  print(f"Table, rows and chart in {os.path.abspath(args.workdir_root)}")
  if any(r.error for r in rows):
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_args)
