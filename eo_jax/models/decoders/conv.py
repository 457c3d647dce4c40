"""'conv': progressive upsampling of the deepest map (SETR-PUP-like).

From the deepest map (stride s), ceil(log2 s) times: a 3x3 conv, BatchNorm
and ReLU, then bilinear x2 upsampling; the last step goes to the label's
size exactly, which also covers strides that are not powers of two (a
patch of 14 px: x2, x2, x2, then x1.75) and maps cut short at the border.
Then a 1x1 classifier at full resolution. Zheng et al. 2021 (SETR) use this
'progressive upsampling' decoder on ViT tokens; here it serves any backbone.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax

from eo_jax.models.decoders.base import (DECODERS, ConvNormReLU, Decoder,
                                         classifier, logits_at, read_map,
                                         resize)

Array = jax.Array


def upsampling_steps(stride: int) -> int:
  """x2 steps from `stride` to full resolution: ceil(log2 stride), >= 0."""
  return max(0, math.ceil(math.log2(stride))) if stride > 1 else 0


@DECODERS.register("conv")
class ConvDecoder(Decoder):
  """Progressive upsampling (module docstring).

  Attributes:
    width: channels of every upsampling step (SETR-PUP: 256).
    dropout: dropout before the classifier.
  """
  width: int = 256
  dropout: float = 0.0

  kind = "conv"

  @nn.compact
  def __call__(self, features: Mapping[str, Array], strides: Mapping[str, int],
               image_hw: Sequence[int], train: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    name = self._select(dict(strides), "the backbone")["input"]
    x = read_map(self.kind, features, name, self.dtype)
    steps = upsampling_steps(int(strides[name]))
    for i in range(steps):
      x = ConvNormReLU(self.width, 3, dtype=self.dtype, name=f"up_{i}")(
          x, train)
      last = i == steps - 1
      x = resize(x, image_hw if last else (2 * x.shape[1], 2 * x.shape[2]))
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    logits = classifier(self.num_classes, dtype=self.dtype)(x)
    # A stride-1 map skips the steps; the resize is then a no-op or mends a
    # border an unpadded backbone lost.
    return logits_at(logits, image_hw), {}
