"""Building a run's train state: initial variables, `init_from`, optimiser.

`create_train_state` is what the trainer and `restore_run` call: the
objective's variables, initialised for an example batch and laid out over
the mesh as `config.sharding` says (`sharding.state_shardings`: replicated,
or large arrays split for 'fsdp'), then (optionally) overwritten by another
run's encoder, and the optimiser with its schedule and state, laid out the
same way.
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
                   seed: int, mesh: Mesh, mode: str = sharding.REPLICATED
                   ) -> tuple[Any, Any, Any]:
  """(params, model_state, extra) of `objective`, laid out over `mesh` by
  `mode` ('replicated' or 'fsdp')."""
  def init(rng, batch):
    variables = objective.init(rng, batch)
    return variables.params, variables.model_state, variables.extra

  rng = jax.random.key(seed)
  with backend.init_rng_context():
    # Each array is created where it lives: no device ever holds a whole
    # 'fsdp' state. The values do not depend on the layout.
    shardings = sharding.state_shardings(jax.eval_shape(init, rng, batch),
                                         mesh, mode)
    return jax.jit(init, out_shardings=shardings)(rng, batch)


def create_train_state(config: ml_collections.ConfigDict, objective: Objective,
                       info: DatasetInfo, batch: Mapping[str, jax.Array],
                       mesh: Mesh, *, steps_per_epoch: int, total_steps: int
                       ) -> tuple[TrainState, optax.GradientTransformation,
                                  Schedule]:
  """The step-0 state of a run, its optimiser and its learning-rate schedule.

  Args:
    config: the experiment config (seed, sharding, init_from, optim).
    objective: the run's objective.
    info: the training data's description (bands for `init_from`).
    batch: a global training batch (shapes only matter).
    mesh: the device mesh; the state is laid out over it as
      `config.sharding` says.
    steps_per_epoch, total_steps: the run's length, for the schedules.
  """
  mode = sharding.config_mode(config)
  params, model_state, extra = init_variables(objective, batch, config.seed,
                                              mesh, mode)
  if config.init_from.workdir or config.init_from.get("torch_checkpoint"):
    # Whole arrays on every host: split ones cannot be read by one process.
    params, model_state = sharding.to_host((params, model_state))
    params, model_state = load_init_from(config.init_from, info, params,
                                         model_state, objective.backbones(),
                                         model_config=config.model)
    params, model_state = jax.device_put(
        (params, model_state),
        sharding.state_shardings((params, model_state), mesh, mode))
    # Extra state derived from the parameters (DINO's teacher) follows them.
    extra = jax.jit(objective.after_init_from,
                    out_shardings=sharding.state_shardings(extra, mesh, mode))(
                        params, extra)
  tx, schedule = make_optimizer(
      config.optim, params, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, layer_id_fn=objective.layer_id)
  opt_shardings = sharding.state_shardings(jax.eval_shape(tx.init, params),
                                           mesh, mode)
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                         sharding.replicated(mesh)),
                     params=params, model_state=model_state,
                     opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params),
                     extra=extra)
  return state, tx, schedule
