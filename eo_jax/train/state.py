"""Building a run's train state: initial variables, `init_from`, optimiser.

`create_train_state` is what the trainer and `restore_run` call: the
objective's variables, initialised for an example batch and replicated over
the mesh, then (optionally) overwritten by another run's encoder, and the
optimiser with its schedule and state.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from eo_jax import backend
from eo_jax import sharding
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.objectives.base import Objective, TrainState
from eo_jax.train.init_from import load_init_from
from eo_jax.train.optim import make_optimizer

Schedule = Callable[[Any], jax.Array]


def init_variables(objective: Objective, batch: Mapping[str, jax.Array],
                   seed: int, mesh: Mesh) -> tuple[Any, Any, Any]:
  """(params, model_state, extra) of `objective`, replicated over `mesh`."""
  def init(rng, batch):
    variables = objective.init(rng, batch)
    return variables.params, variables.model_state, variables.extra

  with backend.init_rng_context():
    return jax.jit(init, out_shardings=sharding.replicated(mesh))(
        jax.random.key(seed), batch)


def create_train_state(config: ml_collections.ConfigDict, objective: Objective,
                       info: DatasetInfo, batch: Mapping[str, jax.Array],
                       mesh: Mesh, *, steps_per_epoch: int, total_steps: int
                       ) -> tuple[TrainState, optax.GradientTransformation,
                                  Schedule]:
  """The step-0 state of a run, its optimiser and its learning-rate schedule.

  Args:
    config: the experiment config (seed, init_from, optim).
    objective: the run's objective.
    info: the training data's description (bands for `init_from`).
    batch: a global training batch (shapes only matter).
    mesh: the device mesh; everything is replicated over it.
    steps_per_epoch, total_steps: the run's length, for the schedules.
  """
  repl = sharding.replicated(mesh)
  params, model_state, extra = init_variables(objective, batch, config.seed, mesh)
  if config.init_from.workdir:
    params, model_state = load_init_from(config.init_from, info, params,
                                         model_state, objective.backbones())
    params, model_state = jax.device_put((params, model_state), repl)
  tx, schedule = make_optimizer(
      config.optim, params, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, layer_id_fn=objective.layer_id)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl),
                     params=params, model_state=model_state,
                     opt_state=jax.jit(tx.init, out_shardings=repl)(params),
                     extra=extra)
  return state, tx, schedule
