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
from clu import metric_writers

from eo_jax import sharding
from eo_jax.data import bands as bands_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import Dataset, DatasetInfo
from eo_jax.evaluate import EvalContext, Evaluator, build_evaluators
from eo_jax.evaluate.runner import EvalRunner, save_figures
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import Objective, TrainState
from eo_jax.train.checkpoint import Checkpointer, iterator_state_from_json
from eo_jax.train.early_stopping import EarlyStopping
from eo_jax.train.reporting import Reporter
from eo_jax.train.state import create_train_state
from eo_jax.train.steps import make_train_step

Hook = Callable[[int, TrainState], None]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the workdir keeps the last good checkpoint."""


def build_objective(config: ml_collections.ConfigDict, info: DatasetInfo,
                    length: tuple[int, int]) -> Objective:
  return OBJECTIVES.get(config.objective)(config, info, run_length=length)


def evaluation_context(config: ml_collections.ConfigDict, objective: Objective,
                       dataset: Dataset, mesh) -> EvalContext:
  """What `config.evals` needs: the objective, the data, a runner."""
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config.input)
  return EvalContext(objective=objective, dataset=dataset,
                     runner=EvalRunner(mesh, config.input),
                     eval_every=config.train.eval_every_steps or steps_per_epoch)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence[Hook] = ()) -> dict[str, Any]:
  """Trains `config.objective` on `config.data`, resuming from `workdir`.

  Returns the final evaluation results (also written to workdir/results.json).
  `hooks` are called after every train step with (step, state); tests use
  them to simulate crashes.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=not is_main, asynchronous=False)

  # ------------------------------------------------------ Data, objective
  dataset = build_dataset(config.data)
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
  train_step = make_train_step(objective, tx, schedule, config.seed, mesh)

  # ----------------------------------------------------------- Evaluators
  evaluators = build_evaluators(
      config.evals, evaluation_context(config, objective, dataset, mesh))

  # --------------------------------------------------------------- Resume
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              keep=config.train.keep_checkpoints)
  reporter = Reporter(workdir, info, writer=writer, is_main=is_main)
  stopper = EarlyStopping.from_config(config.train.early_stopping, objective.main_metric,
                                      _periodic_prefixes(evaluators))
  if checkpointer.latest_step() is not None:
    check_compatible(checkpointer.restore_meta(), info, workdir)
    state, iterator_state, meta = checkpointer.restore(state)
    train_iter.set_state(iterator_state_from_json(iterator_state))
    reporter.load(meta["history"])
    stopper.load(meta["early_stopping"])
    logging.info("Resumed from step %d of %s.", int(state.step), checkpointer.directory)
  start_step = int(state.step)
  # With early stopping on, the best evaluation's state is kept apart and is
  # the one evaluated by the final evaluators.
  best_checkpointer = (Checkpointer(os.path.join(workdir, "checkpoints_best"), keep=1)
                       if stopper.enabled else None)

  def save(state: TrainState) -> None:
    meta = {"config": config.to_json_best_effort(), "info": info.to_dict(),
            "history": reporter.dump(), "early_stopping": stopper.dump()}
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
  pending_metrics: list[dict[str, jax.Array]] = []
  progress = reporter.progress(total_steps, start_step,
                               enabled=config.train.progress_bar)
  tick = time.perf_counter()
  step = start_step
  while step < total_steps and not stopper.should_stop:
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
      _raise_if_not_finite(pending_losses)
      mean = {f"train/{k}": float(np.mean([jax.device_get(m[k]) for m in pending_metrics]))
              for k in pending_metrics[0]}
      now = time.perf_counter()
      mean["train/steps_per_second"] = len(pending_metrics) / max(now - tick, 1e-9)
      mean["train/epoch"] = step / steps_per_epoch
      tick = now
      reporter.scalars(step, mean)
      progress.set_postfix(loss=f"{mean['train/loss']:.4f}")
      pending_metrics = []

    due = [e for e in evaluators if e.due(step, total_steps)]
    if due:
      _raise_if_not_finite(pending_losses)
      for prefix, result in evaluate(state, due).items():
        if stopper.update(step, prefix, result) and best_checkpointer:
          logging.info("New best %s = %s at step %d.", stopper.metric,
                       stopper.best, step)
          best_checkpointer.save(step, state, train_iter.get_state(),
                                 {"early_stopping": stopper.dump()})
      reporter.plot()
      if stopper.should_stop:
        logging.info("Early stopping at step %d: %s has not improved by %g for "
                     "%d evaluations (best %s at step %d).", step, stopper.metric,
                     stopper.min_delta, stopper.patience, stopper.best, stopper.best_step)

    if step % ckpt_every == 0 or is_last or stopper.should_stop:
      _raise_if_not_finite(pending_losses)
      save(state)
  progress.close()
  if int(state.step) > start_step and checkpointer.latest_step() != int(state.step):
    save(state)

  # ----------------------------------------------------- Final evaluation
  results: dict[str, Any] = {"step": int(state.step), "dataset": info.name}
  if best_checkpointer and best_checkpointer.latest_step() is not None:
    state, _, _ = best_checkpointer.restore(state)
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
  reporter.plot(force=True)
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(_to_builtin(results), f, indent=2)
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


def _raise_if_not_finite(pending: list[tuple[int, jax.Array, jax.Array]]) -> None:
  values = jax.device_get([(loss, finite) for _, loss, finite in pending])
  for (step, _, _), (loss, finite) in zip(pending, values):
    if not finite:
      pending.clear()
      what = "loss" if not np.isfinite(loss) else "updated parameters"
      raise NonFiniteLossError(
          f"Training diverged at step {step}: the {what} became NaN or infinite "
          f"(loss {float(loss)}). Training stopped "
          "before saving this state; the last good checkpoint is intact. Lower "
          "--config.optim.lr, set --config.optim.grad_clip_norm, or check the "
          "input data for NaN values.")
  pending.clear()


def check_compatible(meta: dict, info: DatasetInfo, workdir: str) -> None:
  """A checkpoint's data (bands, classes) must be the run's."""
  saved = DatasetInfo.from_dict(meta["info"])
  bands_lib.check_same(saved.bands, info.bands,
                       f"The checkpoint in {workdir} was trained on other data")
  if saved.class_names != info.class_names:
    raise ValueError(
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
