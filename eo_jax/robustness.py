r"""Corruption robustness of a trained run: `python -m eo_jax.robustness`.

  python -m eo_jax.robustness --workdir=runs/eurosat_ms [--split=test] \
      [--corruptions=haze,striping] [--severities=1,2,3,4,5] \
      [--baseline=runs/other] [--metric=accuracy] [--out=DIR]
  python -m eo_jax.robustness --workdir=runs/cifar10 --cifar10c=/data/CIFAR-10-C

The run in --workdir is restored (`eo_jax.restore_run`). Each example of the
split is read in raw units, corrupted (`eo_jax.data.corruptions`; every
example has its own seed, the same at every severity and for every run, so
a baseline sees the very same images), resized to the run's input size when
it trained at another, normalised with the run's band statistics
(`Run.normalize`) and predicted (`Run.predict`). The task's metrics come
from eo_jax.evaluate's metric classes: macro-F1, accuracy and mAP for
classification; mIoU, mean class accuracy and overall accuracy for
segmentation. The clean split goes first, through the same path.

With --cifar10c=PATH the published CIFAR-10-C images are read instead
(default: its 15 benchmark corruptions, severities 1-5); the run must
predict CIFAR-10's classes from R, G, B bands. A run trained on 'cifar10'
is always scored on CIFAR-10-C: without --cifar10c, on the `CIFAR-10-C/`
folder beside or inside its config.data.path (else an error says where to
download it).

Written to --out (default <workdir>/robustness/):
  robustness.csv   every metric per (corruption, severity), clean first
  robustness.md    the headline metric (--metric): a row per corruption, a
                   column per severity and their mean, and the clean score;
                   with --baseline, CE and relative CE per corruption, mCE
  robustness.json  the same numbers, for scripts
  heatmap.png      the headline metric per corruption x severity
  examples.png     one example under every corruption at --example_severity

Corruption error (Hendrycks & Dietterich 2019), with error E = 1 - metric:
  CE_c = sum_s E_{c,s} / sum_s E^base_{c,s},   mCE = mean over c of CE_c,
  relative CE_c = sum_s (E_{c,s} - E_clean) / sum_s (E^base_{c,s} - E^base_clean).
A run against itself has mCE = 1 (and relative mCE = 1 when every corruption
lowers its score; a CE whose baseline sum is 0 is NaN).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import corruptions as corruptions_lib
from eo_jax.data import transforms
from eo_jax.data.datasets import cifar
from eo_jax.data.datasets.base import CLASSIFICATION, SEGMENTATION, missing_data

CLEAN = "clean"
SEVERITIES = corruptions_lib.SEVERITIES
PRIMARY_METRIC = {CLASSIFICATION: "macro_f1", SEGMENTATION: "miou"}
METRICS = {CLASSIFICATION: ("macro_f1", "accuracy", "map"),
           SEGMENTATION: ("miou", "mean_acc", "overall_acc")}
EO, CIFAR10C = "eo", "cifar10c"
Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Row:
  """The scores of one (corruption, severity); `CLEAN`, 0 for the clean split."""
  corruption: str
  severity: int
  metrics: dict[str, float]
  examples: int


@dataclasses.dataclass(frozen=True)
class CorruptionErrors:
  """CE and relative CE per corruption against a baseline, and their means."""
  metric: str
  ce: dict[str, float]
  relative_ce: dict[str, float]
  mce: float
  relative_mce: float


# -------------------------------------------------------------------- Checks
def check_run(run: Any, what: str = "--workdir") -> None:
  """Raises a clear error for a run that cannot be scored here."""
  from eo_jax.objectives.base import Objective  # pylint: disable=g-import-not-at-top
  task = run.info.task
  if task not in PRIMARY_METRIC:
    raise errors.ConfigValueError(
        f"{what} {run.workdir} trained on {task} data ({run.info.name!r}); "
        f"robustness is measured for {sorted(PRIMARY_METRIC)} runs.")
  if type(run.objective).predict is Objective.predict:
    raise errors.ConfigValueError(
        f"{what} {run.workdir}: objective {run.config.objective!r} does not "
        "predict classes; score a supervised or segmentation run (e.g. one "
        "fine-tuned from it).")


def split_source(run: Any, split: str) -> Any:
  """The run's `split` (raw units), or an error naming the splits it has."""
  if split not in run.dataset.splits:
    raise errors.ConfigValueError(
        f"--split={split!r}: dataset {run.info.name!r} has the splits "
        f"{sorted(run.dataset.splits)}.")
  return run.dataset.split(split)


def check_comparable(run: Any, baseline: Any, split: str) -> None:
  """Raises when `baseline` was not trained on the data `run` was."""
  where = f"--baseline {baseline.workdir}"
  bands_lib.check_same(run.info.bands, baseline.info.bands,
                       f"{where} vs --workdir {run.workdir}")
  for field in ("name", "task", "class_names"):
    ours, theirs = getattr(run.info, field), getattr(baseline.info, field)
    if ours != theirs:
      raise errors.ConfigValueError(
          f"{where} was trained on other data: its dataset {field} is "
          f"{theirs!r}, the run's is {ours!r}. A corruption error compares "
          "two models on the same data; give a baseline trained on it.")
  theirs, ours = len(split_source(baseline, split)), len(split_source(run, split))
  if theirs != ours:
    raise errors.ConfigValueError(
        f"{where}: its {split!r} split has {theirs} examples, the run's "
        f"{ours}: other data (config.data differs). Give a baseline trained "
        "on the same data.")


def check_cifar10c_run(run: Any) -> None:
  """Raises unless `run` predicts CIFAR-10's classes from R, G, B."""
  bands_lib.check_same(bands_lib.RGB, run.info.bands,
                       f"--cifar10c needs a run on R, G, B bands; {run.workdir}")
  if tuple(run.info.class_names) != cifar.CLASSES:
    raise errors.ConfigValueError(
        f"--cifar10c: {run.workdir} predicts {list(run.info.class_names)}; "
        f"CIFAR-10-C is labelled with CIFAR-10's {list(cifar.CLASSES)}.")


def parse_names(text: str | Sequence[str], known: Sequence[str]) -> list[str]:
  """Corruption names from 'a,b' (or a list); '' means all of `known`."""
  names = ([n.strip() for n in text.split(",") if n.strip()]
           if isinstance(text, str) else list(text))
  unknown = [n for n in names if n not in known]
  if unknown:
    raise errors.ConfigError(
        f"Unknown corruption(s) {unknown} in --corruptions; the corruptions "
        f"are {list(known)}.")
  if len(set(names)) != len(names):
    raise errors.ConfigValueError(f"--corruptions names one twice: {names}.")
  return names or list(known)


def parse_severities(text: str | Sequence[int],
                     allowed: Sequence[int] = (0,) + SEVERITIES) -> list[int]:
  """Severities from '1,2,3' (or a list of ints), each one of `allowed`."""
  parts = text.split(",") if isinstance(text, str) else list(text)
  try:
    values = [int(str(p).strip()) for p in parts if str(p).strip()]
  except ValueError:
    raise errors.ConfigValueError(
        f"--severities={text!r} must be integers such as 1,2,3,4,5.") from None
  bad = [v for v in values if v not in allowed]
  if bad or not values or len(set(values)) != len(values):
    raise errors.ConfigValueError(
        f"--severities={text!r}: give distinct severities from {list(allowed)}.")
  return values


# ---------------------------------------------------------------- Prediction
class _Predictor:
  """Raw images -> the run's logits, at the run's input size, in batches of
  one shape (the last one padded) so that one compiled program serves all."""

  def __init__(self, run: Any, batch_size: int = 0):
    self.run = run
    size = run.config.input.get("image_size", 0)
    self.size = transforms.size_pair(size) if size else None
    self.batch_size = int(batch_size or run.config.input.get("eval_batch_size", 0)
                          or run.config.input.batch_size)

  def resize(self, array: np.ndarray, method: str) -> np.ndarray:
    if self.size is None or array.shape[:2] == self.size:
      return array
    return transforms.resize(array, self.size, method)

  def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
    inputs = self.run.normalize(np.stack([self.resize(im, "bilinear")
                                          for im in images]))
    n = len(inputs)
    if n < self.batch_size:
      pad = np.repeat(inputs[:1], self.batch_size - n, axis=0)
      inputs = np.concatenate([inputs, pad])
    return self.run.predict(inputs)[:n]


def _new_metrics(info: Any) -> Any:
  # Imported when needed: eo_jax.evaluate imports JAX, and --help should
  # answer at once.
  from eo_jax.evaluate import classification, segmentation  # pylint: disable=g-import-not-at-top
  if info.task == CLASSIFICATION:
    return classification.ClassificationMetrics(info.num_classes, info.class_names)
  return segmentation.SegmentationMetrics(info.num_classes, info.class_names,
                                          ignore_index=info.ignore_index)


def _targets(predictor: _Predictor, examples: Sequence[Mapping[str, Any]],
             task: str) -> dict[str, np.ndarray]:
  if task == CLASSIFICATION:
    return {"label": np.array([int(e["label"]) for e in examples], np.int64)}
  return {"mask": np.stack([predictor.resize(np.asarray(e["mask"], np.int32),
                                             "nearest") for e in examples])}


Variant = Callable[[np.ndarray, int], np.ndarray] | None


def _score(predictor: _Predictor, source: Any, variants: Mapping[Any, Variant],
           log: Log | None = None, what: str = "") -> dict[Any, Row]:
  """Scores every variant of `source`'s images (each read once).

  `variants` maps a key to f(raw image, example index) -> image (None: the
  image as read); returns a Row per key, its corruption and severity taken
  from the key (corruption, severity).
  """
  info = predictor.run.info
  accumulators = {key: _new_metrics(info) for key in variants}
  n = len(source)
  size = predictor.batch_size
  for start in range(0, n, size):
    indices = range(start, min(n, start + size))
    examples = [source[i] for i in indices]
    raw = [np.asarray(e["image"], np.float32) for e in examples]
    targets = _targets(predictor, examples, info.task)
    for key, variant in variants.items():
      images = raw if variant is None else [variant(im, i)
                                            for im, i in zip(raw, indices)]
      accumulators[key].update({"logits": predictor.logits(images), **targets})
    if log and (start // size) % 20 == 19:
      log(f"{what}: {indices[-1] + 1} of {n} examples")
  rows = {}
  for key, metrics in accumulators.items():
    result = metrics.result()
    rows[key] = Row(corruption=key[0], severity=key[1], examples=n,
                    metrics={m: float(result[m]) for m in METRICS[info.task]})
  return rows


def corruption_seed(seed: int, corruption: str, index: int) -> tuple[int, int, int]:
  """The generator seed of example `index` under `corruption`: the same at
  every severity and for every run."""
  return (int(seed), zlib.crc32(corruption.encode()), int(index))


def _corrupter(name: str, severity: int, bands: Sequence[bands_lib.Band],
               seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
  def apply(image: np.ndarray, index: int) -> np.ndarray:
    return corruptions_lib.corrupt(name, image, severity, bands,
                                   corruption_seed(seed, name, index))
  return apply


def evaluate_corruptions(run: Any, split: str = "test",
                         corruptions: Sequence[str] | None = None,
                         severities: Sequence[int] = SEVERITIES, *,
                         batch_size: int = 0, seed: int = 0,
                         bands: Sequence[bands_lib.Band] | None = None,
                         cifar10c: str | None = None,
                         log: Log | None = None) -> list[Row]:
  """The run's scores on `split`, clean and under each corruption x severity.

  Args:
    run: a restored run (`eo_jax.restore_run`).
    split: the split to corrupt (CIFAR-10-C: the clean score's split).
    corruptions: names (default: all of `corruptions.CORRUPTIONS`, or
      CIFAR-10-C's 15 benchmark corruptions).
    severities: 1-5; 0 is the clean image (eo_jax corruptions only).
    batch_size: prediction batch (default: the run's eval batch size).
    seed: base seed of the corruptions' random draws.
    bands: bands whose statistics set the corruption magnitudes (default
      the run's; a baseline gets the run's, so both see the same images).
    cifar10c: a CIFAR-10-C folder: read its images instead of corrupting.
    log: called with progress messages.

  Returns:
    Rows: (CLEAN, 0) first, then corruption by corruption, severity by
    severity, each with the task's metrics (`METRICS`).
  """
  check_run(run)
  predictor = _Predictor(run, batch_size)
  source = split_source(run, split)
  if cifar10c:
    check_cifar10c_run(run)
    names = (parse_names(corruptions, cifar.CORRUPTIONS + cifar.EXTRA_CORRUPTIONS)
             if corruptions else list(cifar.CORRUPTIONS))
    levels = parse_severities(severities, cifar.SEVERITIES)
    rows = _score(predictor, source, {(CLEAN, 0): None}, log, CLEAN)
    for name in names:
      for severity in levels:
        data = cifar.cifar10_c(path=str(cifar10c), corruption=name,
                               severity=severity)
        rows.update(_score(predictor, data.split("test"),
                           {(name, severity): None}, log, f"{name}-{severity}"))
        if log:
          log(f"{name} severity {severity}: "
              f"{_headline(rows[(name, severity)], run.info.task)}")
    return list(rows.values())
  names = parse_names(corruptions or "", tuple(corruptions_lib.CORRUPTIONS))
  levels = parse_severities(severities)
  bands = tuple(bands or run.info.bands)
  variants: dict[Any, Variant] = {(CLEAN, 0): None}
  for name in names:
    for severity in levels:
      variants[(name, severity)] = _corrupter(name, severity, bands, seed)
  return list(_score(predictor, source, variants, log, split).values())


def _headline(row: Row, task: str) -> str:
  return ", ".join(f"{k} {v:.4f}" for k, v in row.metrics.items()
                   if k in METRICS[task][:2])


# ------------------------------------------------------------------- Tables
def score_matrix(rows: Sequence[Row], metric: str
                 ) -> tuple[list[str], list[int], np.ndarray, float | None]:
  """(corruptions, severities, (C, S) scores with NaN where absent, clean)."""
  corrupted = [r for r in rows if r.corruption != CLEAN]
  names = list(dict.fromkeys(r.corruption for r in corrupted))
  levels = sorted({r.severity for r in corrupted})
  table = np.full((len(names), len(levels)), np.nan)
  for r in corrupted:
    table[names.index(r.corruption), levels.index(r.severity)] = r.metrics[metric]
  clean = next((r.metrics[metric] for r in rows if r.corruption == CLEAN), None)
  return names, levels, table, clean


def mce(rows: Sequence[Row], baseline_rows: Sequence[Row],
        metric: str) -> CorruptionErrors:
  """Corruption errors of `rows` relative to `baseline_rows` (module docstring).

  A corruption whose baseline error sum is 0 has no CE (NaN), and then
  neither has the mean.
  """
  def scores(rs: Sequence[Row]) -> dict[tuple[str, int], float]:
    return {(r.corruption, r.severity): r.metrics[metric] for r in rs}
  ours, theirs = scores(rows), scores(baseline_rows)
  if set(ours) != set(theirs):
    raise errors.ConfigValueError(
        "The run and the baseline were scored on different corruptions or "
        f"severities: {sorted(set(ours) ^ set(theirs))} are in one only.")
  if (CLEAN, 0) not in ours:
    raise errors.ConfigValueError("Relative CE needs both clean scores.")
  clean, base_clean = ours[(CLEAN, 0)], theirs[(CLEAN, 0)]
  names = list(dict.fromkeys(c for c, _ in ours if c != CLEAN))
  ce, relative = {}, {}
  for name in names:
    keys = [k for k in ours if k[0] == name]
    error = sum(1.0 - ours[k] for k in keys)
    base_error = sum(1.0 - theirs[k] for k in keys)
    drop = sum(clean - ours[k] for k in keys)
    base_drop = sum(base_clean - theirs[k] for k in keys)
    ce[name] = error / base_error if base_error > 0 else math.nan
    relative[name] = drop / base_drop if base_drop > 0 else math.nan
  mean = lambda d: float(np.mean(list(d.values()))) if d else math.nan
  return CorruptionErrors(metric=metric, ce=ce, relative_ce=relative,
                          mce=mean(ce), relative_mce=mean(relative))


def _fmt(value: float | None) -> str:
  return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def format_markdown(rows: Sequence[Row], metric: str,
                    corruption_errors: CorruptionErrors | None = None,
                    title: str = "") -> str:
  """The headline metric as a Markdown table (see the module docstring)."""
  names, levels, table, clean = score_matrix(rows, metric)
  header = ["corruption"] + [f"severity {s}" for s in levels] + ["mean"]
  if corruption_errors:
    header += ["CE", "relative CE"]
  lines = [f"# {title}", ""] if title else []
  lines += [f"Clean {metric}: {_fmt(clean)}", "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header)]
  with np.errstate(invalid="ignore"):
    row_means = np.nanmean(table, axis=1) if table.size else np.zeros(0)
    col_means = np.nanmean(table, axis=0) if table.size else np.zeros(0)
  for i, name in enumerate(names):
    cells = [name] + [_fmt(v) for v in table[i]] + [_fmt(row_means[i])]
    if corruption_errors:
      cells += [_fmt(corruption_errors.ce[name]),
                _fmt(corruption_errors.relative_ce[name])]
    lines.append("| " + " | ".join(cells) + " |")
  if names:
    cells = ["mean"] + [_fmt(v) for v in col_means] + [
        _fmt(float(np.nanmean(table)) if np.isfinite(table).any() else None)]
    if corruption_errors:
      cells += [f"mCE {_fmt(corruption_errors.mce)}",
                f"relative mCE {_fmt(corruption_errors.relative_mce)}"]
    lines.append("| " + " | ".join(cells) + " |")
  if corruption_errors:
    lines += ["", f"CE: sum over severities of (1 - {metric}), over the "
              "baseline's; relative CE: of the drop from the clean score "
              "(Hendrycks & Dietterich 2019)."]
  return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: str) -> str:
  """One line per row: corruption, severity, examples, then every metric."""
  keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["corruption", "severity", "examples"] + keys)
    for r in rows:
      writer.writerow([r.corruption, r.severity, r.examples]
                      + [repr(r.metrics.get(k, math.nan)) for k in keys])
  return path


def read_csv(path: str) -> list[Row]:
  """The rows `write_csv` wrote."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    return [Row(corruption=d.pop("corruption"), severity=int(d.pop("severity")),
                examples=int(d.pop("examples")),
                metrics={k: float(v) for k, v in d.items()}) for d in reader]


# ------------------------------------------------------------------ Figures
def display_channels(info: Any) -> list[int]:
  """Channels to draw as R, G, B: info.rgb_bands, else the bands nearest the
  display primaries, else the first three (or the first, in grey)."""
  names = tuple(info.rgb_bands) or bands_lib.display_bands(info.bands)
  if names:
    return bands_lib.indices(info.bands, names)
  return [0, 1, 2] if info.num_bands >= 3 else [0]


def example_images(run: Any, split: str, corruptions: Sequence[str],
                   severity: int, *, seed: int = 0, index: int = 0,
                   bands: Sequence[bands_lib.Band] | None = None,
                   cifar10c: str | None = None) -> dict[str, np.ndarray]:
  """Example `index` of `split`, clean and under each corruption, as the
  evaluation corrupts it (same seed), in raw units."""
  images = {}
  if not cifar10c or run.info.name == "cifar10":
    images[CLEAN] = np.asarray(split_source(run, split)[index]["image"], np.float32)
  bands = tuple(bands or run.info.bands)
  for name in corruptions:
    if cifar10c:
      data = cifar.cifar10_c(path=str(cifar10c), corruption=name, severity=severity)
      images[name] = np.asarray(data.split("test")[index]["image"], np.float32)
    else:
      images[name] = _corrupter(name, severity, bands, seed)(images[CLEAN], index)
  return images


# ------------------------------------------------------------------- Outputs
def write_outputs(rows: Sequence[Row], out: str, *, metric: str, run: Any,
                  split: str, source: str,
                  corruption_errors: CorruptionErrors | None = None,
                  examples: Mapping[str, np.ndarray] | None = None,
                  example_severity: int | None = None,
                  baseline: str = "") -> dict[str, str]:
  """Writes the CSV, Markdown, JSON and figures; returns their paths by kind."""
  from eo_jax.visualize import robustness as plots  # pylint: disable=g-import-not-at-top
  from eo_jax.visualize.figures import save_figure  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  name = os.path.basename(os.path.normpath(run.workdir))
  what = "CIFAR-10-C" if source == CIFAR10C else "eo_jax corruptions"
  title = f"{name} (step {run.step}): {what}, {split} split"
  paths = {"csv": write_csv(rows, os.path.join(out, "robustness.csv"))}
  paths["markdown"] = os.path.join(out, "robustness.md")
  with open(paths["markdown"], "w") as f:
    f.write(format_markdown(rows, metric, corruption_errors, title))
  summary = {"workdir": run.workdir, "step": run.step, "split": split,
             "source": source, "metric": metric, "baseline": baseline,
             "rows": [dataclasses.asdict(r) for r in rows]}
  if corruption_errors:
    summary["corruption_errors"] = dataclasses.asdict(corruption_errors)
  paths["json"] = os.path.join(out, "robustness.json")
  with open(paths["json"], "w") as f:
    json.dump(summary, f, indent=1, allow_nan=True)
  names, levels, table, clean = score_matrix(rows, metric)
  paths["heatmap"] = save_figure(plots.plot_robustness_heatmap(
      table, names, levels, metric=metric, clean=clean, title=title),
      os.path.join(out, "heatmap.png"))
  if examples:
    limits = ((0.0, 255.0) if source == CIFAR10C else None)
    figure = plots.plot_corruption_examples(
        examples, rgb=display_channels(run.info), limits=limits,
        title=f"{name}: severity {example_severity}")
    paths["examples"] = save_figure(figure, os.path.join(out, "examples.png"))
  return paths


def _restore(workdir: str, what: str) -> Any:
  import eo_jax  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise errors.ConfigValueError(f"Give {what}=<the workdir of a trained run>.")
  try:
    return eo_jax.restore_run(workdir)
  except FileNotFoundError as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.CheckpointError(
        f"{what}={workdir} has no checkpoint to restore (expected "
        f"{os.path.join(os.path.abspath(workdir), 'checkpoints')}/<step>/); "
        "give the workdir of a trained run.") from None


def find_cifar10c(run: Any, given: str) -> str | None:
  """The CIFAR-10-C folder: `given`, else for a 'cifar10' run one next to
  or inside its data; None for other runs without `given`."""
  if given:
    return str(cifar.find_cifar10_c(given, "--cifar10c"))
  if run.info.name != "cifar10":
    return None
  data_path = os.path.abspath(os.path.expanduser(str(run.config.data.get("path") or "")))
  for folder in (data_path, os.path.dirname(data_path)):
    if os.path.isfile(os.path.join(folder, "CIFAR-10-C", "labels.npy")):
      return os.path.join(folder, "CIFAR-10-C")
  raise missing_data("CIFAR-10-C (to score a run trained on 'cifar10')", "",
                     cifar.CIFAR10_C_URL, "--cifar10c", cifar.C_LAYOUT)


def robustness(workdir: str, *, split: str = "test", baseline: str = "",
               corruptions: str | Sequence[str] = "",
               severities: str | Sequence[int] = SEVERITIES,
               batch_size: int = 0, out: str = "", cifar10c: str = "",
               metric: str = "", seed: int = 0, example_severity: int = 0,
               log: Log | None = None) -> dict[str, Any]:
  """What the command line does (see the module docstring).

  Returns:
    {'rows', 'baseline_rows', 'corruption_errors', 'paths', 'metric'}.
  """
  if seed < 0:
    raise errors.ConfigValueError(f"--seed must be >= 0, got {seed}.")
  run = _restore(workdir, "--workdir")
  check_run(run)
  folder = find_cifar10c(run, cifar10c)
  if folder:
    check_cifar10c_run(run)
  metric = metric or PRIMARY_METRIC[run.info.task]
  if metric not in METRICS[run.info.task]:
    raise errors.ConfigValueError(
        f"--metric={metric!r}; a {run.info.task} run has "
        f"{list(METRICS[run.info.task])}.")
  if folder:
    names = (parse_names(corruptions, cifar.CORRUPTIONS + cifar.EXTRA_CORRUPTIONS)
             if corruptions else list(cifar.CORRUPTIONS))
    levels = parse_severities(severities, cifar.SEVERITIES)
    absent = [n for n in names if not os.path.isfile(os.path.join(folder, f"{n}.npy"))]
    if absent:
      # Before any scoring, rather than after the corruptions that are there.
      raise missing_data(f"CIFAR-10-C files {[n + '.npy' for n in absent]}",
                         folder, cifar.CIFAR10_C_URL, "--cifar10c", cifar.C_LAYOUT)
  else:
    names = parse_names(corruptions, tuple(corruptions_lib.CORRUPTIONS))
    levels = parse_severities(severities)
  base = None
  if baseline:
    base = _restore(baseline, "--baseline")
    check_run(base, "--baseline")
    check_comparable(run, base, split)
  kwargs = dict(split=split, corruptions=names, severities=levels,
                batch_size=batch_size, seed=seed, bands=run.info.bands,
                cifar10c=folder, log=log)
  rows = evaluate_corruptions(run, **kwargs)
  base_rows, result = None, None
  if base is not None:
    if log:
      log(f"baseline {base.workdir}")
    base_rows = evaluate_corruptions(base, **kwargs)
    result = mce(rows, base_rows, metric)
  severity = example_severity or levels[len(levels) // 2]
  if severity:
    corruptions_lib.check_severity(severity)
  examples = example_images(run, split, names, severity, seed=seed,
                            cifar10c=folder) if severity else None
  paths = write_outputs(
      rows, out or os.path.join(run.workdir, "robustness"), metric=metric,
      run=run, split=split, source=CIFAR10C if folder else EO,
      corruption_errors=result, examples=examples, example_severity=severity,
      baseline=base.workdir if base is not None else "")
  return {"rows": rows, "baseline_rows": base_rows, "corruption_errors": result,
          "paths": paths, "metric": metric}


# -------------------------------------------------------------- Command line
def _flag_values() -> Any:
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  define = dict(flag_values=fv)
  flags.DEFINE_string("workdir", None, "The trained run to score.", **define)
  flags.DEFINE_string("split", "test", "The split to corrupt.", **define)
  flags.DEFINE_string("baseline", "", "A run on the same data: CE and mCE "
                      "against it.", **define)
  flags.DEFINE_string("corruptions", "", "Comma-separated names (default: "
                      f"all: {', '.join(corruptions_lib.CORRUPTIONS)}; or "
                      "CIFAR-10-C's 15).", **define)
  flags.DEFINE_string("severities", "1,2,3,4,5", "Comma-separated severities "
                      "(1-5; 0 is the clean image).", **define)
  flags.DEFINE_integer("batch_size", 0, "Prediction batch (default: the run's "
                       "eval batch size).", **define)
  flags.DEFINE_string("out", "", "Output folder (default <workdir>/robustness).",
                      **define)
  flags.DEFINE_string("cifar10c", "", "A CIFAR-10-C folder: read its images "
                      "instead of corrupting.", **define)
  flags.DEFINE_string("metric", "", "The headline metric (default macro_f1 "
                      "or miou).", **define)
  flags.DEFINE_integer("seed", 0, "Base seed of the corruptions.", **define)
  flags.DEFINE_integer("example_severity", 0, "Severity of examples.png "
                       "(default: the middle one).", **define)
  flags.DEFINE_bool("verbose", False, "Tracebacks for every error.", **define)
  flags.mark_flag_as_required("workdir", flag_values=fv)
  return fv


def main(argv: Sequence[str]) -> int:
  """Runs the command line `argv` (argv[0] is the program); returns the exit
  status: 0, 1 for a user error, 2 for bad flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = _flag_values()
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(__doc__)
    for name in sorted(fv):
      flag = fv[name]
      print(f"  --{name}: {flag.help} (default: {flag.default!r})")
    return 0
  try:
    extra = fv(list(argv))[1:]
    if extra:
      raise flags.Error(f"unexpected arguments {extra}")
  except flags.Error as e:
    print(f"error: {e}\nSee python -m eo_jax.robustness --help.", file=sys.stderr)
    return 2
  if not flags.FLAGS.is_parsed():
    # Grain's worker processes read absl flags.
    flags.FLAGS.mark_as_parsed()
  log = lambda message: print(message, flush=True)
  try:
    result = robustness(
        fv.workdir, split=fv.split, baseline=fv.baseline,
        corruptions=fv.corruptions, severities=fv.severities,
        batch_size=fv.batch_size, out=fv.out, cifar10c=fv.cifar10c,
        metric=fv.metric, seed=fv.seed, example_severity=fv.example_severity,
        log=log)
  except errors.UserError as e:
    if fv.verbose:
      raise
    print(f"error: {errors.message(e)}", file=sys.stderr)
    return 1
  with open(result["paths"]["markdown"]) as f:
    print(f.read())
  for kind, path in result["paths"].items():
    print(f"  {kind:9s} {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
