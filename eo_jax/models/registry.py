"""Builds models by name from `config.model`.

Every model is a Flax Linen module whose `__call__(image, train=False,
mask=None)` returns `(output, features)`: `output` is the model's main
prediction (class logits, a per-pixel logit map, or the backbone's pooled
embedding when it has no head) and `features` a dict of named intermediates
("stem", "stage_1", ..., "block_i", "grid_i", "patch_tokens", "cls",
"registers", "prefix_tokens", "attention_i", "pre_logits"). Classifiers keep
their classifier in a submodule named `head`, so optimiser groups can
address it by path. Every model meets the backbone contract of
eo_jax/models/backbone.py (`dense_maps`, `layer_id`, `num_layers`; token
models more), which tests/models/test_backbone.py checks for every name
registered here.

A factory is registered with `@MODELS.register('name')` and called as
`factory(bands=..., num_classes=..., **kwargs)`, the kwargs being every
field of `config.model` except `name`.

Nested model configs: a field whose value is itself a model config (a dict
or ConfigDict with a 'name' key) is built first, headless
(`num_classes=0`) for the same bands, and the factory receives the built
Flax module in its place. A segmentation model takes its encoder this way:

  config.model = dict(name='segmentation', decoder='linear',
                      backbone=dict(name='vit', variant='S/8'))

Errors in a nested config name its key ('config.model.backbone').
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn

from eo_jax import errors
from eo_jax.data.bands import Band
from eo_jax.errors import ConfigError, ConfigTypeError, UserError
from eo_jax.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def is_model_config(value: Any) -> bool:
  """Whether `value` is a (nested) model config: a mapping with a 'name'."""
  return hasattr(value, "keys") and "name" in value


def build_model(model_config: Any, *, bands: Sequence[Band],
                num_classes: int, key: str = "config.model") -> nn.Module:
  """Instantiates `model_config.name` for these bands and classes.

  Args:
    model_config: `config.model` (a dict or ConfigDict with 'name').
    bands: the input bands.
    num_classes: outputs of the head; 0 builds the headless backbone.
    key: where `model_config` sits in the config, for error messages.
  """
  kwargs = dict(model_config)
  if "name" not in kwargs:
    raise ConfigError(f"{key} has no 'name'; set {key}.name to one of "
                      f"{', '.join(MODELS.names())}.")
  name = kwargs.pop("name")
  try:
    factory = MODELS.get(name)
  except ConfigError as e:
    if key == "config.model":
      raise
    raise ConfigError(f"{key}.name: {errors.message(e)}") from None
  for field, value in kwargs.items():
    if is_model_config(value):
      kwargs[field] = _build_nested(value, bands, f"{key}.{field}")
  try:
    return factory(bands=tuple(bands), num_classes=num_classes, **kwargs)
  except TypeError as e:
    if isinstance(e, UserError):
      raise
    raise ConfigTypeError(f"{key} for {name!r} has a field the model does not "
                          f"take: {e}") from None


def _build_nested(model_config: Any, bands: Sequence[Band],
                  key: str) -> nn.Module:
  """The headless model of a nested config; its errors name `key`."""
  try:
    return build_model(model_config, bands=bands, num_classes=0, key=key)
  except UserError as e:
    text = errors.message(e)
    if key in text:  # already says where (a deeper nesting, a field error)
      raise
    # Same class, so callers catching ValueError / KeyError still do.
    raise type(e)(f"{key}: {text}") from None
