"""The DINO projection head: MLP, L2-normalised bottleneck, prototypes.

    x -> Dense(hidden) -> GELU -> Dense(hidden) -> GELU -> Dense(bottleneck)
      -> L2-normalise -> weight-normalised Dense(num_prototypes, no bias)

as in DINO / DINOv2 (`num_layers` = 3 Dense layers before the bottleneck
normalisation; 1 gives a single Dense to the bottleneck). The last layer is
weight-normalised with its gain fixed to 1: the logit of prototype k is the
cosine between the normalised bottleneck vector and the prototype's weight
column, so logits lie in [-1, 1] and only the weights' directions matter.
The same class serves iBOT's patch head (shared or separate, by config).

Parameters: 'mlp_0', 'mlp_1', ... (Dense kernel/bias, truncated-normal
std 0.02 and zero bias, as DINOv2 initialises them) and 'last_layer'
(bottleneck, num_prototypes), the prototypes' direction vectors. Freezing
'last_layer' for the first epoch is the objective's business.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.errors import ConfigValueError
from eo_jax.models import vit as vit_lib
from eo_jax.models.common import l2_normalize

Array = jax.Array

# torch's F.normalize default, which DINO's head uses.
_NORM_EPS = 1e-12


class DINOHead(nn.Module):
  """DINO / iBOT head; see the module docstring.

  Attributes:
    num_prototypes: K, the output dimension.
    hidden_dim: width of the hidden Dense layers (2048).
    bottleneck_dim: width of the normalised bottleneck (256).
    num_layers: Dense layers before the bottleneck normalisation (3).
    dtype: compute dtype of the MLP; the prototype logits are float32.
  """
  num_prototypes: int
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(..., D) features -> (..., num_prototypes) float32 logits in [-1, 1]."""
    if self.num_layers < 1:
      raise ConfigValueError(f"DINOHead needs num_layers >= 1, got {self.num_layers}.")
    dense = lambda features, i: nn.Dense(
        features, dtype=self.dtype,
        kernel_init=nn.initializers.truncated_normal(0.02),
        bias_init=nn.initializers.zeros, name=f"mlp_{i}")
    for i in range(self.num_layers - 1):
      x = vit_lib.gelu(dense(self.hidden_dim, i)(x))
    x = dense(self.bottleneck_dim, self.num_layers - 1)(x)
    x = l2_normalize(x.astype(jnp.float32), -1, eps=_NORM_EPS)
    # Weight norm with g = 1: only each prototype's direction is learned.
    v = self.param("last_layer", _last_layer_init,
                   (self.bottleneck_dim, self.num_prototypes))
    w = l2_normalize(v.astype(jnp.float32), 0, eps=_NORM_EPS)
    return x @ w


def _last_layer_init(rng: Array, shape: tuple[int, int],
                     dtype: Any = jnp.float32) -> Array:
  # PyTorch's nn.Linear default (uniform +-1/sqrt(fan_in)), which DINOv2
  # keeps for the prototypes; after normalisation only directions matter.
  bound = 1.0 / jnp.sqrt(shape[0])
  return jax.random.uniform(rng, shape, dtype, -bound, bound)
