"""KoLeo regulariser (Sablayrolles et al. 2019), as used by DINOv2.

The Kozachenko-Leonenko differential-entropy estimator, up to constants,
is the mean log distance of each point to its nearest neighbour. DINOv2
maximises it for the student's L2-normalised class tokens (before the
head), i.e. minimises

  KoLeo(x) = -1/B sum_i log(||x_i - x_nn(i)|| + eps),

which pushes the features of a batch apart so they spread uniformly over
the sphere. It is computed per global crop (two crops of one image would
otherwise be each other's nearest neighbours) and the crops' values are
summed.

The neighbour is searched over the whole (global) batch: B x B similarities
of the batch-sharded features are plain array code, so under `jax.jit` a
sharded batch gives the same value as one device. (DINOv2 searches within
each GPU's share of the batch, so its value depends on the GPU count.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from eo_jax.models.common import l2_normalize


def nearest_neighbours(x: jax.Array) -> jax.Array:
  """(B,) index of each row's most similar OTHER row (by dot product)."""
  dots = x @ x.T
  n = x.shape[0]
  dots = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, dots)
  return jnp.argmax(dots, axis=1)


def koleo_loss(features: jax.Array, eps: float = 1e-8) -> jax.Array:
  """KoLeo of one crop's (B, D) features (normalised here); B >= 2.

  Distances are sqrt(||x_i - x_j||^2 + eps^2): finite gradients even for
  duplicate points, and within eps of the true distance (DINOv2 adds eps to
  the difference vector for the same reason).
  """
  if features.shape[0] < 2:
    raise ValueError("KoLeo needs at least 2 features per crop to find a "
                     f"nearest neighbour, got shape {features.shape}.")
  x = l2_normalize(features.astype(jnp.float32), eps=eps)
  nn_index = jax.lax.stop_gradient(nearest_neighbours(x))
  diff = x - x[nn_index]
  distance = jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + eps * eps)
  return -jnp.mean(jnp.log(distance + eps))
