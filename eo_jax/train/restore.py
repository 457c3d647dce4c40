"""Picking a run up from Python: `restore_run(workdir)` -> `Run`.

`build_run(config)` gives the same object for a run that has not trained
(its step-0 state, `init_from` applied), e.g. to evaluate a random
initialisation with the code that evaluates a trained one.

A notebook or script gets everything a finished or interrupted run left in
its workdir, rebuilt the way the trainer built it: the config, the dataset
(normalised with the band statistics stored in the checkpoint, not
recomputed), the objective, the restored train state and the mesh. `Run`
then predicts, embeds and evaluates with the same code the trainer uses,
so `run.evaluate('test')` gives the numbers the trainer wrote.

  run = eo_jax.restore_run("runs/quickstart")
  batch = next(run.batches("test"))
  logits = run.predict(batch["image"])
  print(run.evaluate("test")["accuracy"])
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from eo_jax import sharding
from eo_jax.data import pipeline
from eo_jax.data import transforms
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import Dataset, DatasetInfo
from eo_jax.evaluate import EvalContext
from eo_jax.evaluate.common import build_evaluator
from eo_jax.objectives.base import Objective, TrainState
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer
from eo_jax.train.state import create_train_state


@dataclasses.dataclass
class Run:
  """A restored run (see the module docstring).

  Attributes:
    workdir: the run's folder.
    config: its config, as it was saved with the checkpoint.
    info: the training data's description, band statistics included.
    dataset: the training dataset, normalised with those statistics.
    objective: the objective, built as the trainer built it.
    state: the restored train state, laid out over `mesh` as the run's
      `config.sharding` says (replicated, or large arrays split for 'fsdp').
    mesh: the device mesh of this process.
    step: the step of the restored state.
  """
  workdir: str
  config: ml_collections.ConfigDict
  info: DatasetInfo
  dataset: Dataset
  objective: Objective
  state: TrainState
  mesh: Mesh
  step: int
  _context: EvalContext = dataclasses.field(repr=False, default=None)
  _jitted: dict = dataclasses.field(repr=False, default_factory=dict)

  @property
  def splits(self) -> list[str]:
    """The dataset's split names."""
    return sorted(self.dataset.splits)

  def batches(self, split: str, batch_size: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Normalised evaluation batches of `split`, in order (the last may be short)."""
    for _, _, local in self._context.runner.batches(self.dataset, split,
                                                    batch_size=batch_size):
      yield local

  def normalize(self, raw: np.ndarray) -> np.ndarray:
    """Raw (..., C) images in the dataset's units -> the model's input."""
    mean, std = transforms.band_mean_std(self.info.bands)
    return (np.asarray(raw, np.float32) - mean) / std

  def _call(self, name: str, images: np.ndarray) -> np.ndarray:
    if name not in self._jitted:
      self._jitted[name] = jax.jit(getattr(self.objective, name))
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != self.info.num_bands:
      raise ValueError(f"Expected normalised images (B, H, W, {self.info.num_bands}) "
                       f"for bands {[b.name for b in self.info.bands]}; got shape "
                       f"{images.shape}. Raw images go through Run.normalize first.")
    return np.asarray(jax.device_get(self._jitted[name](self.state, images)))

  def predict(self, images: np.ndarray) -> np.ndarray:
    """The objective's prediction for normalised images: class logits (B, K),
    label-map logits (B, H, W, K) or reconstructions, by objective."""
    return self._call("predict", images)

  def embed(self, images: np.ndarray) -> np.ndarray:
    """(B, D) features of normalised images (what the probes see)."""
    return self._call("embed", images)

  def evaluate(self, name: str = "test", **settings: Any) -> dict[str, Any]:
    """Evaluates the restored state as the trainer did.

    Args:
      name: an entry of `config.evals` (e.g. 'val', 'test', 'knn'), or a split
        name, evaluated with the objective's own evaluator.
      **settings: evaluator settings for a split name (e.g. batch_size).

    Returns:
      The evaluator's metrics (scalars and arrays such as the confusion matrix).
    """
    evals = dict(self.config.evals)
    entry = evals[name] if name in evals and not settings else {
        "split": name, **settings}
    evaluator = build_evaluator(name, entry, self._context)
    evaluator.visualize = False  # numbers only; the pictures are the trainer's
    return evaluator.run(self.state, self.step).metrics


def build_run(config: ml_collections.ConfigDict, *, workdir: str = "",
              info: DatasetInfo | None = None) -> Run:
  """A `Run` holding `config`'s step-0 state (what the trainer starts from).

  Args:
    config: the experiment config.
    workdir: recorded in the Run (nothing is read from or written to it).
    info: the data description with band statistics to normalise with (a
      checkpoint's); None computes them from the training split.
  """
  dataset = (build_dataset(config.data) if info is None
             else _dataset_with_saved_stats(config.data, info))
  info = dataset.info
  mesh = sharding.make_mesh()
  length = pipeline.run_length(dataset, config)
  objective = trainer.build_objective(config, info, length)
  context = trainer.evaluation_context(config, objective, dataset, mesh)
  example = sharding.to_global(next(iter(_example_batches(objective, dataset,
                                                          config))), mesh)
  state, _, _ = create_train_state(config, objective, info, example, mesh,
                                   steps_per_epoch=length[0],
                                   total_steps=length[1])
  return Run(workdir=workdir, config=config, info=info, dataset=dataset,
             objective=objective, state=state, mesh=mesh, step=0,
             _context=context)


def restore_run(workdir: str, step: int | None = None, *, best: bool = True) -> Run:
  """Restores the run in `workdir` (finished or interrupted).

  Args:
    workdir: the run's folder (holding checkpoints/).
    step: a checkpoint step; None -> the state the run reports: the best one
      when early stopping kept one (`checkpoints_best/`) and `best` is set,
      else the newest checkpoint.
    best: prefer the early-stopping best state when `step` is None.
  """
  workdir = os.path.abspath(workdir)
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory) if os.path.isdir(directory) else None
  if checkpointer is None or checkpointer.latest_step() is None:
    if checkpointer:
      checkpointer.close()
    raise FileNotFoundError(f"{workdir} has no checkpoint to restore (expected "
                            f"{directory}/<step>/).")
  meta = checkpointer.restore_meta()
  config = ml_collections.ConfigDict(json.loads(meta["config"]))
  # The checkpoint replaces every value: the source run is not read again.
  config.init_from.workdir = ""
  config.init_from.torch_checkpoint = ""
  run = build_run(config, workdir=workdir,
                  info=DatasetInfo.from_dict(meta["info"]))
  source = checkpointer
  best_dir = os.path.join(workdir, "checkpoints_best")
  if step is None and best and os.path.isdir(best_dir):
    source = Checkpointer(best_dir, keep=1)
    if source.latest_step() is None:
      source.close()
      source = checkpointer
  run.state, _, _ = source.restore(
      run.state, step, sharding.state_shardings(
          run.state, run.mesh, sharding.config_mode(config)))
  run.step = int(run.state.step)
  for c in {id(source): source, id(checkpointer): checkpointer}.values():
    c.close()
  return run


def _dataset_with_saved_stats(data_config: Any, info: DatasetInfo) -> Dataset:
  """The dataset, its bands carrying the statistics the run trained with."""
  dataset = build_dataset(data_config, with_stats=False)
  if [b.name for b in dataset.info.bands] != [b.name for b in info.bands]:
    raise ValueError(f"The data at config.data now has bands "
                     f"{[b.name for b in dataset.info.bands]}, the run was trained "
                     f"on {[b.name for b in info.bands]}.")
  dataset.info = dataclasses.replace(dataset.info, bands=info.bands)
  return dataset


def _example_batches(objective: Objective, dataset: Dataset,
                     config: ml_collections.ConfigDict):
  return pipeline.train_loader(dataset, config.input, seed=config.seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               image_size=config.input.image_size or None,
                               views_fn=objective.train_views())
