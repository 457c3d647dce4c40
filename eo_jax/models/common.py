"""Pieces the CNNs share: input checks, BatchNorm and convolution factories,
PyTorch-style initialisers, and small ops used by heads and objectives."""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.data.bands import Band
from eo_jax.errors import ConfigValueError, InputShapeError
from eo_jax.models import layers

Array = jax.Array

# He-normal on fan-out, as torchvision and the BagNet reference initialise
# their convolutions: N(0, 2 / (k * k * out_channels)).
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's BatchNorm momentum 0.1 updates the running statistics by 0.1 of
# the batch's; Flax's momentum is the weight of the old value.
TORCH_BN_MOMENTUM = 0.9

HEAD_INITS = ("default", "torch")


def check_image(model: str, image: Array, mask: Any,
                bands: Sequence[Band], *, min_size: int = 1,
                min_size_fix: str = "set config.input.image_size.") -> None:
  """Raises a ValueError saying what to change when a CNN cannot take `image`.

  Args:
    model: the model's name, for the messages ('ResNet').
    image: the input, which must be (B, H, W, C).
    mask: must be None: token masks are for token backbones.
    bands: the bands the model was built for; C must match (an empty tuple
      skips the check).
    min_size: the smallest height and width the model accepts.
    min_size_fix: what to do about a too small image, ending the message.
  """
  if mask is not None:
    raise InputShapeError(f"{model} does not take a token mask; call it with "
                     "mask=None (masking is for ViT objectives such as MAE).")
  if image.ndim != 4:
    raise InputShapeError(f"{model} expects (B, H, W, C) images, got shape "
                     f"{image.shape}.")
  if bands and image.shape[-1] != len(bands):
    raise InputShapeError(
        f"{model} was built for {len(bands)} bands but the image has "
        f"{image.shape[-1]} channels; build the model with the dataset's "
        "bands (config.data.bands).")
  if min(image.shape[1:3]) < min_size:
    raise InputShapeError(
        f"{model} needs images of at least {min_size}x{min_size} pixels, got "
        f"{image.shape[1]}x{image.shape[2]}; {min_size_fix}")


def batch_norm(train: bool, dtype: Any, *, momentum: float = TORCH_BN_MOMENTUM,
               **kwargs: Any) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1 there, epsilon 1e-5).

  PyTorch's defaults let imported weights and PyTorch training recipes carry
  over unchanged. `momentum` is Flax's (1 - PyTorch's).
  """
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=1e-5, dtype=dtype, **kwargs)


def conv(features: int, kernel: int, stride: int = 1, *, dtype: Any,
         name: str, padded: bool = True, dilation: int = 1) -> layers.Conv:
  """A square bias-free `layers.Conv` with He fan-out init.

  Args:
    features: output channels.
    kernel: kernel side.
    stride: stride along both axes.
    dtype: compute dtype.
    name: submodule name.
    padded: symmetric zero padding of dilation * (kernel - 1) // 2 per side
      (PyTorch's `padding=dilation` for a 3x3 kernel, so outputs match
      PyTorch's); False is 'VALID'.
    dilation: kernel dilation along both axes.
  """
  padding: Any = "VALID"
  if padded:
    pad = dilation * (kernel - 1) // 2
    padding = ((pad, pad), (pad, pad))
  return layers.Conv(features, (kernel, kernel), strides=(stride, stride),
                     padding=padding, kernel_dilation=(dilation, dilation),
                     use_bias=False, dtype=dtype, kernel_init=he_fan_out,
                     name=name)


def last_bn_scale_init(zero: bool) -> Callable[..., Array]:
  """Init of a residual block's last BN scale: zeros start it as identity."""
  return nn.initializers.zeros if zero else nn.initializers.ones


def torch_uniform(fan_in: int) -> Callable[..., Array]:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's `nn.Linear` default.

  PyTorch writes the weight's as kaiming_uniform with a = sqrt(5), which has
  this bound, and draws the bias from the same interval.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32
           ) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dense_inits(kind: str, fan_in: int) -> dict[str, Callable[..., Array]]:
  """`nn.Dense` init keyword arguments for a classifier on `fan_in` inputs.

  Args:
    kind: 'default' (Flax's: LeCun-normal kernel, zero bias; {} here) or
      'torch' (PyTorch `nn.Linear`: kernel and bias both `torch_uniform`).
    fan_in: the classifier's input width.
  """
  if kind == "default":
    return {}
  if kind != "torch":
    raise ConfigValueError(f"Unknown head_init {kind!r}; config.model.head_init must "
                     f"be one of {HEAD_INITS}.")
  return dict(kernel_init=torch_uniform(fan_in),
              bias_init=torch_uniform(fan_in))


def stage_layer_id(path: str, num_stages: int,
                   stem_names: Sequence[str]) -> int:
  """Depth of a CNN parameter for layer-wise decay, by stage.

  The stem (parameters under one of `stem_names`) -> 0, 'stage_<i>...' -> i,
  anything else (the head, objective heads) -> num_stages + 1. As for the
  ViT, the first '/'-separated component that names a part decides, so the
  path may carry the model's own name ('encoder/stage_2_block_0/...').
  """
  for part in path.split("/"):
    if part in stem_names:
      return 0
    m = re.match(r"stage_(\d+)(_|$)", part)
    if m:
      return int(m.group(1))
  return num_stages + 1


def l2_normalize(x: Array, axis: int = -1, *, eps: float) -> Array:
  """x / max(||x||, eps) along `axis`, as torch's `F.normalize(x, dim=axis)`.

  `eps` has no default on purpose: DINO heads use torch's 1e-12, KoLeo
  DINOv2's 1e-8; each caller states its own.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)
