"""Runs per-example functions over whole splits: padding, sharding, host transfer.

A jitted function compiles once per shape, and every process of a
multi-host run must run the same number of steps, so evaluation batches are
padded to the full local batch, the number of batches comes from the
largest per-process shard, and a mask of the real examples travels with
each batch. `EvalRunner.outputs` hides all of that: it yields, on every
host, the outputs of the real examples only, in split order within each
process's shard.

The runner also caches the jitted functions (one compilation per function
and shape) and, within one evaluation round, the features that probes
share (a kNN and a linear probe of the same data need them once).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from eo_jax import sharding
from eo_jax.data import pipeline
from eo_jax.data.datasets.base import Dataset

Batch = dict[str, np.ndarray]
OutputFn = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


def padded_eval_batches(dataset: Dataset, split: str, input_config: Any,
                        local_batch: int, image_size: int | None = None
                        ) -> Iterator[tuple[Batch, np.ndarray]]:
  """Yields (this process's batch padded to `local_batch`, valid mask)."""
  n = len(dataset.split(split))
  per_process = math.ceil(n / jax.process_count())
  num_batches = math.ceil(per_process / local_batch)
  loader = pipeline.eval_loader(
      dataset, split, input_config, process_index=jax.process_index(),
      process_count=jax.process_count(), batch_size=local_batch,
      image_size=image_size)
  for local in loader:
    size = len(next(iter(local.values())))
    valid = np.arange(local_batch) < size
    if size < local_batch:
      local = {k: np.concatenate([v, np.zeros((local_batch - size,) + v.shape[1:],
                                              v.dtype)])
               for k, v in local.items()}
    yield local, valid
    num_batches -= 1
  if num_batches:
    raise RuntimeError(f"The eval loader of {split!r} ended {num_batches} batches "
                       "early; every process must run the same number of steps.")


class EvalRunner:
  """Evaluation passes on `mesh` (see the module docstring).

  Args:
    mesh: the device mesh; batches are sharded over its data axis.
    input_config: `config.input` (eval batch size, prefetch, image size).
    mode: `config.sharding`, the train state's layout ('replicated' or
      'fsdp'), which the evaluated state keeps.
  """

  def __init__(self, mesh: Mesh, input_config: Any,
               mode: str = sharding.REPLICATED):
    self.mesh = mesh
    self.input_config = input_config
    self.mode = sharding.check_mode(mode)
    self._jitted: dict[Any, tuple[Callable, Callable]] = {}
    self._features: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    self._features_step: int | None = None

  def global_batch_size(self, batch_size: int = 0) -> int:
    """`batch_size`, or the config's eval batch (batch_size when 0)."""
    return int(batch_size or self.input_config.eval_batch_size
               or self.input_config.batch_size)

  def jit(self, fn: OutputFn, state: Any = None) -> Callable:
    """`fn(state, batch)` jitted with a sharded batch and the state laid out
    as `mode` lays out `state` (replicated when `state` is None)."""
    state_shardings = (sharding.replicated(self.mesh) if state is None else
                       sharding.state_shardings(state, self.mesh, self.mode))
    leaves, treedef = jax.tree.flatten(state_shardings)
    key = (id(fn), treedef, tuple(leaves))
    if key not in self._jitted:
      # The function itself is kept so its id cannot be reused.
      self._jitted[key] = (fn, jax.jit(
          fn, in_shardings=(state_shardings, sharding.batch_sharded(self.mesh)),
          out_shardings=sharding.batch_sharded(self.mesh)))
    return self._jitted[key][1]

  def batches(self, dataset: Dataset, split: str, *, batch_size: int = 0,
              image_size: int | None = None
              ) -> Iterator[tuple[dict[str, jax.Array], jax.Array, Batch]]:
    """(global padded batch, its valid mask, this process's real examples)."""
    local_batch = sharding.local_batch_size(self.global_batch_size(batch_size))
    size = image_size or self.input_config.get("image_size", 0) or None
    for local, valid in padded_eval_batches(dataset, split, self.input_config,
                                            local_batch, size):
      batch = sharding.to_global(local, self.mesh)
      real = {k: v[valid] for k, v in local.items()}
      yield batch, sharding.to_global({"v": valid}, self.mesh)["v"], real

  def outputs(self, fn: OutputFn, state: Any, dataset: Dataset, split: str, *,
              batch_size: int = 0, image_size: int | None = None,
              keep: tuple[str, ...] = ()
              ) -> Iterator[tuple[dict[str, np.ndarray], Batch]]:
    """`fn`'s outputs of the real examples of `split`, batch by batch, on host.

    Yields (outputs, local batch): outputs hold every array `fn` returns plus
    the batch entries named in `keep` (e.g. 'label'), padding removed; the
    local batch is this process's unpadded input, for pictures.
    """
    step = self.jit(fn, state)
    for batch, valid, local in self.batches(dataset, split, batch_size=batch_size,
                                            image_size=image_size):
      out = dict(step(state, batch))
      out.update({k: batch[k] for k in keep})
      out, valid = sharding.to_host((out, valid))
      valid = np.asarray(valid)
      yield {k: np.asarray(v)[valid] for k, v in out.items()}, local

  def features(self, fn: OutputFn, state: Any, dataset: Dataset, split: str, *,
               step: int, batch_size: int = 0, image_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every example of `split`, shared within `step`.

    `fn(state, batch)` must return {'features': (B, D)}; the cache holds one
    evaluation round (one step), so probes of the same data reuse it.
    """
    if self._features_step != step:
      self._features, self._features_step = {}, step
    key = (id(fn), id(dataset), split, batch_size, image_size)
    if key not in self._features:
      feats, labels = [], []
      for out, _ in self.outputs(fn, state, dataset, split, batch_size=batch_size,
                                 image_size=image_size, keep=("label",)):
        feats.append(np.asarray(out["features"], np.float32))
        labels.append(out["label"])
      self._features[key] = (np.concatenate(feats), np.concatenate(labels))
    return self._features[key]


def save_figures(figures: Mapping[str, Any], workdir: str) -> list[str]:
  """Writes matplotlib figures as PNGs under `workdir`; returns the paths.

  Keys are paths relative to the workdir ('attention.png',
  'heatmaps/val_step_000010/ex0_true_forest.png').
  """
  from eo_jax.visualize.figures import save_figure  # pylint: disable=g-import-not-at-top
  return [save_figure(fig, os.path.join(workdir, name))
          for name, fig in figures.items()]
