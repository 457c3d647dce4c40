"""The one training loop, shared by every objective.

Read top to bottom: data and objective, state, evaluators, resume, then the
loop with its periodic actions (log, evaluate, checkpoint, early stop) and a
final evaluation. The pieces it calls are reusable on their own:
`state.create_train_state`, `steps.make_train_step`, the evaluation runner
and evaluators of eo_jax/evaluate, `restore.restore_run`. The objective
supplies the loss and the evaluation outputs; the trainer never asks which
objective it runs.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from eo_jax import sharding
from eo_jax.data import bands as bands_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import Dataset, DatasetInfo
from eo_jax.errors import CheckpointError, TrainingInterrupted, UserError
from eo_jax.evaluate import EvalContext, Evaluator, build_evaluators
from eo_jax.evaluate.runner import EvalRunner, save_figures
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import Objective, TrainState
from eo_jax.train import throughput
from eo_jax.train.checkpoint import (Checkpointer, config_differences,
                                     iterator_state_from_json,
                                     restore_newest_good)
from eo_jax.train.early_stopping import EarlyStopping
from eo_jax.train.interrupt import InterruptGuard
from eo_jax.train.reporting import Reporter, last_logged_step, make_writer
from eo_jax.train.state import create_train_state
from eo_jax.train.steps import make_train_step
from eo_jax.train.workdir_lock import WorkdirLock

Hook = Callable[[int, TrainState], None]


class NonFiniteLossError(UserError, FloatingPointError):
  """The loss became NaN or infinite; the workdir keeps the last good checkpoint."""


def build_objective(config: ml_collections.ConfigDict, info: DatasetInfo,
                    length: tuple[int, int]) -> Objective:
  return OBJECTIVES.get(config.objective)(config, info, run_length=length)


def evaluation_context(config: ml_collections.ConfigDict, objective: Objective,
                       dataset: Dataset, mesh) -> EvalContext:
  """What `config.evals` needs: the objective, the data, a runner."""
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config.input)
  return EvalContext(objective=objective, dataset=dataset,
                     runner=EvalRunner(mesh, config.input,
                                       sharding.config_mode(config)),
                     eval_every=config.train.eval_every_steps or steps_per_epoch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence[Hook] = ()) -> dict[str, Any]:
  """Trains `config.objective` on `config.data`, resuming from `workdir`.

  Returns the final evaluation results (also written to workdir/results.json).
  `hooks` are called after every train step with (step, state); tests use
  them to simulate crashes. One run at a time may use a workdir (a lock the
  OS releases if the process dies); Ctrl-C saves a checkpoint and raises
  `TrainingInterrupted`.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir).acquire() if jax.process_index() == 0 else None
  try:
    with InterruptGuard() as interrupt:
      return _train_and_evaluate(config, workdir, hooks, interrupt)
  finally:
    if lock:
      lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        hooks: Sequence[Hook], interrupt: InterruptGuard
                        ) -> dict[str, Any]:
  mode = sharding.config_mode(config)  # a wrong value fails before any work
  is_main = jax.process_index() == 0
  logged_before = last_logged_step(workdir) if is_main else None
  writer = make_writer(workdir, is_main=is_main)

  # ------------------------------------------------------ Data, objective
  # Every file of every split is read once before the first step: a bad one
  # stops the run now, named, not at the final evaluation.
  dataset = build_dataset(config.data, validate=config.train.validate_data)
  info = dataset.info
  mesh = sharding.make_mesh()
  sharding.local_batch_size(config.input.batch_size)  # divides over devices?
  steps_per_epoch, total_steps = pipeline.run_length(dataset, config)
  # Built before the loader: multi-view objectives (DINO) shape the batches.
  objective = build_objective(config, info, (steps_per_epoch, total_steps))
  train_loader = pipeline.train_loader(
      dataset, config.input, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), image_size=config.input.image_size or None,
      views_fn=objective.train_views())
  train_iter = iter(train_loader)
  logging.info("Dataset %s: %d bands %s, %d classes, %d steps/epoch, %d steps.",
               info.name, info.num_bands, list(bands_lib.names(info.bands)),
               info.num_classes, steps_per_epoch, total_steps)

  # ---------------------------------------------------------------- State
  # A separate iterator supplies the shapes, so the training order is untouched.
  example_batch = sharding.to_global(next(iter(train_loader)), mesh)
  state, tx, schedule = create_train_state(
      config, objective, info, example_batch, mesh,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  # The state keeps this layout through every step, restore and evaluation.
  state_shardings = sharding.state_shardings(state, mesh, mode)
  train_step = make_train_step(objective, tx, schedule, config.seed, mesh,
                               state_shardings)

  # ----------------------------------------------------------- Evaluators
  evaluators = build_evaluators(
      config.evals, evaluation_context(config, objective, dataset, mesh))

  # --------------------------------------------------------------- Resume
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              keep=config.train.keep_checkpoints)
  reporter = Reporter(workdir, info, writer=writer, is_main=is_main,
                      loss_note=objective.loss_note())
  stopper = EarlyStopping.from_config(config.train.early_stopping, objective.main_metric,
                                      _periodic_prefixes(evaluators))
  pending_metrics: list[dict[str, Any]] = []
  restored = restore_newest_good(
      checkpointer, state, lambda step, meta: check_compatible(meta, info, workdir),
      config, state_shardings)
  if restored is not None:
    state, iterator_state, meta = restored
    train_iter.set_state(iterator_state_from_json(iterator_state))
    reporter.load(meta["history"])
    stopper.load(meta["early_stopping"])
    # Train metrics logged after the checkpoint's step average these too.
    # float32, as the device's values are, so the average is the same.
    pending_metrics = [{k: np.float32(v) for k, v in m.items()}
                       for m in meta.get("pending_metrics", [])]
    differences = config_differences(meta["config"], config)
    if differences:
      logging.warning("Resuming with a config that differs from the run's: %s.",
                      "; ".join(differences[:8]))
    reporter.skip_logged_steps(logged_before)
    logging.info("Resumed from step %d of %s.", int(state.step), checkpointer.directory)
  start_step = int(state.step)
  # With early stopping on, the best evaluation's state is kept apart and is
  # the one the final evaluators report. It is saved after the regular
  # checkpoint of its step, and a best state newer than the restored one is
  # dropped (it will be reached again), so the two never disagree.
  best_checkpointer = None
  if stopper.enabled:
    best_checkpointer = Checkpointer(os.path.join(workdir, "checkpoints_best"), keep=2)
    for step in best_checkpointer.all_steps():
      if step > start_step:
        best_checkpointer.delete(step)
    if (stopper.best_step == start_step and start_step > 0
        and start_step not in best_checkpointer.all_steps()):
      best_checkpointer.save(start_step, state, train_iter.get_state(),
                             {"early_stopping": stopper.dump()})

  def save(state: TrainState) -> None:
    meta = {"config": config.to_json_best_effort(), "info": info.to_dict(),
            "history": reporter.dump(), "early_stopping": stopper.dump(),
            "pending_metrics": [{k: float(v) for k, v in jax.device_get(m).items()}
                                for m in pending_metrics]}
    checkpointer.save(int(state.step), state, train_iter.get_state(), meta)

  def evaluate(state: TrainState, chosen: list[Evaluator], *, final: bool = False
               ) -> dict[str, dict[str, Any]]:
    step = int(state.step)
    results = run_evaluators(chosen, state, step)
    for prefix, result in results.items():
      reporter.eval_result(step, prefix, result["metrics"], final=final)
      if is_main:
        save_figures(result["figures"], workdir)
    return {prefix: result["metrics"] for prefix, result in results.items()}

  # ----------------------------------------------------------------- Loop
  ckpt_every = (config.train.checkpoint_every_steps or config.train.eval_every_steps
                or steps_per_epoch)
  pending_losses: list[tuple[int, jax.Array, jax.Array]] = []
  progress = reporter.progress(total_steps, start_step,
                               enabled=config.train.progress_bar)
  has_checkpoint = lambda: checkpointer.latest_step() is not None
  if start_step < total_steps:
    devices = jax.device_count()
    reporter.compiling(f"the {config.objective} train step ({config.model.name}) "
                       f"for {devices} device{'s' if devices > 1 else ''}")
  tick = time.perf_counter()
  step = start_step
  flops_per_step: float | None = None  # XLA's count, after the first step
  while step < total_steps and not stopper.should_stop:
    if interrupt.requested:
      _raise_if_not_finite(pending_losses, has_checkpoint())
      # A periodic save may have written this very step just before.
      if step not in checkpointer.all_steps():
        save(state)
      raise TrainingInterrupted(
          f"Interrupted at step {step} of {total_steps}; the checkpoint is in "
          f"{checkpointer.directory}. Run the same command to resume.")
    batch = sharding.to_global(next(train_iter), mesh)
    state, (metrics, finite) = train_step(state, batch)
    step += 1
    pending_losses.append((step, metrics["loss"], finite))
    pending_metrics.append(metrics)
    for hook in hooks:
      hook(step, state)
    progress.update(1)

    is_last = step == total_steps
    if step % config.train.log_every_steps == 0 or is_last:
      _raise_if_not_finite(pending_losses, has_checkpoint())
      mean = {f"train/{k}": float(np.mean([jax.device_get(m[k]) for m in pending_metrics]))
              for k in pending_metrics[0]}
      now = time.perf_counter()
      mean["train/steps_per_second"] = len(pending_metrics) / max(now - tick, 1e-9)
      mean["train/epoch"] = step / steps_per_epoch
      if flops_per_step is None:
        flops_per_step = throughput.step_flops(train_step, state, batch) or 0.0
      mean.update(throughput.rates(
          mean["train/steps_per_second"], config.input.batch_size, flops_per_step,
          throughput.device_peak_flops(jax.devices()[0].device_kind,
                                       throughput.compute_dtype(config)),
          jax.device_count()))
      tick = now
      reporter.scalars(step, mean)
      progress.set_postfix(loss=f"{mean['train/loss']:.4f}")
      pending_metrics = []

    new_best = False
    due = [e for e in evaluators if e.due(step, total_steps)]
    if due:
      _raise_if_not_finite(pending_losses, has_checkpoint())
      with reporter.paused():  # evaluations are not in the rate or the ETA
        evaluated = evaluate(state, due)
        for prefix, result in evaluated.items():
          new_best = stopper.update(step, prefix, result) or new_best
        reporter.eval_line(step, evaluated, note=(
            f"new best {stopper.metric}" if new_best and stopper.enabled else ""))
        reporter.plot(best_step=stopper.best_step if stopper.enabled else None,
                      best_metric=stopper.metric)
      if stopper.should_stop:
        logging.info("Early stopping at step %d: %s has not improved by %g for "
                     "%d evaluations (best %s at step %d).", step, stopper.metric,
                     stopper.min_delta, stopper.patience, stopper.best, stopper.best_step)

    if step % ckpt_every == 0 or is_last or stopper.should_stop:
      _raise_if_not_finite(pending_losses, has_checkpoint())
      save(state)
    if new_best and best_checkpointer:
      best_checkpointer.save(step, state, train_iter.get_state(),
                             {"early_stopping": stopper.dump()})
  progress.close()
  if int(state.step) > start_step and checkpointer.latest_step() != int(state.step):
    save(state)

  # ----------------------------------------------------- Final evaluation
  results: dict[str, Any] = {"step": int(state.step), "dataset": info.name}
  if best_checkpointer and stopper.best_step in best_checkpointer.all_steps():
    state, _, _ = best_checkpointer.restore(state, stopper.best_step,
                                            state_shardings)
    results["evaluated_step"] = int(state.step)
    results["early_stopping"] = stopper.dump() | {"metric": stopper.metric}
    logging.info("Final evaluation of the best state (step %d).", int(state.step))
    best_checkpointer.close()
  # Periodic evaluators report the evaluation of the reported state ...
  for prefix in _periodic_prefixes(evaluators):
    recorded = reporter.at_step(prefix, int(state.step))
    if recorded:
      results[prefix] = recorded
  # ... final ones evaluate it now.
  final = evaluate(state, [e for e in evaluators if e.final], final=True)
  for prefix, metrics in final.items():
    results[prefix] = {k: v for k, v in metrics.items() if np.ndim(v) == 0}
  reporter.plot(force=True, best_step=stopper.best_step if stopper.enabled else None,
                best_metric=stopper.metric, step=int(state.step))
  if is_main:
    _write_json_atomically(os.path.join(workdir, "results.json"), results)
    reporter.summary(results)
  writer.flush()
  checkpointer.close()
  return results


# --------------------------------------------------------------- Helpers
def run_evaluators(evaluators: Sequence[Evaluator], state: TrainState, step: int
                   ) -> dict[str, dict[str, Any]]:
  """{prefix: {'metrics': ..., 'figures': ...}}; evaluators sharing a prefix
  (a kNN and a linear probe under 'probe') are merged."""
  results: dict[str, dict[str, Any]] = {}
  for evaluator in evaluators:
    output = evaluator.run(state, step)
    merged = results.setdefault(evaluator.prefix, {"metrics": {}, "figures": {}})
    clash = sorted(set(merged["metrics"]) & set(output.metrics))
    if clash:
      raise ValueError(f"Evaluators with prefix {evaluator.prefix!r} both report "
                       f"{clash}; give config.evals.{evaluator.name} its own prefix.")
    merged["metrics"].update(output.metrics)
    merged["figures"].update(output.figures)
  return results


def _periodic_prefixes(evaluators: Sequence[Evaluator]) -> list[str]:
  return list(dict.fromkeys(e.prefix for e in evaluators if e.every_steps >= 0))


def _raise_if_not_finite(pending: list[tuple[int, jax.Array, jax.Array]],
                         has_checkpoint: bool) -> None:
  values = jax.device_get([(loss, finite) for _, loss, finite in pending])
  for (step, _, _), (loss, finite) in zip(pending, values):
    if not finite:
      pending.clear()
      what = "loss" if not np.isfinite(loss) else "updated parameters"
      kept = ("the last good checkpoint is intact" if has_checkpoint else
              "no checkpoint had been written yet")
      raise NonFiniteLossError(
          f"Training diverged at step {step}: the {what} became NaN or infinite "
          f"(loss {float(loss)}). Training stopped before saving this state; "
          f"{kept}. Lower --config.optim.lr, set --config.optim.grad_clip_norm, "
          "or check the input data for NaN values.")
  pending.clear()


def _write_json_atomically(path: str, tree: Any) -> None:
  """A crash or power loss mid-write leaves the previous file, never half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(_to_builtin(tree), f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def check_compatible(meta: dict, info: DatasetInfo, workdir: str) -> None:
  """A checkpoint's data (bands, classes) must be the run's."""
  saved = DatasetInfo.from_dict(meta["info"])
  try:
    bands_lib.check_same(saved.bands, info.bands,
                         f"The checkpoint in {workdir} was trained on other data")
  except ValueError as e:
    raise CheckpointError(f"{e} Use a new --workdir, or config.init_from to "
                          "start from that run.") from None
  if saved.class_names != info.class_names:
    raise CheckpointError(
        f"The checkpoint in {workdir} was trained with classes "
        f"{list(saved.class_names)}, the data now has {list(info.class_names)}. "
        "Use a new --workdir, or config.init_from to start from that run.")


def _to_builtin(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {k: _to_builtin(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_to_builtin(v) for v in tree]
  if isinstance(tree, (np.generic, np.ndarray)):
    return tree.tolist()
  return tree
