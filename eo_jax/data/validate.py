"""Reads every example of a dataset once, before training, and checks it.

A corrupt file in the test split would otherwise surface at the final
evaluation, after the whole run. `validate_dataset(dataset)` reads every
example of every split through its source (so exactly what the pipeline
will read: decoding, band selection, scaling), in a thread pool (file I/O
and decoding release the GIL, though for small files most of the time goes
to the decoders' Python code: about 5 s for 27,000 EuroSAT JPEGs on 2
cores), and checks each one against `dataset.info`:

  * the source can read it (a decoding error names the file);
  * 'image' is (H, W, C) numeric with C == info.num_bands;
  * its values are finite (NaN and infinities are counted per band);
  * classification: 'label' is an integer in [0, num_classes);
  * segmentation: 'mask' is (H, W) like the image, with values in
    [0, num_classes) or info.ignore_index (the message names the offending
    values and their pixel count); and every split has at least one
    labelled pixel (a split of ignored pixels gives no loss and no score).

All problems are gathered and raised as ONE `DataError` naming, per split,
the first few examples, their files (`describe(index)` of the source) and
the fix. A dataset built by `build_dataset` carries its config's key; a
split validated once with that key is not read again in this process.
`build_dataset(config.data, validate=True)` validates before it computes the
band statistics (which would otherwise stop at the first bad train file).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import numpy as np

from eo_jax.data.datasets.base import (CLASSIFICATION, SEGMENTATION,
                                       DataError, Dataset, DatasetInfo,
                                       describe_example)

# (dataset.config_key, split) of the splits found clean in this process.
_VALIDATED: set[tuple[str, str]] = set()
_VALIDATED_LOCK = threading.Lock()
# Problems kept per split for the message (all are counted).
_KEEP = 1000
# Below this many estimated seconds of reading, one thread beats a pool.
_SERIAL_BELOW_S = 0.5
# A pool must read this many times faster than one thread to be kept.
_POOL_GAIN = 1.2


@dataclasses.dataclass(frozen=True)
class Problem:
  """What is wrong with one example, and how to fix it."""
  split: str
  index: int
  where: str      # the source's describe(index), or 'example <index>'
  what: str
  fix: str = ""

  def __str__(self) -> str:
    where = "" if self.where == f"example {self.index}" else f" ({self.where})"
    fix = f" Fix: {self.fix}" if self.fix else ""
    return f"{self.split!r} example {self.index}{where}: {self.what}.{fix}"


@dataclasses.dataclass(frozen=True)
class ValidationReport:
  """The outcome of a clean validation.

  Attributes:
    dataset: the dataset's name.
    counts: examples per validated split (read now or earlier).
    cached: the splits not read again (found clean before in this process).
    seconds: wall time of this call.
    threads: the threads that read most examples (1 where a pool was not
      faster).
  """
  dataset: str
  counts: dict[str, int]
  cached: tuple[str, ...]
  seconds: float
  threads: int = 1

  def __str__(self) -> str:
    parts = ", ".join(f"{k} {v:,}" + (" (cached)" if k in self.cached else "")
                      for k, v in self.counts.items())
    threads = f", {self.threads} threads" if self.threads > 1 else ""
    return (f"Checked {sum(self.counts.values()):,} examples of "
            f"{self.dataset!r} ({parts}) in {self.seconds:.1f} s{threads}.")


def clear_validation_cache() -> None:
  """Forgets which datasets were validated in this process."""
  with _VALIDATED_LOCK:
    _VALIDATED.clear()


class _Checker:
  """Checks one example against the dataset's description."""

  def __init__(self, info: DatasetInfo):
    self.info = info
    self.names = tuple(b.name for b in info.bands)

  def _bands(self, per_band: np.ndarray) -> str:
    hit = [n for n, c in zip(self.names, per_band) if c]
    return ", ".join(hit[:8]) + (f" and {len(hit) - 8} more" if len(hit) > 8
                                 else "")

  def __call__(self, example: Any) -> tuple[str, str] | None:
    """None when `example` is fine, else (what is wrong, the fix)."""
    name = self.info.name
    if not isinstance(example, Mapping) or "image" not in example:
      keys = sorted(example) if isinstance(example, Mapping) else type(example)
      return (f"the source returned no 'image' (got {keys})",
              f"the {name!r} reader does not follow the dataset contract "
              "(eo_jax/data/datasets/base.py)")
    image = np.asarray(example["image"])
    n = self.info.num_bands
    if image.ndim != 3:
      return (f"the image has shape {image.shape}, expected (H, W, {n})",
              "the file is corrupt or not an image of this dataset; "
              "re-download it or remove it")
    if image.shape[-1] != n:
      return (f"the image has {image.shape[-1]} band(s), the dataset has {n} "
              f"({', '.join(self.names[:6])}{', ...' if n > 6 else ''})",
              "the file is not an image of this dataset (another product or "
              "variant): re-download it or remove it; if every file has this "
              "band count, check config.data.variant and config.data.bands")
    if image.dtype.kind not in "biuf":
      return (f"the image has dtype {image.dtype}, not a number type",
              "the file is not an image of this dataset; remove it")
    if not image.size:
      return (f"the image is empty (shape {image.shape})",
              "the file is corrupt; re-download it or remove it")
    # min and max propagate NaN and hold any infinity: two fast reductions
    # instead of a boolean array the size of the image.
    if image.dtype.kind == "f" and not (math.isfinite(image.min())
                                        and math.isfinite(image.max())):
      flat = image.reshape(-1, image.shape[-1])
      nan, inf = np.isnan(flat).sum(0), np.isinf(flat).sum(0)
      counts = " and ".join(f"{int(c.sum()):,} {kind}" for c, kind in
                            ((nan, "NaN"), (inf, "infinite")) if c.sum())
      return (f"the image has {counts} value(s), in band(s) "
              f"{self._bands(nan + inf)}",
              "replace or remove the file; if a band has no data, leave it "
              "out with config.data.bands")
    task, k = self.info.task, self.info.num_classes
    if task == CLASSIFICATION:
      return self._label(example, k)
    if task == SEGMENTATION:
      return self._mask(example, image.shape[:2], k)
    return None

  def _label(self, example: Mapping, k: int) -> tuple[str, str] | None:
    if "label" not in example:
      return ("a classification example without 'label'",
              f"the {self.info.name!r} reader does not follow the dataset "
              "contract")
    label = np.asarray(example["label"])
    if label.ndim != 0 or label.dtype.kind not in "biu":
      return (f"the label {label!r} is not one integer",
              "the label files are corrupt; re-download the dataset")
    if k and not 0 <= int(label) < k:
      return (f"the label {int(label)} is outside 0..{k - 1} ({k} classes)",
              "the labels do not match the dataset's class list; "
              "re-download the dataset or fix its label files")
    return None

  def _mask(self, example: Mapping, size: tuple[int, int], k: int
            ) -> tuple[str, str] | None:
    if "mask" not in example:
      return ("a segmentation example without 'mask'",
              f"the {self.info.name!r} reader does not follow the dataset "
              "contract")
    mask = np.asarray(example["mask"])
    if mask.shape != tuple(size):
      return (f"the mask has shape {mask.shape}, the image {tuple(size)}",
              "the label file does not belong to its image; re-download the "
              "pair or remove it")
    if mask.dtype.kind not in "biu":
      return (f"the mask has dtype {mask.dtype}, not integers",
              "the label file is corrupt; re-download it")
    if not k or not mask.size:
      return None
    low, high = int(mask.min()), int(mask.max())
    if low >= 0 and high < k:
      return None
    bad = (mask < 0) | (mask >= k)
    if self.info.ignore_index is not None:
      bad &= mask != self.info.ignore_index
    if not bad.any():
      return None
    values = np.unique(mask[bad])
    ignore = ("" if self.info.ignore_index is None else
              f" or {self.info.ignore_index} (ignored)")
    return (f"{int(bad.sum()):,} mask pixel(s) have values "
            f"{values[:8].tolist()}, outside 0..{k - 1}{ignore}",
            "the label file does not belong to this dataset or is corrupt; "
            "re-download it or remove the pair")


@dataclasses.dataclass(frozen=True)
class _Chunk:
  """What checking examples [start, stop) of one split found."""
  split: str
  problems: list[Problem]
  labelled: int  # segmentation: mask pixels holding a class


def _labelled_pixels(example: Mapping, info: DatasetInfo) -> int:
  mask = np.asarray(example["mask"])
  return int(np.count_nonzero((mask >= 0) & (mask < info.num_classes)))


def _check_range(split: str, source: Any, start: int, stop: int,
                 checker: _Checker) -> _Chunk:
  """Reads and checks examples [start, stop) of one split."""
  problems = []
  labelled = 0
  dense = checker.info.task == SEGMENTATION
  for index in range(start, stop):
    try:
      example = source[index]
    except Exception as e:  # pylint: disable=broad-except; decoders raise many types
      where = describe_example(source, index)
      # A file reader's own ValueError already names the file and the cause
      # (LabelledImageFiles.read_image); anything else needs its type.
      message = (str(e) if isinstance(e, ValueError) and where in str(e)
                 else f"{type(e).__name__}: {e}")
      problems.append(Problem(
          split, index, where, f"cannot be read: {message.rstrip('.')}",
          "re-download the dataset, or remove the file"))
      continue
    try:
      found = checker(example)
    except Exception as e:  # pylint: disable=broad-except; a check must not crash
      found = (f"checking it failed: {type(e).__name__}: {e}", "")
    if found is not None:
      problems.append(Problem(split, index, describe_example(source, index),
                              *found))
    elif dense:
      labelled += _labelled_pixels(example, checker.info)
  return _Chunk(split, problems, labelled)


def _message(name: str, counts: Mapping[str, int],
             problems: Mapping[str, list[Problem]], bad: Mapping[str, int],
             max_problems: int, unlabelled: Sequence[str] = (),
             ignore_index: int | None = None) -> str:
  total = sum(bad.values())
  if total:
    lines = [f"Dataset {name!r} has {total:,} unusable example(s) (found "
             "before training, so that no run stops halfway):"]
  else:
    lines = [f"Dataset {name!r} cannot be used as it is (found before "
             "training, so that no run stops halfway):"]
  for split, found in problems.items():
    if not found:
      continue
    lines.append(f"  split {split!r}: {bad[split]:,} of {counts[split]:,} "
                 "examples")
    for problem in found[:max_problems]:
      lines.append(f"    {problem}")
    if bad[split] > max_problems:
      lines.append(f"    ... and {bad[split] - max_problems:,} more in "
                   f"{split!r}.")
  ignored = "" if ignore_index is None else f" (all {ignore_index}, ignored)"
  for split in unlabelled:
    lines.append(
        f"  split {split!r}: no labelled pixel in its {counts[split]:,} "
        f"example(s){ignored}, so it gives no loss and no score. Fix: check "
        "that its label files hold classes, or change the split "
        "(config.data.split_fractions, split_seed, block_size, patch_size).")
  return "\n".join(lines)


def _default_threads() -> int:
  # More threads than cores only add GIL contention: the decoders of small
  # files spend most of their time in Python (PIL's and tifffile's header
  # parsing), measured slower with 8 threads than with 2 on 2 cores.
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cpus = os.cpu_count() or 1
  return max(1, min(8, cpus))


def _run(tasks: list[tuple[str, int, int]], dataset: Dataset,
         checker: _Checker, threads: int,
         collect: Callable[[_Chunk], None]) -> int:
  """Checks the chunks `tasks`; returns the threads it settled on.

  A pool of threads is used only where it measures faster than one thread:
  in-memory data costs microseconds an example, and decoders that parse
  small files in Python (tifffile: 8.0 s alone against 10.6 s with 2
  threads for 27,000 EuroSAT TIFFs on 2 cores) only fight over the GIL;
  reading that waits on storage gains from threads.
  """
  def size(batch: list[tuple[str, int, int]]) -> int:
    return sum(b - a for _, a, b in batch)

  def serial(batch: list[tuple[str, int, int]]) -> float:
    start = time.perf_counter()
    for split, a, b in batch:
      collect(_check_range(split, dataset.splits[split], a, b, checker))
    return time.perf_counter() - start

  def pooled(pool: concurrent.futures.Executor,
             batch: list[tuple[str, int, int]]) -> float:
    start = time.perf_counter()
    futures = [pool.submit(_check_range, split, dataset.splits[split], a, b,
                           checker) for split, a, b in batch]
    for future in concurrent.futures.as_completed(futures):
      collect(future.result())
    return time.perf_counter() - start

  serial(tasks[:1])  # warm-up: first reads fill caches, import decoders
  timed, rest = tasks[1:2], tasks[2:]
  per_example = serial(timed) / max(1, size(timed))
  trial, rest_after = rest[:2 * threads], rest[2 * threads:]
  if (threads == 1 or not rest_after
      or per_example * size(rest) < _SERIAL_BELOW_S):
    serial(rest)
    return 1
  with concurrent.futures.ThreadPoolExecutor(
      threads, thread_name_prefix="validate") as pool:
    if pooled(pool, trial) / size(trial) * _POOL_GAIN < per_example:
      pooled(pool, rest_after)
      return threads
  serial(rest_after)
  return 1


def validate_dataset(dataset: Dataset, splits: Sequence[str] | None = None,
                     num_threads: int | None = None, *, max_problems: int = 5,
                     use_cache: bool = True) -> ValidationReport:
  """Reads and checks every example of `splits` (default: all of them).

  Args:
    dataset: what `build_dataset` (or a factory) returned.
    splits: names of the splits to check; None for every split.
    num_threads: at most this many threads read examples (1: this thread
      only); None: one per available CPU, at most 8. A pool is used only
      where a trial measures it faster than one thread (slow storage, or
      decoders that release the GIL); pass more threads for storage with
      a high latency (network file systems).
    max_problems: problems named per split in the error (all are counted).
    use_cache: skip splits found clean before in this process, for a
      dataset built by `build_dataset` from the same config.

  Returns:
    A `ValidationReport` with the examples checked per split.

  Raises:
    DataError: one error for all problems found, naming for each split the
      first `max_problems` examples, their files, what is wrong and the fix.
    KeyError: a name in `splits` is not a split of the dataset.
  """
  start_time = time.perf_counter()
  names = list(dataset.splits) if splits is None else list(splits)
  unknown = [s for s in names if s not in dataset.splits]
  if unknown:
    raise KeyError(f"Dataset {dataset.info.name!r} has no split(s) {unknown}; "
                   f"it has {sorted(dataset.splits)}.")
  key = dataset.config_key if use_cache else None
  with _VALIDATED_LOCK:
    cached = tuple(s for s in names
                   if key is not None and (key, s) in _VALIDATED)
  counts = {s: len(dataset.splits[s]) for s in names}
  todo = [s for s in names if s not in cached]
  checker = _Checker(dataset.info)
  # Chunks of consecutive indices: few futures, and consecutive examples
  # often share a file (patch datasets), which the sources' caches reuse.
  threads = max(1, int(num_threads or _default_threads()))
  tasks = []
  for split in todo:
    n = counts[split]
    chunk = max(1, min(512, math.ceil(n / (4 * threads))))
    tasks += [(split, a, min(a + chunk, n)) for a in range(0, n, chunk)]
  problems: dict[str, list[Problem]] = {s: [] for s in todo}
  bad = {s: 0 for s in todo}
  labelled = {s: 0 for s in todo}

  def collect(chunk: _Chunk) -> None:
    labelled[chunk.split] += chunk.labelled
    for problem in chunk.problems:
      bad[problem.split] += 1
      kept = problems[problem.split]
      kept.append(problem)
      if len(kept) > 2 * _KEEP:
        # Chunks finish in any order: keep the lowest indices, bounded.
        kept.sort(key=lambda p: p.index)
        del kept[_KEEP:]

  used = _run(tasks, dataset, checker, threads, collect)
  # A split whose masks are all ignored (judged only when every example
  # could be read: a bad file may hold the labels).
  unlabelled = [s for s in todo if dataset.info.task == SEGMENTATION
                and not bad[s] and labelled[s] == 0]
  if any(bad.values()) or unlabelled:
    for found in problems.values():
      found.sort(key=lambda p: p.index)
    raise DataError(_message(dataset.info.name, counts, problems, bad,
                             max(1, max_problems), unlabelled,
                             dataset.info.ignore_index))
  if key is not None:
    with _VALIDATED_LOCK:
      _VALIDATED.update((key, s) for s in todo)
  report = ValidationReport(dataset=dataset.info.name, counts=counts,
                            cached=cached,
                            seconds=time.perf_counter() - start_time,
                            threads=used)
  if todo:
    logging.info("%s", report)
  return report
