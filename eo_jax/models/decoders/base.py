"""What every segmentation decoder shares: the registry, the map choice by
name and stride, and small layers.

A decoder is a Flax module registered in `DECODERS`, built as
`DECODERS.get(name)(num_classes=K, **settings)` and called as

  logits, aux = decoder(features, strides, image_hw, train)

* `features`: the backbone's features dict (eo_jax/models/backbone.py);
* `strides`: the backbone's `dense_maps()`, {map name: stride in pixels};
* `image_hw`: (H, W), the size the logits must have (the label's);
* `logits`: (B, H, W, K) float32; `aux`: {} or {'aux_logits': (B, H, W, K)}.

Decoders pick their inputs from the contract alone, never from a model's
class, so any backbone that names its maps and strides plugs in:

* a token backbone (ViT) has 'patch_tokens' (the last block's tokens after
  the final norm) and one 'grid_<i>' per block, all at the patch stride;
* a CNN has a pyramid ('stem', 'stage_1', ...), in input-to-output order,
  with strides that grow (or stay, past a ResNet's output stride).

`deepest_map` is 'patch_tokens' when there is one, else the last map of
the largest stride. A decoder's `select_maps(strides)` returns the maps it
will read ({role: map name}) or raises a `ConfigValueError` naming the
decoder, what it is missing and the maps the backbone has; the segmentation
model calls it when it is built, and the decoder again when it is called.

Mixed precision: every decoder has a compute `dtype` (float32 unless set;
the 'segmentation' factory sets it from the backbone's, see
eo_jax/models/segmentation.py). Its convolutions, dense layers and
attention run in that dtype on parameters that stay float32 (Flax casts
them at the call), and the maps it reads are cast to it. What rounding
would spoil stays float32: BatchNorm and LayerNorm compute their
statistics and normalise in float32 (Flax promotes them; only their output
is cast to `dtype`), bilinear resizes interpolate in float32 (`resize`),
and the logits are upsampled to the label's size in float32 and returned
as float32 (`logits_at`). With the default float32 nothing is cast.

BatchNorm follows PyTorch (momentum 0.1, i.e. Flax's 0.9; epsilon 1e-5) and
uses the running statistics when `train` is False.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.errors import ConfigValueError, InputShapeError
from eo_jax.models import common
from eo_jax.registry import Registry

Array = jax.Array
DType = Any

DECODERS: Registry[type[nn.Module]] = Registry("decoder")

#: The contract's name of a token backbone's final (normalised) token grid.
FINAL_TOKENS = "patch_tokens"

_GRID = re.compile(r"grid_(\d+)")


def block_grids(strides: Mapping[str, int]) -> list[str]:
  """A token backbone's per-block grids 'grid_<i>', in block order."""
  found = [(int(m.group(1)), name) for name in strides
           if (m := _GRID.fullmatch(name))]
  return [name for _, name in sorted(found)]


def pyramid(strides: Mapping[str, int]) -> list[str]:
  """The maps that are not token grids (a CNN's), in the backbone's order."""
  return [name for name in strides
          if name != FINAL_TOKENS and not _GRID.fullmatch(name)]


def deepest_map(strides: Mapping[str, int]) -> str | None:
  """'patch_tokens' if present, else the last map of the largest stride.

  The last one: past a ResNet's output stride, later stages keep the stride
  (dilated) and see more.
  """
  if FINAL_TOKENS in strides:
    return FINAL_TOKENS
  names = pyramid(strides) or block_grids(strides)
  if not names:
    return None
  top = max(strides[n] for n in names)
  return [n for n in names if strides[n] == top][-1]


def select_deepest(decoder: str, strides: Mapping[str, int], backbone: str,
                   need: str = "a dense map") -> dict[str, str]:
  """{'input': `deepest_map`} for decoders that read one map, or the
  `missing_map` error when the backbone has none."""
  name = deepest_map(strides)
  if name is None:
    raise missing_map(decoder, need, strides, backbone)
  return {"input": name}


def describe_maps(strides: Mapping[str, int]) -> str:
  """The backbone's maps for a message, block grids folded into a range."""
  parts = [f"{name!r} (stride {strides[name]})" for name in strides
           if not _GRID.fullmatch(name)]
  grids = block_grids(strides)
  if grids:
    span = grids[0] if len(grids) == 1 else f"{grids[0]}..{grids[-1]}"
    parts.append(f"'{span}' (stride {strides[grids[0]]})")
  return ", ".join(parts) or "none"


def missing_map(decoder: str, need: str, strides: Mapping[str, int],
                backbone: str = "the backbone",
                fix: str = "") -> ConfigValueError:
  """The error for a decoder whose backbone lacks a map it needs.

  Args:
    decoder: the decoder's registered name.
    need: what it needs, e.g. "a map finer than 'stage_4' (stride 16)".
    strides: the backbone's `dense_maps()`.
    backbone: the backbone's name for the message (its class).
    fix: a sentence saying what to change.
  """
  fix = fix or "Pick another decoder (config.model.decoder) or backbone."
  return ConfigValueError(f"decoder {decoder!r} needs {need}, but {backbone} "
                          f"offers {describe_maps(strides)}. {fix}")


def read_map(decoder: str, features: Mapping[str, Array], name: str,
             dtype: DType = jnp.float32) -> Array:
  """features[name] in the compute `dtype`, or an error saying which map is
  absent."""
  if name not in features:
    have = sorted(k for k, v in features.items() if getattr(v, "ndim", 0) == 4)
    raise InputShapeError(
        f"decoder {decoder!r} reads the dense map {name!r}, which the "
        f"backbone's features lack (they hold {have}). Call the backbone on "
        "whole images (no keep_indices).")
  x = features[name]
  if x.ndim != 4:
    raise InputShapeError(f"decoder {decoder!r} expects {name!r} to be "
                          f"(B, h, w, C), got shape {x.shape}.")
  return x.astype(dtype)


def resize(x: Array, hw: Sequence[int]) -> Array:
  """Bilinear resize of (B, h, w, C) to `hw` (no-op at the same size).

  Half-pixel centres without antialiasing: PyTorch's
  `interpolate(mode='bilinear', align_corners=False)`, which the reference
  decoders use, also when a map is made smaller.

  Interpolates in float32 and returns `x`'s dtype: on a bfloat16 map
  `jax.image.resize` would round its interpolation weights (fourteenths for
  a x1.75 step) to 8 bits, so that they no longer sum to one, and round
  again between its row and column passes.
  """
  hw = tuple(int(v) for v in hw)
  if tuple(x.shape[1:3]) == hw:
    return x
  y = jax.image.resize(x.astype(jnp.float32), (x.shape[0], *hw, x.shape[-1]),
                       "bilinear", antialias=False)
  return y.astype(x.dtype)


def logits_at(logits: Array, hw: Sequence[int]) -> Array:
  """Logits (B, h, w, K) as float32 upsampled to `hw`: the decoders' output.

  Cast before resizing, so that interpolated logits are not rounded to the
  compute dtype a second time.
  """
  return resize(logits.astype(jnp.float32), hw)


def classifier(num_classes: int, name: str = "classifier",
               dtype: DType = jnp.float32) -> nn.Dense:
  """The per-pixel 1x1 classifier, N(0, 0.01) init like mmsegmentation's,
  computing in `dtype` (float32 parameters)."""
  return nn.Dense(num_classes, dtype=dtype,
                  kernel_init=nn.initializers.normal(0.01), name=name)


class ConvNormReLU(nn.Module):
  """A bias-free conv, BatchNorm (PyTorch momentum) and ReLU.

  Attributes:
    features: output channels.
    kernel: kernel side (1 or 3).
    dilation: kernel dilation; zero padding keeps the map's size.
    dtype: compute dtype of the conv and of the output (BatchNorm's
      statistics are float32 whatever it is).
  """
  features: int
  kernel: int = 3
  dilation: int = 1
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = common.conv(self.features, self.kernel, dilation=self.dilation,
                    dtype=self.dtype, name="conv")(x)
    x = common.batch_norm(train, self.dtype, name="norm")(x)
    return nn.relu(x)


class Decoder(nn.Module):
  """Base of the decoders: `num_classes` and the map choice.

  Subclasses set `kind` (their registered name); those that read more than
  the deepest map (`needs` names it in errors) override `_select`.

  Attributes:
    num_classes: K, the logits per pixel.
    dtype: compute dtype (e.g. jnp.bfloat16; module docstring); parameters
      and logits stay float32.
  """
  num_classes: int
  dtype: DType = jnp.float32

  kind = ""
  # What the default `_select` says the decoder needs when a backbone lacks it.
  needs = "a dense map"

  def select_maps(self, strides: Mapping[str, int],
                  backbone: str = "the backbone") -> dict[str, str]:
    """{role: map name} this decoder reads from a backbone with `strides`.

    Raises:
      ConfigValueError: the backbone lacks a map the decoder needs (the
        message names the decoder, the map or stride, and `backbone`'s
        maps).
    """
    return self._select(dict(strides), backbone)

  def _select(self, strides: dict[str, int], backbone: str) -> dict[str, str]:
    """The default: one map, the deepest (`select_deepest`); decoders that
    read several maps override this."""
    return select_deepest(self.kind, strides, backbone, self.needs)
