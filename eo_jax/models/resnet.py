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

`output_stride` (8 or 16) gives the dilated ResNet of DeepLabV3 for dense
prediction: a stage whose stride-2 block would take the maps past that
stride keeps stride 1 (its projection shortcut too) and dilates its 3x3
convolutions instead, as torchvision's `replace_stride_with_dilation` does.
The conv that would have been strided keeps the dilation in force before the
stage, and every 3x3 conv after it gets twice that: each then samples the
same input pixels as in the undilated network, so pretrained weights keep
their meaning. Output stride 16: stage 4 dilation 2 (its first block's
stride conv 1); output stride 8: stage 3 dilation 2 (1), stage 4 dilation 4
(2). Parameters are the same for every output stride.

Every convolution is `layers.Conv` (faster formulations on CPU, see
eo_jax/backend.py).

features: 'stem' (after the max pool), 'stage_1'... 'stage_<num_stages>'
(the dense maps, with the strides `dense_maps()` gives), and 'pre_logits'
(the pooled vector, float32).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.errors import ConfigValueError
from eo_jax.models import common, heads, layers
from eo_jax.models.registry import MODELS

BLOCK_KINDS = ("basic", "bottleneck")

# Parameterless stem parts included: the first path component that names
# one of these puts a parameter at depth 0.
_STEM_PARTS = ("stem_conv", "stem_bn", "stem_pool")


class StageGeometry(NamedTuple):
  """How one stage samples its input.

  Attributes:
    stride: stride of the stage's first block (its strided conv and
      projection); 1 where a dilation replaces it.
    first_dilation: dilation of the first block's strided 3x3 conv.
    dilation: dilation of every later 3x3 conv of the stage.
    output_stride: the stage's output stride in input pixels.
  """
  stride: int
  first_dilation: int
  dilation: int
  output_stride: int


def stem_stride(low_res_stem: bool) -> int:
  """Stride of the stem's output: 7x7/2 conv and 3x3/2 pool, or none."""
  return 1 if low_res_stem else 4


def stage_geometry(num_stages: int, low_res_stem: bool = False,
                   output_stride: int | None = None) -> list[StageGeometry]:
  """Strides and dilations of the stages (see the module docstring).

  Args:
    num_stages: stages kept.
    low_res_stem: the stride-1 stem.
    output_stride: the largest stride any map may reach; None: no limit.

  Raises:
    ValueError: `output_stride` is not a power of two at least the stem's.
  """
  current = stem_stride(low_res_stem)
  if output_stride is not None and (
      output_stride < current or output_stride & (output_stride - 1)):
    raise ConfigValueError(
        f"output_stride={output_stride} but the ResNet needs a power of two "
        f"of at least its stem's stride ({current}); use None, 8 or 16.")
  dilation, geometry = 1, []
  for i in range(num_stages):
    stride, first = (2 if i > 0 else 1), dilation
    if output_stride is not None and current * stride > output_stride:
      dilation *= stride
      stride = 1
    current *= stride
    geometry.append(StageGeometry(stride, first, dilation, current))
  return geometry


class _Block(nn.Module):
  """What both residual blocks take.

  Attributes:
    features: width of the block's 3x3 conv (its output is `expansion` times
      that).
    stride: stride of the block's first 3x3 conv and of its projection.
    zero_init_last_bn: start the last BN scale at zero (identity block).
    dtype: compute dtype.
    first_dilation: dilation of the (would-be) strided 3x3 conv.
    dilation: dilation of the 3x3 convs after it.
  """
  features: int
  stride: int = 1
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  first_dilation: int = 1
  dilation: int = 1

  expansion = 1


class BasicBlock(_Block):
  """Two 3x3 convolutions with an identity or projection shortcut."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(common.conv, dtype=self.dtype)
    norm = functools.partial(common.batch_norm, train, self.dtype)
    y = conv(self.features, 3, self.stride, dilation=self.first_dilation,
             name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = conv(self.features, 3, dilation=self.dilation, name="conv2")(y)
    y = norm(scale_init=common.last_bn_scale_init(self.zero_init_last_bn),
             name="bn2")(y)
    return _add_shortcut(self, x, y, train)


class Bottleneck(_Block):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(common.conv, dtype=self.dtype)
    norm = functools.partial(common.batch_norm, train, self.dtype)
    y = nn.relu(norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
    # The only 3x3 conv is the strided one.
    y = conv(self.features, 3, self.stride, dilation=self.first_dilation,
             name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(self.features * self.expansion, 1, name="conv3")(y)
    y = norm(scale_init=common.last_bn_scale_init(self.zero_init_last_bn),
             name="bn3")(y)
    return _add_shortcut(self, x, y, train)


def _add_shortcut(block: _Block, x: jax.Array, y: jax.Array,
                  train: bool) -> jax.Array:
  """relu(residual branch `y` + the shortcut of the block's input `x`).

  The shortcut is the identity, or a strided 1x1 conv + BN when the shape
  changes. Called inside the block's compact `__call__`, so the submodules
  it creates ('proj_conv', 'proj_bn') belong to that block.
  """
  features = y.shape[-1]
  if block.stride != 1 or x.shape[-1] != features:
    x = common.conv(features, 1, block.stride, dtype=block.dtype,
                    name="proj_conv")(x)
    x = common.batch_norm(train, block.dtype, name="proj_bn")(x)
  return nn.relu(y + x)


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
    output_stride: None (strides 4, 8, 16, 32), or 8 or 16: the stages past
      it are dilated instead of strided (module docstring). Any power of two
      at least the stem's stride is accepted.
    frozen_stages: -1 (default) trains everything; 0 freezes the stem; n > 0
      the stem and stages 1..n. Frozen parts run in inference mode (their
      BatchNorm layers normalise with, and never update, the running
      statistics) and pass no gradient back, as a frozen backbone does in
      transfer learning; pair it with `config.optim.frozen` on the same
      parameters so the optimiser (weight decay) leaves them alone too.
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
  output_stride: int | None = None
  frozen_stages: int = -1
  dtype: Any = jnp.float32

  def dense_maps(self) -> dict[str, int]:
    """'stem' and 'stage_<i>' with their strides in input pixels."""
    return _dense_maps(self)

  def layer_id(self, path: str) -> int:
    """Stem 0, stage i -> i, head and anything else `num_layers()`."""
    return common.stage_layer_id(path, _kept_stages(self), _STEM_PARTS)

  def input_kernels(self) -> tuple[str, ...]:
    """The parameters with a band axis (-2): the stem convolution's kernel."""
    return ("stem_conv/kernel",)

  def num_layers(self) -> int:
    """Kept stages + 1: the depth of the head, above the last stage."""
    return _kept_stages(self) + 1

  def _check(self, image: jax.Array, mask: Any) -> None:
    common.check_image("ResNet", image, mask, self.bands)
    if self.block not in _BLOCKS:
      raise ConfigValueError(f"Unknown ResNet block {self.block!r}; "
                       f"config.model.block must be one of {BLOCK_KINDS}.")
    if not -1 <= self.frozen_stages <= _kept_stages(self):
      raise ConfigValueError(
          f"frozen_stages={self.frozen_stages} but the ResNet keeps "
          f"{_kept_stages(self)} stages; use -1 (nothing frozen), 0 (the stem) "
          f"to {_kept_stages(self)} (the whole backbone).")
    if not 0 <= self.num_stages <= len(self.stage_sizes):
      raise ConfigValueError(
          f"num_stages={self.num_stages} but the ResNet has "
          f"{len(self.stage_sizes)} stages; use 0 (all) to "
          f"{len(self.stage_sizes)}.")

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False,
               mask: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    self._check(image, mask)
    geometry = _geometry(self)
    features = {}
    x = jnp.asarray(image, self.dtype)
    kernel, stride = (3, 1) if self.low_res_stem else (7, 2)
    # Stage 0 is the stem; stages <= frozen_stages run frozen.
    part_train = lambda stage: train and stage > self.frozen_stages
    x = common.conv(self.width, kernel, stride, dtype=self.dtype,
                    name="stem_conv")(x)
    x = nn.relu(common.batch_norm(part_train(0), self.dtype, name="stem_bn")(x))
    if not self.low_res_stem:
      x = layers.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), name="stem_pool")(x)
    if self.frozen_stages == 0:
      x = jax.lax.stop_gradient(x)
    features["stem"] = x

    block_cls = _BLOCKS[self.block]
    for i, (size, stage) in enumerate(zip(self.stage_sizes, geometry)):
      for j in range(size):
        x = block_cls(self.width * 2**i, stage.stride if j == 0 else 1,
                      zero_init_last_bn=self.zero_init_residual,
                      dtype=self.dtype,
                      first_dilation=(stage.first_dilation if j == 0
                                      else stage.dilation),
                      dilation=stage.dilation,
                      name=f"stage_{i + 1}_block_{j}")(x, part_train(i + 1))
      if i + 1 == self.frozen_stages:
        # Everything below is frozen: no gradient needs to reach it.
        x = jax.lax.stop_gradient(x)
      features[f"stage_{i + 1}"] = x

    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    features["pre_logits"] = x
    if self.num_classes == 0:
      return x, features
    head = heads.make_head(self.head, self.num_classes, hidden=self.head_hidden,
                           dropout=self.head_dropout)
    return head(x, train=train), features


# Functions rather than ResNet methods: `__call__` uses them, and Flax
# records the return values of module methods under `capture_intermediates`
# and the summary's interceptor.
def _kept_stages(model: ResNet) -> int:
  return model.num_stages or len(model.stage_sizes)


def _geometry(model: ResNet) -> list[StageGeometry]:
  return stage_geometry(_kept_stages(model), model.low_res_stem,
                        model.output_stride)


def _dense_maps(model: ResNet) -> dict[str, int]:
  maps = {"stem": stem_stride(model.low_res_stem)}
  for i, stage in enumerate(_geometry(model)):
    maps[f"stage_{i + 1}"] = stage.output_stride
  return maps


def _factory(stage_sizes: Sequence[int], block: str, doc: str):
  def build(*, bands: Sequence[Band], num_classes: int, **kwargs) -> ResNet:
    fixed = sorted({"stage_sizes", "block"} & set(kwargs))
    if fixed:
      raise ConfigValueError(f"This named ResNet fixes {fixed}; remove them from "
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
    raise ConfigValueError(f"resnet18_truncated fixes {fixed}; remove them from "
                     "config.model or use config.model.name = 'resnet'.")
  defaults = dict(num_stages=2, head="mlp", head_hidden=1024, head_dropout=0.2)
  defaults.update(kwargs)
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2),
                block="basic", bands=tuple(bands), **defaults)
