"""'ms_linear': the linear head over the last few maps, concatenated.

DINOv2's '+ms' linear head (Oquab et al. 2023) reads the patch tokens of
the last four blocks, each through the backbone's final LayerNorm,
concatenates them on the channel axis and applies the 'linear' head
(BatchNorm, 1x1 classifier, bilinear upsampling of the logits).

* Token backbone: 'grid_<depth-n>' .. 'grid_<depth-1>' (n = `num_maps`,
  4 by default), each through a LayerNorm of this decoder. DINOv2 applies
  the backbone's own final norm; a decoder cannot reach the backbone's
  parameters, so each grid gets its own LayerNorm (initialised to the
  identity affine), whose per-channel affine the BatchNorm after it could
  absorb anyway: what matters is the per-token normalisation.
* CNN: the last n maps of its pyramid in the backbone's order (a ResNet's
  'stage_1'..'stage_4'), each resized bilinearly to the finest of them; no
  LayerNorm (the BatchNorm normalises the channels).

A backbone with fewer than n such maps (a ViT of depth 2, a ResNet
truncated to 2 stages) is an error that says how many it has.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.models.decoders.base import (DECODERS, Decoder, block_grids,
                                         logits_at, missing_map, pyramid,
                                         read_map, resize)
from eo_jax.models.decoders.linear import norm_linear

Array = jax.Array

_LN_EPS = 1e-6  # the ViT's (eo_jax/models/vit.py), as DINOv2's final norm


@DECODERS.register("ms_linear")
class MultiScaleLinearDecoder(Decoder):
  """DINOv2's multi-layer linear head (module docstring).

  Attributes:
    num_maps: how many of the last block grids (or pyramid maps) to join.
    dropout: dropout before the classifier (DINOv2: none).
  """
  num_maps: int = 4
  dropout: float = 0.0

  kind = "ms_linear"

  def _select(self, strides: dict[str, int], backbone: str) -> dict[str, str]:
    n = self.num_maps
    grids = block_grids(strides)
    names = grids or pyramid(strides)
    if n < 1 or len(names) < n:
      what = "block grids 'grid_<i>'" if grids else "pyramid maps"
      raise missing_map(
          self.kind, f"the last {n} block grids ('grid_<depth-{n}>'.."
          f"'grid_<depth-1>') of a token backbone, or the last {n} maps of "
          f"a CNN (it found {len(names)} {what})", strides, backbone,
          f"Use a deeper backbone, decoder_settings.num_maps <= {len(names)}, "
          "or decoder 'linear'.")
    return {f"input_{i}": name for i, name in enumerate(names[-n:])}

  @nn.compact
  def __call__(self, features: Mapping[str, Array], strides: Mapping[str, int],
               image_hw: Sequence[int], train: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    maps = self._select(dict(strides), "the backbone")
    names = list(maps.values())
    xs = [read_map(self.kind, features, name, self.dtype) for name in names]
    if block_grids(strides):
      # One norm per position (not per block index), so the parameter
      # names do not depend on the backbone's depth.
      xs = [nn.LayerNorm(_LN_EPS, dtype=self.dtype, name=f"layer_norm_{i}")(x)
            for i, x in enumerate(xs)]
    else:
      finest = max(x.shape[1] for x in xs), max(x.shape[2] for x in xs)
      xs = [resize(x, finest) for x in xs]
    x = jnp.concatenate(xs, axis=-1)
    logits = norm_linear(x, self.num_classes, self.dropout, train, self.dtype)
    return logits_at(logits, image_hw), {}
