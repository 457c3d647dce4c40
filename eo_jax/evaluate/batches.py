"""Evaluation batches of a fixed shape, with a mask of the real examples.

A jitted step compiles once per shape, and every process of a multi-host run
must run the same number of steps, so eval batches are padded to the full
local batch and the step count comes from the largest per-process shard.
"""
from __future__ import annotations

import math
from typing import Iterator

import jax
import numpy as np

from eo_jax.data import pipeline
from eo_jax.data.datasets.base import Dataset


def padded_eval_batches(dataset: Dataset, split: str, input_config, local_batch: int,
                        image_size: int | None = None
                        ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
  """Yields (batch padded to `local_batch`, valid mask) for this process."""
  n = len(dataset.split(split))
  per_process = math.ceil(n / jax.process_count())
  num_batches = math.ceil(per_process / local_batch)
  loader = iter(pipeline.eval_loader(
      dataset, split, input_config, process_index=jax.process_index(),
      process_count=jax.process_count(), batch_size=local_batch,
      image_size=image_size))
  template = None
  for _ in range(num_batches):
    local = next(loader, None)
    if local is None:
      local = {k: np.zeros_like(v[:0]) for k, v in template.items()}
    template = local
    size = len(next(iter(local.values())))
    valid = np.arange(local_batch) < size
    if size < local_batch:
      local = {k: np.concatenate([v, np.zeros((local_batch - size,) + v.shape[1:], v.dtype)])
               for k, v in local.items()}
    yield local, valid
