"""'deeplabv3plus': ASPP, a low-level skip, and an FCN auxiliary head.

DeepLabV3+ (Chen et al. 2018) on any backbone of the contract:

* ASPP (DeepLabV3) on the deepest map: a 1x1 branch, three 3x3 branches
  dilated at `rates`, and image pooling (the spatial mean through a 1x1
  conv, broadcast back to every position), each conv-BN-ReLU of `width`
  channels, concatenated, projected by a 1x1 conv-BN-ReLU, then dropout.
* Decoder: the low-level map through a 1x1 conv-BN-ReLU to
  `low_level_width` (48) channels, the ASPP output upsampled bilinearly to
  its size and concatenated, two 3x3 conv-BN-ReLU of `width`, a 1x1
  classifier, bilinear upsampling to the label's size.
* FCN auxiliary head (Long et al. 2015; torchvision's and mmsegmentation's
  `FCNHead`) on an intermediate map: 3x3 conv-BN-ReLU of `aux_width`,
  dropout, 1x1 classifier, upsampled: returned as 'aux_logits' (training
  adds its loss, e.g. x 0.4; inference ignores it).

Which maps (by name and stride, from the backbone contract):

* deep: `deepest_map` ('patch_tokens' of a ViT; a ResNet's 'stage_4').
* low level: the pyramid map of stride 4 finer than the deep one (the last
  of that stride: 'stage_1' rather than 'stem'); without one, the finer map
  whose stride is closest to 4 (in log scale, the coarser on a tie). A
  token backbone has one stride only: it fuses with an earlier block,
  'grid_<depth // 4 - 1>' (block 3 of 12, as ViT feature pyramids take
  their first level), at the same resolution, so the skip adds early,
  local features rather than resolution.
* aux: a ViT's middle block 'grid_<depth // 2 - 1>'; a CNN's pyramid map
  before the deep one (a ResNet's 'stage_3').
`low_level_map` / `aux_map` name other maps explicitly.

ASPP rates (`aspp_rates`): None keeps DeepLab's spacing in input pixels,
(96, 192, 288) px, i.e. rates round((6, 12, 18) * 16 / s) on a map of
stride s: (6, 12, 18) at output stride 16, doubled (12, 24, 36) at 8, and
for a ViT at its patch stride p the same rule: /16 -> (6, 12, 18), /8 ->
(12, 24, 36), /14 -> (7, 14, 21). Keeping the pixel spacing keeps each
branch's context the same whatever the backbone; the rates do not depend
on the input size, so a model trained on small tiles sees the same
branches on large ones. A rate at least the map's side makes that branch a
1x1 conv (its outer taps fall on padding; DeepLabV3 sec. 3.3): a warning
says so, and small tiles (64 px at stride 8 is an 8x8 map) want explicit
rates such as (1, 2, 3).
"""
from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from eo_jax.errors import ConfigValueError
from eo_jax.models.decoders.base import (DECODERS, ConvNormReLU, Decoder,
                                         DType, block_grids, classifier,
                                         deepest_map, logits_at, missing_map,
                                         pyramid, read_map, resize)

Array = jax.Array

#: DeepLabV3's ASPP rates at output stride 16.
BASE_RATES = (6, 12, 18)
_BASE_STRIDE = 16
_LOW_LEVEL_STRIDE = 4


def aspp_rates(stride: int) -> tuple[int, ...]:
  """ASPP rates with DeepLab's pixel spacing on a map of `stride`.

  round(r * 16 / stride) for r in (6, 12, 18), at least 1 (halves round up).
  """
  return tuple(max(1, int(math.floor(r * _BASE_STRIDE / stride + 0.5)))
               for r in BASE_RATES)


def resolve_rates(setting: Sequence[int] | None, stride: int
                  ) -> tuple[int, ...]:
  """The rates to use: `setting` (validated) or the rule for `stride`."""
  if setting is None:
    return aspp_rates(stride)
  rates = tuple(int(r) for r in setting)
  if not rates or min(rates) < 1:
    raise ConfigValueError(
        f"decoder 'deeplabv3plus': aspp_rates={setting!r} must be positive "
        "ints, e.g. (6, 12, 18); or None for the default rule.")
  return rates


def low_level_map(strides: Mapping[str, int], deep: str) -> str | None:
  """The map DeepLabV3+ fuses with the ASPP output (module docstring)."""
  finer = [n for n in pyramid(strides) if strides[n] < strides[deep]]
  if finer:
    def distance(name: str) -> tuple[float, int]:
      return abs(math.log2(strides[name] / _LOW_LEVEL_STRIDE)), -strides[name]
    best = min(distance(n) for n in finer)
    return [n for n in finer if distance(n) == best][-1]
  grids = block_grids(strides)
  if grids:
    return grids[max(len(grids) // 4 - 1, 0)]
  return None


def aux_map(strides: Mapping[str, int], deep: str) -> str | None:
  """The map the FCN auxiliary head reads (module docstring)."""
  grids = block_grids(strides)
  if grids:
    return grids[max(len(grids) // 2 - 1, 0)]
  names = pyramid(strides)
  if deep in names and names.index(deep) > 0:
    return names[names.index(deep) - 1]
  return None


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling (module docstring).

  Submodules: 'branch_1x1', 'atrous_<i>' (one per rate, so parameter names
  do not depend on the rates), 'pooling', 'project'.

  Attributes:
    width: channels of every branch and of the output.
    rates: dilations of the 3x3 branches, in map cells.
    dropout: dropout after the projection.
    dtype: compute dtype of the convs and of the output.
  """
  width: int = 256
  rates: Sequence[int] = BASE_RATES
  dropout: float = 0.1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    b, h, w, _ = x.shape
    conv_bn_relu = functools.partial(ConvNormReLU, self.width,
                                     dtype=self.dtype)
    branches = [conv_bn_relu(1, name="branch_1x1")(x, train)]
    for i, rate in enumerate(self.rates):
      if rate >= max(h, w):
        logging.warning(
            "ASPP rate %d on a %dx%d map: the branch sees only its centre "
            "tap (a 1x1 conv); set smaller decoder_settings.aspp_rates for "
            "maps this small.", rate, h, w)
      branches.append(conv_bn_relu(3, int(rate), name=f"atrous_{i}")(
          x, train))
    # The spatial mean sums h * w values: in float32, not the compute dtype.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True)
    pooled = conv_bn_relu(1, name="pooling")(pooled.astype(x.dtype), train)
    branches.append(jnp.broadcast_to(pooled, (b, h, w, self.width)))
    y = conv_bn_relu(1, name="project")(jnp.concatenate(branches, axis=-1),
                                        train)
    return nn.Dropout(self.dropout)(y, deterministic=not train)


class FCNHead(nn.Module):
  """3x3 conv-BN-ReLU, dropout, 1x1 classifier (the auxiliary head), in
  the compute `dtype`."""
  num_classes: int
  width: int = 256
  dropout: float = 0.1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = ConvNormReLU(self.width, 3, dtype=self.dtype, name="conv")(x, train)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    return classifier(self.num_classes, dtype=self.dtype)(x)


@DECODERS.register("deeplabv3plus")
class DeepLabV3PlusDecoder(Decoder):
  """DeepLabV3+ with an FCN auxiliary head (module docstring).

  Attributes:
    width: channels of ASPP and of the decoder's 3x3 convs (256).
    low_level_width: channels of the projected low-level map (48).
    aspp_rates: dilations of the ASPP branches in map cells; None: the
      pixel-spacing rule (`aspp_rates`).
    dropout: dropout after the ASPP projection (0.1, as the TF reference).
    aux_head: add the FCN auxiliary head ('aux_logits').
    aux_width: channels of its 3x3 conv (256, mmsegmentation's).
    aux_dropout: its dropout (0.1).
    low_level_map: the map to fuse, by name; None: the rule above.
    aux_map: the map of the auxiliary head, by name; None: the rule above.
  """
  width: int = 256
  low_level_width: int = 48
  aspp_rates: Sequence[int] | None = None
  dropout: float = 0.1
  aux_head: bool = True
  aux_width: int = 256
  aux_dropout: float = 0.1
  low_level_map: str | None = None
  aux_map: str | None = None

  kind = "deeplabv3plus"

  def _select(self, strides: dict[str, int], backbone: str) -> dict[str, str]:
    deep = deepest_map(strides)
    if deep is None:
      raise missing_map(self.kind, "a dense map", strides, backbone)
    for key, value in (("low_level_map", self.low_level_map),
                       ("aux_map", self.aux_map)):
      if value is not None and value not in strides:
        raise missing_map(self.kind, f"the map {value!r} named by "
                          f"decoder_settings.{key}", strides, backbone,
                          "Name one of the maps above in "
                          f"decoder_settings.{key}.")
    low = self.low_level_map or low_level_map(strides, deep)
    if low is None:
      raise missing_map(
          self.kind, f"a low-level map at stride {_LOW_LEVEL_STRIDE} (or "
          f"another finer than its deepest map {deep!r}, stride "
          f"{strides[deep]})", strides, backbone,
          "Name one in decoder_settings.low_level_map, or use decoder 'conv'.")
    resolve_rates(self.aspp_rates, strides[deep])  # a bad setting fails early
    maps = {"deep": deep, "low_level": low}
    if self.aux_head:
      aux = self.aux_map or aux_map(strides, deep)
      if aux is None:
        raise missing_map(
            self.kind, f"an intermediate map before {deep!r} for its auxiliary "
            "head", strides, backbone,
            "Set decoder_settings.aux_head=False or name one in "
            "decoder_settings.aux_map.")
      maps["aux"] = aux
    return maps

  @nn.compact
  def __call__(self, features: Mapping[str, Array], strides: Mapping[str, int],
               image_hw: Sequence[int], train: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    maps = self._select(dict(strides), "the backbone")
    dtype = self.dtype
    deep = read_map(self.kind, features, maps["deep"], dtype)
    rates = resolve_rates(self.aspp_rates, int(strides[maps["deep"]]))
    x = ASPP(self.width, rates, self.dropout, dtype, name="aspp")(deep, train)
    low = read_map(self.kind, features, maps["low_level"], dtype)
    low = ConvNormReLU(self.low_level_width, 1, dtype=dtype,
                       name="low_level_proj")(low, train)
    x = jnp.concatenate([resize(x, low.shape[1:3]), low], axis=-1)
    x = ConvNormReLU(self.width, 3, dtype=dtype, name="fuse_0")(x, train)
    x = ConvNormReLU(self.width, 3, dtype=dtype, name="fuse_1")(x, train)
    logits = logits_at(classifier(self.num_classes, dtype=dtype)(x), image_hw)
    aux = {}
    if self.aux_head:
      mid = read_map(self.kind, features, maps["aux"], dtype)
      aux_logits = FCNHead(self.num_classes, self.aux_width, self.aux_dropout,
                           dtype, name="aux_head")(mid, train)
      aux["aux_logits"] = logits_at(aux_logits, image_hw)
    return logits, aux
