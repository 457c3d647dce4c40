"""A linear classifier fitted on frozen features (full batch, in JAX).

Features are standardised with the training features' mean and std (the role
of the affine-free BatchNorm in MAE's linear-probe protocol), then a softmax
regression with a small L2 penalty is fitted by full-batch Adam. It is
deterministic and fast for the feature counts of EO benchmarks (<= 1e5).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def fit_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     epochs: int = 100, learning_rate: float = 0.1,
                     weight_decay: float = 1e-4, seed: int = 0):
  """Fits the probe; returns `predict(features) -> (n, num_classes) logits`."""
  x = np.asarray(features, np.float32)
  mean, std = x.mean(0), x.std(0) + 1e-6
  x = jnp.asarray((x - mean) / std)
  y = jnp.asarray(labels, jnp.int32)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  del seed  # zero init: the optimum of a convex problem needs no randomness
  tx = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + weight_decay * jnp.sum(p["w"] ** 2)

  @jax.jit
  def fit(p):
    def step(carry, _):
      p, opt_state = carry
      grads = jax.grad(loss_fn)(p)
      updates, opt_state = tx.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, length=epochs)
    return p

  params = jax.device_get(fit(params))

  def predict(query: np.ndarray) -> np.ndarray:
    q = (np.asarray(query, np.float32) - mean) / std
    return q @ params["w"] + params["b"]
  return predict
