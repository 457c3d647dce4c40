"""ResNets (He et al. 2016) in the torchvision layout, for any band count.

Layout and parameter counts follow torchvision's resnet18/34/50: a 7x7/2
stem convolution (padding 3) with BatchNorm and ReLU, a 3x3/2 max pool
(padding 1), four stages of basic or bottleneck blocks (the stride sits on
the bottleneck's 3x3 conv, "ResNet v1.5"), a 1x1 projection shortcut when the
shape changes, global average pooling and the classifier. Padding is explicit
and symmetric like PyTorch's, so imported torchvision weights give the same
outputs. Variants for Earth observation patches: `low_res_stem` (3x3/1 conv,
no pool, for 32-64 px inputs), a base `width`, truncation after `num_stages`
stages and an MLP head.

Every convolution is `layers.Conv`, which computes small maps (<= 4x4) as an
im2col matmul; XLA's CPU convolution is very slow there.

features: 'stem' (after the max pool), 'stage_1'... 'stage_<num_stages>', and
'pre_logits' (the pooled vector, float32).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.models import heads, layers
from eo_jax.models.registry import MODELS

BLOCK_KINDS = ("basic", "bottleneck")

# torchvision initialises convolutions with He-normal on fan-out.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _norm(train: bool, dtype: Any, **kwargs) -> nn.BatchNorm:
  # PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here) so that
  # imported weights and PyTorch training recipes carry over unchanged.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, **kwargs)


def _conv(features: int, kernel: int, stride: int = 1, *, dtype: Any,
          name: str) -> layers.Conv:
  pad = (kernel - 1) // 2
  return layers.Conv(features, (kernel, kernel), strides=(stride, stride),
                     padding=((pad, pad), (pad, pad)), use_bias=False,
                     dtype=dtype, kernel_init=_conv_init, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity or projection shortcut."""
  features: int
  stride: int = 1
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype)
    last_scale = (nn.initializers.zeros if self.zero_init_last_bn
                  else nn.initializers.ones)
    y = conv(self.features, 3, self.stride, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, name="bn1")(y))
    y = conv(self.features, 3, name="conv2")(y)
    y = _norm(train, self.dtype, scale_init=last_scale, name="bn2")(y)
    return nn.relu(y + _projection(x, self.features, self.stride, train,
                                   self.dtype))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut."""
  features: int
  stride: int = 1
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype)
    last_scale = (nn.initializers.zeros if self.zero_init_last_bn
                  else nn.initializers.ones)
    y = conv(self.features, 1, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, name="bn1")(y))
    y = conv(self.features, 3, self.stride, name="conv2")(y)
    y = nn.relu(_norm(train, self.dtype, name="bn2")(y))
    y = conv(self.features * self.expansion, 1, name="conv3")(y)
    y = _norm(train, self.dtype, scale_init=last_scale, name="bn3")(y)
    return nn.relu(y + _projection(x, self.features * self.expansion,
                                   self.stride, train, self.dtype))


def _projection(x: jax.Array, features: int, stride: int, train: bool,
                dtype: Any) -> jax.Array:
  """Identity, or a strided 1x1 conv + BN when the shape changes.

  Called inside a block's compact `__call__`, so the submodules it creates
  ('proj_conv', 'proj_bn') belong to that block.
  """
  if stride == 1 and x.shape[-1] == features:
    return x
  x = _conv(features, 1, stride, dtype=dtype, name="proj_conv")(x)
  return _norm(train, dtype, name="proj_bn")(x)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """A ResNet backbone with an optional classifier head.

  Attributes:
    num_classes: logits; 0 returns the pooled features as output.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: 'basic' or 'bottleneck'.
    bands: the input bands; the image must have len(bands) channels (an empty
      tuple skips the check).
    width: channels of the stem and of the first stage's blocks; stage i has
      width * 2**(i-1) (times 4 after a bottleneck).
    low_res_stem: 3x3 stride-1 stem conv without max pool (32-64 px inputs).
    num_stages: keep only the first `num_stages` stages (0 keeps all).
    head: 'linear' or 'mlp'.
    head_hidden: hidden width of the MLP head.
    head_dropout: dropout in the head; None -> 0.2 for 'mlp', 0 for 'linear'.
    zero_init_residual: start each block's last BN scale at zero, so every
      block begins as the identity (Goyal et al. 2017).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32 and the
      pooled features and logits are float32.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  bands: tuple[Band, ...] = ()
  width: int = 64
  low_res_stem: bool = False
  num_stages: int = 0
  head: str = "linear"
  head_hidden: int = 1024
  head_dropout: float | None = None
  zero_init_residual: bool = False
  dtype: Any = jnp.float32

  def _check(self, image: jax.Array, mask: Any) -> None:
    if mask is not None:
      raise ValueError("ResNet does not take a token mask; call it with "
                       "mask=None (masking is for ViT objectives such as MAE).")
    if image.ndim != 4:
      raise ValueError(f"ResNet expects (B, H, W, C) images, got shape "
                       f"{image.shape}.")
    if self.bands and image.shape[-1] != len(self.bands):
      raise ValueError(
          f"ResNet was built for {len(self.bands)} bands but the image has "
          f"{image.shape[-1]} channels; build the model with the dataset's "
          "bands (config.data.bands).")
    if self.block not in _BLOCKS:
      raise ValueError(f"Unknown ResNet block {self.block!r}; "
                       f"config.model.block must be one of {BLOCK_KINDS}.")
    if not 0 <= self.num_stages <= len(self.stage_sizes):
      raise ValueError(
          f"num_stages={self.num_stages} but the ResNet has "
          f"{len(self.stage_sizes)} stages; use 0 (all) to "
          f"{len(self.stage_sizes)}.")

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False,
               mask: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    self._check(image, mask)
    features = {}
    x = jnp.asarray(image, self.dtype)
    if self.low_res_stem:
      x = _conv(self.width, 3, 1, dtype=self.dtype, name="stem_conv")(x)
      x = nn.relu(_norm(train, self.dtype, name="stem_bn")(x))
    else:
      x = _conv(self.width, 7, 2, dtype=self.dtype, name="stem_conv")(x)
      x = nn.relu(_norm(train, self.dtype, name="stem_bn")(x))
      x = layers.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), name="stem_pool")(x)
    features["stem"] = x

    block_cls = _BLOCKS[self.block]
    num_stages = self.num_stages or len(self.stage_sizes)
    for i, size in enumerate(self.stage_sizes[:num_stages]):
      for j in range(size):
        stride = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, stride,
                      zero_init_last_bn=self.zero_init_residual,
                      dtype=self.dtype, name=f"stage_{i + 1}_block_{j}")(
                          x, train)
      features[f"stage_{i + 1}"] = x

    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features["pre_logits"] = x
    if self.num_classes == 0:
      return x, features
    head = heads.make_head(self.head, self.num_classes, hidden=self.head_hidden,
                           dropout=self.head_dropout)
    return head(x, train=train), features


def _factory(stage_sizes: Sequence[int], block: str, doc: str):
  def build(*, bands: Sequence[Band], num_classes: int, **kwargs) -> ResNet:
    fixed = sorted({"stage_sizes", "block"} & set(kwargs))
    if fixed:
      raise ValueError(f"This named ResNet fixes {fixed}; remove them from "
                       "config.model or use config.model.name = 'resnet'.")
    return ResNet(num_classes=num_classes, stage_sizes=tuple(stage_sizes),
                  block=block, bands=tuple(bands), **kwargs)
  build.__doc__ = doc
  return build


resnet18 = MODELS.register("resnet18")(_factory(
    (2, 2, 2, 2), "basic",
    "ResNet-18: 11,689,512 params for RGB, 1000 classes."))
resnet34 = MODELS.register("resnet34")(_factory(
    (3, 4, 6, 3), "basic",
    "ResNet-34: 21,797,672 params for RGB, 1000 classes."))
resnet50 = MODELS.register("resnet50")(_factory(
    (3, 4, 6, 3), "bottleneck",
    "ResNet-50: 25,557,032 params for RGB, 1000 classes."))


@MODELS.register("resnet")
def resnet(*, bands: Sequence[Band], num_classes: int,
           stage_sizes: Sequence[int] = (2, 2, 2, 2), block: str = "basic",
           **kwargs) -> ResNet:
  """A ResNet with any `stage_sizes` and `block` ('basic' | 'bottleneck')."""
  return ResNet(num_classes=num_classes, stage_sizes=tuple(stage_sizes),
                block=block, bands=tuple(bands), **kwargs)


@MODELS.register("resnet18_truncated")
def resnet18_truncated(*, bands: Sequence[Band], num_classes: int,
                       **kwargs) -> ResNet:
  """The seed study's backbone: ResNet-18's stem and first two stages + MLP.

  Truncating after stage 2 keeps torchvision's widths (64, 128), so ImageNet
  ResNet-18 weights can initialise everything but the first conv's band
  axis and the head. Meant for 64x64 patches resized to 128x128: stage 2
  gives a 16x16x128 map whose cells see 99x99 px.
  With 13 bands and 10 classes it has 856,778 parameters: stem 40,896
  (7x7x13x64 conv + BN), stage 1 147,968, stage 2 525,568, MLP head 142,346
  (128->1024, ReLU, dropout 0.2, 1024->10). Any ResNet field may be
  overridden; the defaults are these.
  """
  fixed = sorted({"stage_sizes", "block"} & set(kwargs))
  if fixed:
    raise ValueError(f"resnet18_truncated fixes {fixed}; remove them from "
                     "config.model or use config.model.name = 'resnet'.")
  defaults = dict(num_stages=2, head="mlp", head_hidden=1024, head_dropout=0.2)
  defaults.update(kwargs)
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2),
                block="basic", bands=tuple(bands), **defaults)
