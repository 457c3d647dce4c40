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
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn

from eo_jax.data.bands import Band
from eo_jax.errors import ConfigTypeError
from eo_jax.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def build_model(model_config: Any, *, bands: Sequence[Band],
                num_classes: int) -> nn.Module:
  """Instantiates `model_config.name` for these bands and classes."""
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  factory = MODELS.get(name)
  try:
    return factory(bands=tuple(bands), num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise ConfigTypeError(f"config.model for {name!r} has a field the model does not "
                    f"take: {e}") from None
