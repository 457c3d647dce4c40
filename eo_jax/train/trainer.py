"""The one training loop, shared by every objective.

Read top to bottom: data, objective and state, resume, step functions, then
the loop with its periodic actions (log, evaluate, checkpoint, early stop) and
a final evaluation. The objective supplies the loss and the evaluation; the
trainer never asks which objective it runs.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers

from eo_jax.data import bands as bands_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.evaluate.batches import padded_eval_batches
from eo_jax.evaluate.probe import FeatureProbe
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import Objective, TrainState
from eo_jax.train import sharding
from eo_jax.train.checkpoint import Checkpointer, iterator_state_from_json
from eo_jax.train.early_stopping import EarlyStopping
from eo_jax.train.init_from import load_init_from
from eo_jax.train.optim import make_optimizer
from eo_jax.train.reporting import Reporter

Hook = Callable[[int, TrainState], None]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the workdir keeps the last good checkpoint."""


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

  # ---------------------------------------------------------------- Data
  dataset = build_dataset(config.data)
  info = dataset.info
  mesh = sharding.make_mesh()
  local_batch = sharding.local_batch_size(config.input.batch_size)
  eval_global = config.input.eval_batch_size or config.input.batch_size
  local_eval_batch = sharding.local_batch_size(eval_global)
  steps_per_epoch = pipeline.steps_per_epoch(dataset, config.input)
  total_steps = config.train.steps or math.ceil(config.train.epochs * steps_per_epoch)
  image_size = config.input.image_size or None
  # Built before the loader: multi-view objectives (DINO) shape the batches.
  objective = OBJECTIVES.get(config.objective)(
      config, info, run_length=(steps_per_epoch, total_steps))
  train_loader = pipeline.train_loader(
      dataset, config.input, seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), image_size=image_size,
      views_fn=objective.train_views())
  train_iter = iter(train_loader)
  logging.info("Dataset %s: %d bands %s, %d classes, %d steps/epoch, %d steps.",
               info.name, info.num_bands, list(bands_lib.names(info.bands)),
               info.num_classes, steps_per_epoch, total_steps)

  # ----------------------------------------------------- Objective, state
  repl = sharding.replicated(mesh)
  data_sharding = sharding.batch_sharded(mesh)
  # A separate iterator supplies the shapes, so the training order is untouched.
  example_batch = sharding.to_global(next(iter(train_loader)), mesh)
  init_fn = lambda rng, batch: dataclass_tuple(objective.init(rng, batch))
  # The non-partitionable threefry compiles initialisers several times faster
  # on CPU (21 s -> 3 s for a small ResNet); parameters are replicated, so
  # nothing is lost by generating them unpartitioned.
  with jax.threefry_partitionable(False):
    params, model_state, extra = jax.jit(init_fn, out_shardings=repl)(
        jax.random.key(config.seed), example_batch)
  if config.init_from.workdir:
    params, model_state = load_init_from(config, info, params, model_state)
    params, model_state = jax.device_put((params, model_state), repl)
  tx, schedule = make_optimizer(
      config.optim, params, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      layer_id_fn=getattr(objective, "layer_id", None))
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl),
                     params=params, model_state=model_state,
                     opt_state=jax.jit(tx.init, out_shardings=repl)(params),
                     extra=extra)

  # --------------------------------------------------------------- Resume
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              keep=config.train.keep_checkpoints)
  reporter = Reporter(workdir, info, writer=writer, is_main=is_main)
  stopper = EarlyStopping.from_config(config.train.early_stopping, objective.main_metric)
  if checkpointer.latest_step() is not None:
    _check_compatible(checkpointer.restore_meta(), info, workdir)
    state, iterator_state, meta = checkpointer.restore(state)
    train_iter.set_state(iterator_state_from_json(iterator_state))
    reporter.load(meta["history"])
    stopper.load(meta["early_stopping"])
    logging.info("Resumed from step %d of %s.", int(state.step), checkpointer.directory)
  start_step = int(state.step)
  # With early stopping on, the best evaluation's state is kept apart and is
  # the one evaluated on the final (test) splits.
  best_checkpointer = (Checkpointer(os.path.join(workdir, "checkpoints_best"), keep=1)
                       if stopper.enabled else None)

  def save(state: TrainState) -> None:
    meta = {"config": config.to_json_best_effort(), "info": info.to_dict(),
            "history": reporter.dump(), "early_stopping": stopper.dump()}
    checkpointer.save(int(state.step), state, train_iter.get_state(), meta)

  # ------------------------------------------------------- Step functions
  base_rng = jax.random.key(config.seed + 1)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
    (loss, out), grads = grad_fn(state.params, state, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates),
        model_state=out.model_state, opt_state=opt_state, extra=out.extra)
    new_state = new_state.replace(extra=objective.after_update(new_state))
    metrics = dict(out.metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state.step))
    # A finite loss can still step into non-finite parameters; both must be
    # finite before a state may be checkpointed.
    finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_state.params)]))
    return new_state, (metrics, finite)

  jit_train_step = jax.jit(train_step, in_shardings=(repl, data_sharding),
                           out_shardings=(repl, repl), donate_argnums=(0,))
  jit_eval_step = jax.jit(objective.eval_step, in_shardings=(repl, data_sharding),
                          out_shardings=data_sharding)

  def evaluate(state: TrainState, split: str) -> dict[str, Any]:
    evaluator = objective.evaluator(split)
    first_batch = None
    for local, valid in padded_eval_batches(dataset, split, config.input,
                                            local_eval_batch, image_size):
      batch = sharding.to_global(local, mesh)
      outputs, valid = sharding.to_host(
          (jit_eval_step(state, batch), sharding.to_global({"v": valid}, mesh)["v"]))
      evaluator.update({k: np.asarray(v)[valid] for k, v in outputs.items()})
      if first_batch is None:
        first_batch = local
    result = evaluator.result()
    if is_main and first_batch is not None:
      objective.visualize(state, first_batch, workdir, int(state.step), split)
    return result

  probe = None
  if config.probe.data.name:
    if type(objective).embed is Objective.embed:
      raise ValueError(f"config.probe is set, but objective {config.objective!r} "
                       "has no `embed` to give features to probe.")
    probe = FeatureProbe(config.probe, info)
    jit_embed = jax.jit(objective.embed, in_shardings=(repl, data_sharding),
                        out_shardings=data_sharding)

  def evaluate_all(state: TrainState, *, final: bool = False) -> dict[str, dict]:
    splits = config.train.final_eval_splits if final else config.train.eval_splits
    out = {}
    for split in tuple(splits):
      if final and split not in dataset.splits:
        continue
      out[split] = evaluate(state, split)
      reporter.eval_result(int(state.step), split, out[split], final=final)
    if probe is not None:
      out["probe"] = probe.run(jit_embed, state, mesh)
      reporter.eval_result(int(state.step), "probe", out["probe"], final=final)
    return out

  # ----------------------------------------------------------------- Loop
  eval_every = config.train.eval_every_steps or steps_per_epoch
  ckpt_every = config.train.checkpoint_every_steps or eval_every
  pending_losses: list[tuple[int, jax.Array, jax.Array]] = []
  pending_metrics: list[dict[str, jax.Array]] = []
  progress = reporter.progress(total_steps, start_step,
                               enabled=config.train.progress_bar)
  tick = time.perf_counter()
  step = start_step
  while step < total_steps and not stopper.should_stop:
    batch = sharding.to_global(next(train_iter), mesh)
    state, (metrics, finite) = jit_train_step(state, batch)
    step += 1
    pending_losses.append((step, metrics["loss"], finite))
    pending_metrics.append(metrics)
    for hook in hooks:
      hook(step, state)
    objective.epoch_hook(step / steps_per_epoch)
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

    if step % eval_every == 0 or is_last:
      _raise_if_not_finite(pending_losses)
      for split, result in evaluate_all(state).items():
        if stopper.update(step, split, result) and best_checkpointer:
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
  for split, result in evaluate_all(state, final=True).items():
    results[split] = {k: v for k, v in result.items() if np.ndim(v) == 0}
  for split in tuple(config.train.eval_splits):
    results.setdefault(split, reporter.latest(split))
  reporter.plot(force=True)
  if is_main:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(_to_builtin(results), f, indent=2)
  writer.flush()
  checkpointer.close()
  return results


# --------------------------------------------------------------- Helpers
def dataclass_tuple(variables) -> tuple[Any, Any, Any]:
  return variables.params, variables.model_state, variables.extra


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


def _check_compatible(meta: dict, info: DatasetInfo, workdir: str) -> None:
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
