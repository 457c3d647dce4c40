"""A config's jitted train step, built as the trainer builds it and timed alone.

Used by benchmarks/accelerator.py and benchmarks/input_pipeline.py: the
step's consumption (images per second with the input pipeline out of the
way: the same global batch fed again and again), its model FLOPs from XLA's
cost analysis, MFU where the device's peak is known, and the device's peak
memory where the backend reports it.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import ml_collections

from eo_jax import sharding
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.train import throughput, trainer
from eo_jax.train.state import create_train_state
from eo_jax.train.steps import make_train_step


@dataclasses.dataclass
class StepTiming:
  """What one timed config measured (None: not available on this backend)."""
  global_batch: int
  ms_per_step: float
  images_per_second: float
  tflops_per_second: float | None
  mfu: float | None
  peak_memory_gib: float | None
  compile_s: float


def peak_memory_gib(device: Any = None) -> float | None:
  """Peak bytes in use on `device` (default: the first) in GiB, if reported."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None  # backends without memory statistics (CPU)
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


def build_step(config: ml_collections.ConfigDict):
  """(jitted step, train state, one global batch) for `config`."""
  dataset = build_dataset(config.data)
  mesh = sharding.make_mesh()
  steps_per_epoch, total_steps = pipeline.run_length(dataset, config)
  objective = trainer.build_objective(config, dataset.info,
                                      (steps_per_epoch, total_steps))
  loader = pipeline.train_loader(dataset, config.input, seed=config.seed,
                                 image_size=config.input.image_size or None,
                                 views_fn=objective.train_views())
  batch = sharding.to_global(next(iter(loader)), mesh)
  state, tx, schedule = create_train_state(
      config, objective, dataset.info, batch, mesh,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  step = make_train_step(objective, tx, schedule, config.seed, mesh)
  return step, state, batch


def time_config(config: ml_collections.ConfigDict, steps: int = 5) -> StepTiming:
  """Compiles `config`'s train step, runs it once, then times `steps` steps.

  The figure is the median step time (each step waited for); FLOPs come
  from the compiled program's cost analysis, as the trainer logs them.
  """
  step, state, batch = build_step(config)
  flops = throughput.step_flops(step, state, batch)
  start = time.perf_counter()
  state, (metrics, _) = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, (metrics, _) = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  seconds = statistics.median(times)
  global_batch = int(config.input.batch_size)
  peak = throughput.device_peak_flops(jax.devices()[0].device_kind,
                                      throughput.compute_dtype(config))
  rates = throughput.rates(1.0 / seconds, global_batch, flops, peak,
                           jax.device_count())
  return StepTiming(
      global_batch=global_batch, ms_per_step=1e3 * seconds,
      images_per_second=rates["train/images_per_second"],
      tflops_per_second=rates.get("train/tflops_per_second"),
      mfu=rates.get("train/mfu"), peak_memory_gib=peak_memory_gib(),
      compile_s=compile_s)
