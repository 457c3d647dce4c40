"""LeNet-5-style CNN (LeCun et al. 1998): the smallest reference model.

conv 5x5 (6) -> ReLU -> max pool 2 -> conv 5x5 (16) -> ReLU -> max pool 2 ->
flatten -> Dense 120 -> ReLU -> Dense 84 -> ReLU -> head. Modernised in the
usual way (ReLU and max pooling instead of tanh and trainable subsampling),
unpadded convolutions as in the original, any band count. Because it
flattens, the first Dense layer's size depends on the image size: 64x64
inputs give a 13x13x16 map (2,704 inputs).

features: 'stem' (after the first pool), 'stage_1' (after the second pool),
'pre_logits' (the 84-d vector).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.models import heads, layers
from eo_jax.models.registry import MODELS

# Smallest input for which both unpadded 5x5 convs and both pools fit.
MIN_SIZE = 16


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

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False,
               mask: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    if mask is not None:
      raise ValueError("LeNet does not take a token mask; call it with "
                       "mask=None.")
    if image.ndim != 4:
      raise ValueError(f"LeNet expects (B, H, W, C) images, got shape "
                       f"{image.shape}.")
    if self.bands and image.shape[-1] != len(self.bands):
      raise ValueError(
          f"LeNet was built for {len(self.bands)} bands but the image has "
          f"{image.shape[-1]} channels; build the model with the dataset's "
          "bands (config.data.bands).")
    if min(image.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"LeNet needs images of at least {MIN_SIZE}x{MIN_SIZE} "
                       f"pixels, got {image.shape[1]}x{image.shape[2]}; set "
                       "config.input.image_size.")
    features = {}
    x = jnp.asarray(image, self.dtype)
    names = ("stem", "stage_1")
    for i, (channels, name) in enumerate(zip(self.channels, names)):
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
