"""BagNets: ResNet-50-shaped classifiers with a small, exact receptive field.

A BagNet (Brendel & Bethge, "Approximating CNNs with Bag-of-local-Features
models works surprisingly well on ImageNet", ICLR 2019) is a ResNet-50 whose
convolutions are all unpadded and almost all 1x1: the stem is a 1x1 then a
3x3 conv, and a 3x3 kernel appears only in the first block of the first
stages. Every location of the last feature map therefore sees one q x q
input patch (q = 9, 17 or 33), and the classifier, applied at each location,
gives a map of local class evidence whose spatial mean is the image logit.

Valid padding makes a block's residual branch smaller than its input, so the
shortcut is cropped to match. Like the reference implementation
(wielandbrendel/bag-of-local-features-models) the crop keeps the top-left
corner: shortcut location i is input location stride * i, the first pixel of
the residual branch's window. Every grid is thus anchored at input pixel 0 and
output location (i, j) covers input rows [i * jump, i * jump + q) and columns
[j * jump, j * jump + q) exactly; `receptive_field` computes (q, jump, offset)
from the layer list, and the tests check it against gradients.

BatchNorms follow the reference: PyTorch's defaults (momentum 0.1, i.e.
Flax's 0.9; epsilon 1e-5) except the stem's, whose momentum is 0.001 (Flax
0.999). `head_init='torch'` initialises the classifier like the reference's
`nn.Linear`; the default keeps Flax's Dense init.

Every convolution is `layers.Conv` (faster formulations on CPU, see
eo_jax/backend.py), which model summaries follow. features: 'stem',
'stage_1'..'stage_4' (the dense maps; `dense_maps()` gives their strides),
'pre_logits' (pooled, float32) and, with a head, 'local_logits' (B, h, w, K).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.errors import ConfigTypeError, ConfigValueError
from eo_jax.models import common
from eo_jax.models.registry import MODELS

BLOCKS = (3, 4, 6, 3)
STRIDES = (2, 2, 2, 1)
EXPANSION = 4

# Number of leading blocks per stage that get a 3x3 kernel.
VARIANTS = {
    "bagnet9": (1, 1, 0, 0),
    "bagnet17": (1, 1, 1, 0),
    "bagnet33": (1, 1, 1, 1),
}

# The reference's stem BatchNorm: PyTorch momentum 0.001, so its running
# statistics move by 0.001 of the batch's per step.
STEM_BN_MOMENTUM = 0.999

_STEM_PARTS = ("stem_conv1", "stem_conv2", "stem_bn")


class ReceptiveField(NamedTuple):
  """Where an output location looks, in input pixels.

  Output location i (along either axis) covers input pixels
  [offset + i * jump, offset + i * jump + size).
  """
  size: int
  jump: int
  offset: int

  def output_size(self, input_size: int) -> int:
    """Number of output locations along an axis of `input_size` pixels."""
    if input_size < self.offset + self.size:
      return 0
    return (input_size - self.offset - self.size) // self.jump + 1


_conv = functools.partial(common.conv, padded=False)


def _check_arch(kernel3: Sequence[int], strides: Sequence[int],
                blocks: Sequence[int]) -> None:
  if not len(kernel3) == len(strides) == len(blocks):
    raise ConfigValueError(
        f"BagNet kernel3 {tuple(kernel3)}, strides {tuple(strides)} and blocks "
        f"{tuple(blocks)} must have one entry per stage.")
  for stage, (k3, n) in enumerate(zip(kernel3, blocks)):
    if not 0 <= k3 <= n:
      raise ConfigValueError(
          f"BagNet kernel3[{stage}] = {k3} must be between 0 and the number "
          f"of blocks in that stage ({n}); it counts the leading blocks with a "
          "3x3 kernel.")
  if any(s < 1 for s in strides) or any(n < 1 for n in blocks):
    raise ConfigValueError(f"BagNet strides {tuple(strides)} and blocks "
                     f"{tuple(blocks)} must be positive.")


def _layers(kernel3: Sequence[int], strides: Sequence[int],
            blocks: Sequence[int]) -> list[tuple[int, int]]:
  """(kernel, stride) of each conv on the residual path, input to output."""
  convs = [(1, 1), (3, 1)]  # stem
  for k3, stride, n in zip(kernel3, strides, blocks):
    for j in range(n):
      kernel = 3 if j < k3 else 1
      convs += [(1, 1), (kernel, stride if j == 0 else 1), (1, 1)]
  return convs


def receptive_field(kernel3: Sequence[int], strides: Sequence[int] = STRIDES,
                    blocks: Sequence[int] = BLOCKS) -> ReceptiveField:
  """Receptive field size, jump and offset of a BagNet's output locations.

  Composes the convolutions of the residual path (the shortcuts see a subset
  of the same window, see the module docstring): each k x k conv widens the
  field by (k - 1) input pixels per step of the grid it reads, each stride
  multiplies that step. No layer pads, so location 0's window starts at
  pixel 0 and the offset is 0.
  """
  _check_arch(kernel3, strides, blocks)
  size, jump = 1, 1
  for kernel, stride in _layers(kernel3, strides, blocks):
    size += (kernel - 1) * jump
    jump *= stride
  return ReceptiveField(size=size, jump=jump, offset=0)


class Bottleneck(nn.Module):
  """1x1 -> kxk (strided, unpadded) -> 1x1 bottleneck; cropped shortcut."""
  features: int
  kernel: int = 1
  stride: int = 1
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(_conv, dtype=self.dtype)
    norm = functools.partial(common.batch_norm, train, self.dtype)
    last_scale = common.last_bn_scale_init(self.zero_init_last_bn)
    out_features = self.features * EXPANSION

    y = nn.relu(norm(name="bn1")(conv(self.features, 1, name="conv1")(x)))
    y = conv(self.features, self.kernel, self.stride, name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv(out_features, 1, name="conv3")(y)
    y = norm(scale_init=last_scale, name="bn3")(y)

    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = conv(out_features, 1, self.stride, name="proj_conv")(x)
      shortcut = norm(name="proj_bn")(shortcut)
    # Keep the top-left corner: shortcut location i is the first pixel of the
    # residual window of location i (see the module docstring).
    shortcut = shortcut[:, :y.shape[1], :y.shape[2]]
    return nn.relu(y + shortcut)


class BagNet(nn.Module):
  """A BagNet classifier (or backbone when `num_classes == 0`).

  Attributes:
    num_classes: classes of the per-location head; 0 -> no head, the output
      is the spatially pooled last feature map.
    kernel3: per stage, how many leading blocks get a 3x3 kernel.
    strides: per-stage stride of the first block.
    blocks: bottleneck blocks per stage.
    width: base width (64 in the paper; e.g. 16 for small data). Stage i has
      width * 2**(i-1) bottleneck channels and 4x that many outputs.
    bands: the input bands; the image must have len(bands) channels (an empty
      tuple skips the check).
    zero_init_residual: start each block's last BN scale at zero, so every
      block begins as the identity.
    head_init: 'default' (Flax's Dense init: LeCun normal, zero bias) or
      'torch' (the reference's `nn.Linear`: kernel and bias
      U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    dtype: compute dtype; parameters stay float32, and the pooled features
      and logits are float32.
  """
  num_classes: int
  kernel3: Sequence[int] = VARIANTS["bagnet33"]
  strides: Sequence[int] = STRIDES
  blocks: Sequence[int] = BLOCKS
  width: int = 64
  bands: tuple[Band, ...] = ()
  zero_init_residual: bool = False
  head_init: str = "default"
  dtype: Any = jnp.float32

  @property
  def rf(self) -> ReceptiveField:
    """Receptive field (size q, jump, offset) of the output locations."""
    return receptive_field(self.kernel3, self.strides, self.blocks)

  def dense_maps(self) -> dict[str, int]:
    """'stem' and 'stage_<i>' with their strides in input pixels.

    Unpadded convolutions make each map smaller than the image / stride:
    a map of stride s whose locations see r pixels has
    (size - r) // s + 1 locations along an axis of `size` pixels.
    """
    maps, jump = {"stem": 1}, 1
    for i, stride in enumerate(self.strides):
      jump *= stride
      maps[f"stage_{i + 1}"] = jump
    return maps

  def layer_id(self, path: str) -> int:
    """Stem 0, stage i -> i, head and anything else `num_layers()`."""
    return common.stage_layer_id(path, len(self.blocks), _STEM_PARTS)

  def input_kernels(self) -> tuple[str, ...]:
    """The parameters with a band axis (-2): the first (1x1) stem conv's kernel."""
    return ("stem_conv1/kernel",)

  def num_layers(self) -> int:
    """Stages + 1: the depth of the head, above the last stage."""
    return len(self.blocks) + 1

  @nn.compact
  def __call__(self, image: jax.Array, train: bool = False,
               mask: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    q = self.rf.size
    common.check_image(
        "BagNet", image, mask, self.bands, min_size=q,
        min_size_fix=f"its receptive field is {q} pixels. Raise "
        "config.input.image_size or pick a BagNet with a smaller field.")
    features = {}
    x = jnp.asarray(image, self.dtype)
    # As in the reference, no BatchNorm between the two stem convolutions.
    x = _conv(self.width, 1, dtype=self.dtype, name="stem_conv1")(x)
    x = _conv(self.width, 3, dtype=self.dtype, name="stem_conv2")(x)
    x = common.batch_norm(train, self.dtype, momentum=STEM_BN_MOMENTUM,
                          name="stem_bn")(x)
    x = nn.relu(x)
    features["stem"] = x

    for i, (k3, stride, n) in enumerate(
        zip(self.kernel3, self.strides, self.blocks)):
      for j in range(n):
        x = Bottleneck(self.width * 2**i, kernel=3 if j < k3 else 1,
                       stride=stride if j == 0 else 1,
                       zero_init_last_bn=self.zero_init_residual,
                       dtype=self.dtype, name=f"stage_{i + 1}_block_{j}")(
                           x, train)
      features[f"stage_{i + 1}"] = x

    features["pre_logits"] = pooled = jnp.mean(
        x.astype(jnp.float32), axis=(1, 2))
    if not self.num_classes:
      return pooled, features
    # The head is linear, so averaging local logits equals classifying the
    # pooled features; computing the map first exposes the local evidence.
    local = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                     **common.dense_inits(self.head_init, x.shape[-1]))(x)
    features["local_logits"] = local = local.astype(jnp.float32)
    return jnp.mean(local, axis=(1, 2)), features


@MODELS.register("bagnet")
def bagnet(*, bands: Sequence[Band] = (), num_classes: int,
           kernel3: Sequence[int] = VARIANTS["bagnet33"],
           strides: Sequence[int] = STRIDES, blocks: Sequence[int] = BLOCKS,
           width: int = 64, zero_init_residual: bool = False,
           head_init: str = "default", dtype: Any = "float32") -> BagNet:
  """A BagNet with any per-stage 3x3 counts, e.g. kernel3=(1, 1, 0, 0).

  `blocks` other than (3, 4, 6, 3) keep the receptive field (it depends on
  kernel3 and strides only) and suit tiny test configs.
  """
  kernel3, strides, blocks = tuple(kernel3), tuple(strides), tuple(blocks)
  _check_arch(kernel3, strides, blocks)
  common.dense_inits(head_init, 1)  # a config typo fails here, not at init
  return BagNet(num_classes=num_classes, kernel3=kernel3, strides=strides,
                blocks=blocks, width=width, bands=tuple(bands),
                zero_init_residual=zero_init_residual, head_init=head_init,
                dtype=jnp.dtype(dtype))


def _variant(name: str):
  def factory(*, bands: Sequence[Band] = (), num_classes: int,
              **kwargs) -> BagNet:
    if "kernel3" in kwargs:
      raise ConfigTypeError(f"{name} fixes kernel3={VARIANTS[name]}; use the "
                      "generic 'bagnet' model to choose it.")
    return bagnet(bands=bands, num_classes=num_classes,
                  kernel3=VARIANTS[name], **kwargs)
  factory.__name__ = name
  factory.__doc__ = (f"BagNet-{receptive_field(VARIANTS[name]).size}: "
                     f"3x3 blocks per stage {VARIANTS[name]}; other fields "
                     "as for 'bagnet'.")
  return MODELS.register(name)(factory)


bagnet9 = _variant("bagnet9")
bagnet17 = _variant("bagnet17")
bagnet33 = _variant("bagnet33")

# (q, jump, offset) of each named variant, without building a model.
RECEPTIVE_FIELDS = {name: receptive_field(k3) for name, k3 in VARIANTS.items()}
