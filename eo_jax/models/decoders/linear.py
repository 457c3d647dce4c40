"""'linear': BatchNorm and a 1x1 classifier on the deepest map.

DINOv2's linear segmentation head (Oquab et al. 2023, the 'linear' setting
of its semantic segmentation evaluation): the last block's patch tokens
after the final norm ('patch_tokens' of a token backbone; a CNN's deepest
map instead) go through a BatchNorm with affine parameters, then a linear
layer per patch, and the logits are upsampled bilinearly to the label's
size. Upsampling the K logits rather than the features costs the least.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.models import common
from eo_jax.models.decoders.base import (DECODERS, Decoder, DType,
                                         classifier, logits_at, read_map)

Array = jax.Array


def norm_linear(x: Array, num_classes: int, dropout: float, train: bool,
                dtype: DType = jnp.float32) -> Array:
  """BatchNorm, dropout, 1x1 classifier: the head of 'linear' and 'ms_linear'.

  Called inside a decoder's compact `__call__`, so the submodules it makes
  ('norm', 'classifier') belong to that decoder. The classifier computes in
  `dtype`; the BatchNorm's statistics are float32 whatever it is.
  """
  x = common.batch_norm(train, dtype, name="norm")(x)
  x = nn.Dropout(dropout)(x, deterministic=not train)
  return classifier(num_classes, dtype=dtype)(x)


@DECODERS.register("linear")
class LinearDecoder(Decoder):
  """DINOv2's linear head (module docstring).

  Attributes:
    dropout: dropout before the classifier (DINOv2: none).
  """
  dropout: float = 0.0

  kind = "linear"

  @nn.compact
  def __call__(self, features: Mapping[str, Array], strides: Mapping[str, int],
               image_hw: Sequence[int], train: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    maps = self._select(dict(strides), "the backbone")
    x = read_map(self.kind, features, maps["input"], self.dtype)
    logits = norm_linear(x, self.num_classes, self.dropout, train, self.dtype)
    return logits_at(logits, image_hw), {}
