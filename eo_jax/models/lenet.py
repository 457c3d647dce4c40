"""LeNet-5-style CNN (LeCun et al. 1998): the smallest reference model.

conv 5x5 (6) -> ReLU -> max pool 2 -> conv 5x5 (16) -> ReLU -> max pool 2 ->
flatten -> Dense 120 -> ReLU -> Dense 84 -> ReLU -> head. Modernised in the
usual way (ReLU and max pooling instead of tanh and trainable subsampling),
unpadded convolutions as in the original, any band count. Because it
flattens, the first Dense layer's size depends on the image size: 64x64
inputs give a 13x13x16 map (2,704 inputs).

features: 'stem' (after the first pool, stride 2), 'stage_1' (after the
second pool, stride 4), the dense maps of `dense_maps()`; 'pre_logits' (the
84-d vector).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.models import common, heads, layers
from eo_jax.models.registry import MODELS

# Smallest input for which both unpadded 5x5 convs and both pools fit.
MIN_SIZE = 16

# Feature names of the two conv + pool stages, and the submodules that
# belong to each (for layer-wise decay).
_MAPS = ("stem", "stage_1")
_STAGE_PARTS = (("conv1", "pool1"), ("conv2", "pool2"))


class LeNet(nn.Module):
  """LeNet-5-style classifier.

  Attributes:
    num_classes: logits; 0 returns the 84-d features as output.
    bands: input bands; the image must have len(bands) channels (an empty
      tuple skips the check).
    channels: output channels of the two convolutions.
    hidden: widths of the two Dense layers before the head.
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int
  bands: tuple[Band, ...] = ()
  channels: Sequence[int] = (6, 16)
  hidden: Sequence[int] = (120, 84)
  dtype: Any = jnp.float32

  def dense_maps(self) -> dict[str, int]:
    """'stem' (stride 2) and 'stage_1' (stride 4).

    The convolutions are unpadded: along an axis of n pixels 'stem' has
    (n - 4) // 2 locations and 'stage_1' ((n - 4) // 2 - 4) // 2.
    """
    return {name: 2 ** (i + 1) for i, name in enumerate(_MAPS)}

  def layer_id(self, path: str) -> int:
    """conv1 0, conv2 1, the Dense layers 2, the head and the rest 3.

    The first '/'-separated component naming a LeNet part decides, so the
    path may carry the model's own name inside a larger module.
    """
    for part in path.split("/"):
      if part == "head":
        break
      for depth, parts in enumerate(_STAGE_PARTS):
        if part in parts:
          return depth
      if re.fullmatch(r"fc\d+", part):
        return len(_STAGE_PARTS)
    return self.num_layers()

  def num_layers(self) -> int:
    """The depth of the head: the conv stages and the Dense stack below it."""
    return len(_STAGE_PARTS) + 1

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False,
               mask: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    common.check_image("LeNet", image, mask, self.bands, min_size=MIN_SIZE)
    features = {}
    x = jnp.asarray(image, self.dtype)
    for i, (channels, name) in enumerate(zip(self.channels, _MAPS)):
      x = layers.Conv(channels, (5, 5), padding="VALID", dtype=self.dtype,
                      name=f"conv{i + 1}")(x)
      x = layers.MaxPool((2, 2), (2, 2), name=f"pool{i + 1}")(nn.relu(x))
      features[name] = x
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(x))
    x = x.astype(jnp.float32)
    features["pre_logits"] = x
    if self.num_classes == 0:
      return x, features
    return heads.make_head("linear", self.num_classes)(x, train=train), features


@MODELS.register("lenet")
def lenet(*, bands: Sequence[Band], num_classes: int, **kwargs) -> LeNet:
  """LeNet-5-style CNN; 61,706 params for 1 band, 32x32 input, 10 classes."""
  return LeNet(num_classes=num_classes, bands=tuple(bands), **kwargs)
