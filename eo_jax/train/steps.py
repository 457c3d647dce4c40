"""The jitted training step shared by every objective.

`train_step` is one update: the objective's loss and gradient, the
optimiser, the objective's post-update hook (EMA teachers), and the
metrics the trainer logs. Its random key is folded from the step number, so
a resumed run draws exactly what an uninterrupted one would have drawn.
`make_train_step` compiles it for a mesh: the state donated and laid out
as `config.sharding` says (`sharding.state_shardings`: replicated, or large
arrays split for 'fsdp', where XLA gathers parameters and reduces gradients
itself), the batch sharded over the data axis (data parallelism, on one host
or many).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from eo_jax import sharding
from eo_jax.objectives.base import Objective, TrainState

Metrics = dict[str, jax.Array]


def train_step(objective: Objective, tx: optax.GradientTransformation,
               schedule: Callable[[Any], jax.Array], base_rng: jax.Array,
               state: TrainState, batch: Mapping[str, jax.Array]
               ) -> tuple[TrainState, tuple[Metrics, jax.Array]]:
  """One update; returns (new state, (metrics, finite)).

  `finite` is False when the loss or any updated parameter is NaN or
  infinite: such a state must never be checkpointed.
  """
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
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new_state.params)]))
  return new_state, (metrics, finite)


def make_train_step(objective: Objective, tx: optax.GradientTransformation,
                    schedule: Callable[[Any], jax.Array], seed: int, mesh: Mesh,
                    state_shardings: Any = None
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                  tuple[TrainState, tuple[Metrics, jax.Array]]]:
  """`train_step` jitted over `mesh`: the state is donated (updated in place).

  `state_shardings` (`sharding.state_shardings` of the state) places the
  state on the way in and out; None replicates it.
  """
  base_rng = jax.random.key(seed + 1)
  repl = sharding.replicated(mesh)
  state_shardings = repl if state_shardings is None else state_shardings

  def step(state, batch):
    return train_step(objective, tx, schedule, base_rng, state, batch)

  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharded(mesh)),
                 out_shardings=(state_shardings, repl), donate_argnums=(0,))
