"""A backbone and a segmentation decoder: per-pixel class logits.

Registered as 'segmentation'. The backbone comes from a nested model config
(`build_model` builds it headless for the same bands), the decoder by name
from eo_jax/models/decoders/ with its settings in one dict:

  c.model = dict(name='segmentation', decoder='segmenter', freeze_backbone=True,
                 backbone=dict(name='vit', variant='S/8'))
  c.model = dict(name='segmentation', decoder='deeplabv3plus',
                 decoder_settings=dict(aspp_rates=(1, 2, 3)),
                 backbone=dict(name='resnet50', output_stride=8))

Decoders: 'linear', 'ms_linear', 'conv', 'segmenter', 'deeplabv3plus'
(their settings and defaults in their modules). The decoder's needs are
checked against the backbone's `dense_maps()` when the model is built, so
a decoder the backbone cannot serve (ms_linear on a ViT of depth 2) fails
before anything is traced, naming the decoder, the map and the backbone.

Mixed precision: the decoder computes in the backbone's dtype
(`config.model.backbone.dtype`, e.g. 'bfloat16'; float32 for a backbone
without one) unless `decoder_settings.dtype` names another, e.g.
dict(dtype='float32') for a float32 decoder on a bfloat16 backbone.
Parameters stay float32 in both, normalisation statistics and the logits
too (what runs in which dtype: eo_jax/models/decoders/base.py).

`apply(variables, image, train=False, mask=None)` returns
`(logits, features)`: logits (B, H, W, K) float32 at the image's size, and
the backbone's features plus 'aux_logits' (B, H, W, K) when the decoder has
an auxiliary head; 'pre_logits' is the backbone's pooled vector. Params are
{'backbone': ..., 'decoder': ...}, so `config.init_from.target_prefix =
'backbone'` loads a pretrained encoder (with `source_prefix` 'encoder' for
MAE, 'student/backbone' for DINO, '' for a supervised run's headless tree).

`freeze_backbone=True` runs the backbone in inference mode (BatchNorm
running statistics, no dropout or drop-path) and stops the gradient at its
features, so its gradient is exactly zero. Set `config.optim.frozen =
('^backbone/',)` as well: the optimiser then keeps no state for it and
weight decay cannot move it.

Built with num_classes=0 (as probes and objectives build encoders) the
model is its backbone: no decoder, output the pooled vector.

It meets the backbone contract (eo_jax/models/backbone.py): `layer_id` is
the backbone's for 'backbone/...' paths and the top depth for the decoder,
`num_layers` and `dense_maps` are the backbone's, and `adapt_param` and
`input_kernels` hand 'backbone/...' parameters to the backbone's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax import errors
from eo_jax.data.bands import Band
from eo_jax.errors import (ConfigError, ConfigTypeError, ConfigValueError,
                           InputShapeError)
from eo_jax.models.backbone import require_backbone
from eo_jax.models.decoders import DECODERS
from eo_jax.models.registry import MODELS, build_model, is_model_config

Array = jax.Array

_PARTS = ("backbone", "decoder")


class SegmentationModel(nn.Module):
  """Backbone + decoder (see the module docstring).

  Attributes:
    backbone: a headless model meeting the backbone contract.
    decoder: a decoder module (eo_jax/models/decoders/), or None for the
      headless model.
    freeze_backbone: backbone in inference mode, gradient stopped.
    strides: the backbone's `dense_maps()` as ((name, stride), ...), which
      the factory reads when it builds the model; None asks the backbone at
      call time (a visible method call in model summaries).
  """
  backbone: nn.Module
  decoder: nn.Module | None = None
  freeze_backbone: bool = False
  strides: tuple[tuple[str, int], ...] | None = None

  def dense_maps(self) -> dict[str, int]:
    """The backbone's dense maps (they are in the features too)."""
    return self.backbone.dense_maps()

  def layer_id(self, path: str) -> int:
    """The backbone's depth for 'backbone/...' paths, else the top.

    The last component naming 'backbone' or 'decoder' decides: prefixes an
    objective puts in front ('student/backbone/...') come before it, and
    the backbones of this package name no submodule so.
    """
    parts = path.split("/")
    for i in range(len(parts) - 1, -1, -1):
      if parts[i] == "decoder":
        break
      if parts[i] == "backbone":
        return self.backbone.layer_id("/".join(parts[i + 1:]))
    return self.num_layers()

  def num_layers(self) -> int:
    """The backbone's top depth; the decoder trains at it."""
    return self.backbone.num_layers()

  def input_kernels(self) -> tuple[str, ...] | None:
    """The backbone's input kernels under 'backbone/'; None when the
    backbone does not declare them."""
    own = getattr(self.backbone, "input_kernels", None)
    paths = own() if own is not None else None
    return None if paths is None else tuple(f"backbone/{p}" for p in paths)

  def adapt_param(self, path: str, value: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    """A checkpoint value of another shape made to fit, by the backbone.

    Only 'backbone/...' parameters of a backbone with `adapt_param` (a ViT's
    position embedding) can be adapted; anything else is an error naming the
    parameter.
    """
    parts = path.split("/")
    if "backbone" in parts and hasattr(self.backbone, "adapt_param"):
      i = len(parts) - 1 - parts[::-1].index("backbone")
      return self.backbone.adapt_param("/".join(parts[i + 1:]), value, shape)
    raise InputShapeError(
        f"Parameter {path!r} has shape {np.shape(value)} in the checkpoint "
        f"but {tuple(shape)} in this model, and only the backbone "
        f"({type(self.backbone).__name__}) could adapt it. Match "
        "config.model to the source run or leave the parameter out "
        "(config.init_from.params).")

  def __call__(self, image: Array, train: bool = False,
               mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """(B, H, W, K) float32 logits and the features (module docstring).

    Args:
      image: (B, H, W, C) normalised image.
      train: BatchNorm batch statistics and dropout (rng 'dropout') in the
        decoder, and in the backbone unless it is frozen.
      mask: passed to the backbone (token masking, for ViTs built with a
        mask token).
    """
    backbone_train = train and not self.freeze_backbone
    _, features = self.backbone(image, train=backbone_train, mask=mask)
    features = dict(features)
    if self.freeze_backbone:
      features = jax.lax.stop_gradient(features)
    if self.decoder is None:
      return features["pre_logits"], features
    if self.strides is not None:
      strides = dict(self.strides)
    else:  # built without the factory; summaries show this call as a row
      strides = dict(self.backbone.dense_maps())
    logits, aux = self.decoder(features, strides, tuple(image.shape[1:3]),
                               train)
    features.update(aux)
    return logits.astype(jnp.float32), features


def decoder_fields(cls: type) -> list[str]:
  """The settings a decoder class takes (its dataclass fields)."""
  skip = {"num_classes", "parent", "name"}
  return [f.name for f in dataclasses.fields(cls) if f.name not in skip]


def compute_dtype(value: Any, key: str) -> jnp.dtype:
  """`value` (a name such as 'bfloat16', or a dtype) as a floating dtype.

  Raises:
    ConfigValueError: naming `key` when `value` is no floating dtype.
  """
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ConfigValueError(
        f"{key}={value!r} is not a floating dtype; use 'float32' or "
        "'bfloat16'.")
  return dtype


def build_decoder(name: str, num_classes: int,
                  settings: Mapping[str, Any] | None = None,
                  dtype: Any = jnp.float32) -> nn.Module:
  """`DECODERS.get(name)(num_classes=..., **settings)` with clear errors.

  Args:
    name: the decoder's registered name.
    num_classes: K.
    settings: the decoder's fields (`config.model.decoder_settings`).
    dtype: the compute dtype when `settings` names none (the factory
      passes the backbone's).
  """
  try:
    cls = DECODERS.get(name)
  except ConfigError as e:
    raise ConfigError(f"config.model.decoder: {errors.message(e)}") from None
  settings = dict(settings or {})
  fields = decoder_fields(cls)
  unknown = sorted(set(settings) - set(fields))
  if unknown:
    raise ConfigTypeError(
        f"config.model.decoder_settings has {unknown}, which decoder {name!r} "
        f"does not take; its settings are {fields}.")
  # Lists (a JSON override, `--config.model.decoder_settings=...`) become
  # tuples, as the modules' Sequence fields are written.
  settings = {k: tuple(v) if isinstance(v, list) else v
              for k, v in settings.items()}
  # None, in the settings or on a backbone, is the default: follow the
  # backbone, compute in float32.
  explicit = settings.pop("dtype", None)
  if explicit is not None:
    dtype = compute_dtype(explicit, "config.model.decoder_settings.dtype")
  else:
    dtype = compute_dtype(jnp.float32 if dtype is None else dtype,
                          "config.model.backbone.dtype")
  return cls(num_classes=num_classes, dtype=dtype, **settings)


@MODELS.register("segmentation")
def segmentation(*, bands: Sequence[Band], num_classes: int,
                 backbone: Any = None, decoder: str = "linear",
                 decoder_settings: Mapping[str, Any] | None = None,
                 freeze_backbone: bool = False) -> SegmentationModel:
  """A backbone with a segmentation decoder.

  Args:
    bands: the input bands (the backbone is built for them).
    num_classes: K logits per pixel; 0 builds the headless model (the
      backbone alone).
    backbone: the headless backbone module, which `build_model` builds from
      the nested `config.model.backbone`; a model config (with 'name') is
      built here too.
    decoder: a name registered in DECODERS.
    decoder_settings: the decoder's own fields (e.g. dict(width=128));
      without 'dtype' the decoder computes in the backbone's dtype.
    freeze_backbone: inference-mode backbone without gradient.
  """
  where = "model 'segmentation'"
  if backbone is None:
    raise ConfigValueError(
        f"{where} needs config.model.backbone, a model config such as "
        "dict(name='vit', variant='S/8').")
  if is_model_config(backbone):
    backbone = build_model(backbone, bands=bands, num_classes=0,
                           key="config.model.backbone")
  if not isinstance(backbone, nn.Module):
    raise ConfigValueError(
        f"config.model.backbone must be a model config with a 'name' (e.g. "
        f"dict(name='resnet50', output_stride=16)); got {backbone!r}.")
  require_backbone(backbone, f"{where} (config.model.backbone)")
  if num_classes == 0:
    return SegmentationModel(backbone=backbone,
                             freeze_backbone=freeze_backbone)
  if num_classes < 0:
    raise ConfigValueError(
        f"{where} needs num_classes >= 1, got {num_classes}.")
  module = build_decoder(decoder, num_classes, decoder_settings,
                         getattr(backbone, "dtype", jnp.float32))
  strides = dict(backbone.dense_maps())
  # Fails here, at build time, when the backbone lacks a map it needs.
  module.select_maps(strides, f"backbone {type(backbone).__name__} "
                     "(config.model.backbone)")
  return SegmentationModel(backbone=backbone, decoder=module,
                           freeze_backbone=freeze_backbone,
                           strides=tuple(strides.items()))
