"""Per-example classification losses: cross-entropy with label smoothing,
class weights and an ignore index, and focal loss.

They return per-example (or per-pixel) values so that callers decide how to
reduce, and so evaluation can average exactly over a whole split.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from eo_jax.errors import ConfigValueError


def _smoothed_targets(labels: jax.Array, num_classes: int,
                      label_smoothing: float) -> jax.Array:
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing:
    onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
  return onehot


def _weight_of(labels: jax.Array, class_weights, num_classes: int) -> jax.Array:
  # A one-hot product rather than a gather: gathering a constant with
  # batch-sharded indices trips sharding propagation inside jit.
  weights = jnp.asarray(class_weights, jnp.float32)
  if weights.shape != (num_classes,):
    raise ConfigValueError(f"config.loss.class_weights has {weights.shape[0]} entries "
                     f"but there are {num_classes} classes.")
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) @ weights


def cross_entropy(logits: jax.Array, labels: jax.Array, *,
                  label_smoothing: float = 0.0,
                  class_weights: Sequence[float] | jax.Array | None = None,
                  ignore_index: int | None = None) -> jax.Array:
  """Softmax cross-entropy per example; ignored labels give 0.

  Args:
    logits: (..., K) unnormalised scores.
    labels: (...) integer labels.
    label_smoothing: mass spread uniformly over all K classes.
    class_weights: optional (K,) weight of each true class.
    ignore_index: label value whose examples contribute 0.
  """
  num_classes = logits.shape[-1]
  valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  targets = _smoothed_targets(safe, num_classes, label_smoothing)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  loss = -jnp.sum(targets * logp, axis=-1)
  if class_weights is not None and len(class_weights):
    loss = loss * _weight_of(safe, class_weights, num_classes)
  return jnp.where(valid, loss, 0.0)


def focal_loss(logits: jax.Array, labels: jax.Array, *, gamma: float = 2.0,
               label_smoothing: float = 0.0,
               class_weights: Sequence[float] | jax.Array | None = None,
               ignore_index: int | None = None) -> jax.Array:
  """Multi-class focal loss (Lin et al. 2017): -sum_k t_k (1 - p_k)^gamma log p_k.

  With gamma = 0 it equals `cross_entropy`.
  """
  num_classes = logits.shape[-1]
  valid = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  targets = _smoothed_targets(safe, num_classes, label_smoothing)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  modulator = (1.0 - jnp.exp(logp)) ** gamma
  loss = -jnp.sum(targets * modulator * logp, axis=-1)
  if class_weights is not None and len(class_weights):
    loss = loss * _weight_of(safe, class_weights, num_classes)
  return jnp.where(valid, loss, 0.0)


def classification_loss(logits: jax.Array, labels: jax.Array, loss_config,
                        ignore_index: int | None = None) -> jax.Array:
  """Dispatches on `config.loss`: focal when focal_gamma > 0, else CE."""
  weights = tuple(loss_config.class_weights) or None
  if loss_config.focal_gamma > 0:
    return focal_loss(logits, labels, gamma=loss_config.focal_gamma,
                      label_smoothing=loss_config.label_smoothing,
                      class_weights=weights, ignore_index=ignore_index)
  return cross_entropy(logits, labels, label_smoothing=loss_config.label_smoothing,
                       class_weights=weights, ignore_index=ignore_index)


def describe_loss(loss_config) -> str:
  """What the training loss is when it is not the plain cross-entropy that
  the supervised objective reports on validation data; '' when it is.

  `loss_config` is `config.loss` (class_weights, label_smoothing,
  focal_gamma).
  """
  kinds = []
  if tuple(loss_config.class_weights):
    kinds.append("class-weighted")
  if loss_config.label_smoothing:
    kinds.append(f"label-smoothed ({loss_config.label_smoothing:g})")
  loss = (f"focal (gamma {loss_config.focal_gamma:g})"
          if loss_config.focal_gamma > 0 else "CE")
  if not kinds and loss == "CE":
    return ""
  return f"train: {' '.join(kinds + [loss])} (config.loss), val: plain CE"
