"""Scalar schedules of the training step (momentum, temperature, decay).

The learning rate has its own builder in `train/optim.py`; these are the small
step -> value curves that self-distillation needs besides it: the teacher's
EMA momentum (cosine 0.992 -> 1), the teacher temperature (linear warmup
0.04 -> 0.07, then constant) and the weight decay (cosine 0.04 -> 0.4).
Each returns a function of a (traced or concrete) step that works under
`jax.jit` and gives float32 values, with DINOv2's conventions: the step is
the 0-based index of the update, and a curve reaches its end value at
`total_steps` and stays there. (`data.pipeline.run_length` gives a run's
steps per epoch and total steps, for schedules that count epochs.)
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Schedule = Callable[[Any], jax.Array]


def cosine(start: float, end: float, total_steps: float) -> Schedule:
  """Half a cosine from `start` (step 0) to `end` (step >= total_steps).

  value(t) = end + (start - end) * (1 + cos(pi * t / T)) / 2, as DINOv2's
  CosineScheduler without warmup. `total_steps <= 0` gives `end` at once.
  """
  start, end, total = float(start), float(end), float(total_steps)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    if total <= 0:
      return jnp.full(step.shape, end, jnp.float32)
    t = jnp.clip(step / total, 0.0, 1.0)
    return (end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))).astype(
        jnp.float32)

  return schedule


def linear_warmup(start: float, end: float, warmup_steps: float) -> Schedule:
  """Linear from `start` at step 0 to `end` at `warmup_steps`, then `end`.

  DINOv2's teacher temperature: `np.linspace(start, end, W)` for the first
  W updates, then constant. (Here step W - 1 is a hair below `end`, as the
  value at step W is exactly `end`; the difference is 1/W of the range.)
  """
  start, end, warmup = float(start), float(end), float(warmup_steps)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    if warmup <= 0:
      return jnp.full(step.shape, end, jnp.float32)
    t = jnp.clip(step / warmup, 0.0, 1.0)
    return (start + (end - start) * t).astype(jnp.float32)

  return schedule

