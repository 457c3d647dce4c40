"""Teacher-side normalisation of DINO / iBOT prototype scores.

Self-distillation collapses when every image gets the same teacher target.
Two remedies turn the teacher's prototype logits (R, K) into target
distributions:

* `softmax_center` (DINO): subtract a running centre, an EMA of the batch
  mean of the logits, then a sharp softmax (temperature tau_t). The centre is
  state: it lives in the train state's `extra` and `update_center` returns
  its next value.
* `sinkhorn_knopp` (SwAV, DINOv2): a few alternating normalisations that make
  the batch's assignment matrix spread evenly over the K prototypes, with no
  state at all.

Both reduce over the batch axis with plain array code. Under the trainer's
`jax.jit`, where the batch is sharded over devices and parameters are
replicated, `jnp.sum(x, axis=0)` of a batch-sharded `x` is the sum over the
GLOBAL batch (GSPMD inserts the all-reduce), which is what DINOv2 gets with
explicit `all_reduce` calls; tests/objectives/test_dino_distributed.py checks
that 4 devices reproduce 1.

`weights` (R,) marks the rows that count (1) and padding rows (0): iBOT
scores a fixed-size buffer of masked patches, part of which is padding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _weights(logits: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.ones(logits.shape[:-1], jnp.float32)
  return weights.astype(jnp.float32)


def softmax_center(logits: jax.Array, center: jax.Array,
                   temperature: float | jax.Array) -> jax.Array:
  """softmax((logits - center) / temperature) over the last axis, float32.

  A teacher target: no gradient flows to the logits or the centre.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  return jax.nn.softmax((logits - jax.lax.stop_gradient(center)) / temperature,
                        axis=-1)


def update_center(center: jax.Array, logits: jax.Array, momentum: float,
                  weights: jax.Array | None = None) -> jax.Array:
  """center * m + (1 - m) * (weighted) mean of `logits` over all rows.

  Args:
    center: (K,) current centre.
    logits: (..., K) teacher logits of the whole (global) batch.
    momentum: EMA momentum m (DINO: 0.9).
    weights: (...) 1 for rows that count, 0 for padding; None -> all count.

  Returns:
    The (K,) centre for the next step; no gradient flows through it.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  w = _weights(logits, weights)
  total = jnp.sum(logits * w[..., None], axis=tuple(range(logits.ndim - 1)))
  mean = total / jnp.maximum(jnp.sum(w), 1.0)
  return center * momentum + (1.0 - momentum) * mean


def sinkhorn_knopp(logits: jax.Array, temperature: float | jax.Array,
                   num_iterations: int = 3,
                   weights: jax.Array | None = None) -> jax.Array:
  """Sinkhorn-Knopp targets for (R, K) teacher logits (DINOv2's algorithm).

  With Q = exp(logits / temperature) restricted to the rows that count
  (R' = sum(weights) of them), Q is scaled to total mass 1, then
  `num_iterations` times: every prototype column to mass 1/K, then every
  row to mass 1/R'. The result is multiplied by R' so each counted row is a
  probability distribution (sums to 1); after enough iterations each
  prototype receives R'/K of the total mass (equipartition). Padding rows
  come out as zeros.

  The logits are shifted by their global maximum first: Q is only defined
  up to a constant factor (the first normalisation removes it), and the shift
  keeps exp() finite at small temperatures.

  Args:
    logits: (R, K) teacher logits, R rows over the whole (global) batch.
    temperature: teacher temperature.
    num_iterations: alternating normalisations (DINOv2: 3).
    weights: (R,) 1 for rows to assign, 0 for padding; None -> all rows.

  Returns:
    (R, K) float32 targets, no gradient.
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  w = _weights(logits, weights)[:, None]
  num_prototypes = logits.shape[-1]
  num_rows = jnp.maximum(jnp.sum(w), 1.0)
  # Padding rows must not move the maximum (nor produce inf).
  shift = jnp.max(jnp.where(w > 0, logits, -jnp.inf))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  # Padding rows are masked before exp(): their logits may be anything.
  q = jnp.exp(jnp.where(w > 0, logits - shift, -jnp.inf) / temperature)
  q = q / jnp.sum(q)
  for _ in range(num_iterations):
    # Every prototype gets 1/K of the mass ...
    q = q / jnp.maximum(jnp.sum(q, axis=0, keepdims=True), 1e-30)
    q = q / num_prototypes
    # ... and every counted row 1/R'.
    row = jnp.sum(q, axis=1, keepdims=True)
    q = jnp.where(w > 0, q / jnp.where(row > 0, row, 1.0), 0.0) / num_rows
  return q * num_rows
