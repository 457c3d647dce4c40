"""Classifier heads shared by the backbones.

A backbone pools its features to a vector and hands it to one of these,
created under the name `head` so optimiser groups and weight loading can
address the classifier as `head/...`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from eo_jax.errors import ConfigValueError

HEAD_KINDS = ("linear", "mlp")


class LinearHead(nn.Module):
  """Optional dropout, then one Dense layer to the class logits."""
  num_classes: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


class MLPHead(nn.Module):
  """Dense(hidden) -> ReLU -> dropout -> Dense(num_classes)."""
  num_classes: int
  hidden: int = 1024
  dropout: float = 0.2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


def make_head(kind: str, num_classes: int, *, hidden: int = 1024,
              dropout: float | None = None, name: str = "head",
              dtype: jnp.dtype = jnp.float32) -> nn.Module:
  """Builds a classifier head by kind.

  Args:
    kind: 'linear' or 'mlp'.
    num_classes: number of logits; must be > 0.
    hidden: width of the MLP head's hidden layer.
    dropout: dropout rate; None means 0.2 for 'mlp' and 0.0 for 'linear'
      (the torchvision classifier has none).
    name: submodule name; keep 'head' so parameter paths read 'head/...'.
    dtype: compute dtype of the head (float32 keeps the logits stable when the
      backbone runs in bfloat16).

  Returns:
    An unbound head module called as `head(x, train=...)`.
  """
  if num_classes <= 0:
    raise ConfigValueError(f"A head needs num_classes > 0, got {num_classes}; build "
                     "the backbone with num_classes=0 to get pooled features.")
  if kind == "linear":
    return LinearHead(num_classes, 0.0 if dropout is None else dropout,
                      dtype=dtype, name=name)
  if kind == "mlp":
    return MLPHead(num_classes, hidden, 0.2 if dropout is None else dropout,
                   dtype=dtype, name=name)
  raise ConfigValueError(f"Unknown head {kind!r}; config.model.head must be one of "
                   f"{HEAD_KINDS}.")
