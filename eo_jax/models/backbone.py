"""The backbone contract: what objectives, decoders, probes and `init_from`
may rely on, whatever the network.

Every model is a Flax Linen module applied as

  output, features = model.apply(variables, image, train=False, mask=None)

with `image` (B, H, W, C), C = the number of bands the model was built for.
Built with `num_classes=0` a model is a *backbone*: `output` is its pooled
embedding, and `features` holds, by name:

* 'pre_logits': (B, D) float32, the pooled embedding (the classifier's input);
* the dense maps named by `dense_maps()`: (B, h, w, C_i) arrays, each with
  its stride in input pixels, e.g. a ResNet's 'stem' (4) and 'stage_1' ...
  'stage_4' (4, 8, 16, 32; 8 or 16 at most with an output stride), a ViT's
  'patch_tokens' and per-block 'grid_<i>' (patch size), prefix tokens
  (class token, registers) removed.

`layer_id(path)` maps a parameter path to a depth for layer-wise
learning-rate decay, from 0 (input side: stem, patch embedding) to
`num_layers()` (the top: a ViT's final norm; a CNN's classifier, one above
its last stage); heads put on a backbone share the top depth, so they train
at the undecayed rate. Paths may carry prefixes ('student/backbone/...'):
the first component that names a part of the model decides, and paths that
name none get the top depth.

Unpadded CNNs (BagNet, LeNet) lose their receptive field at the border: a
dense map of stride s has between ceil((n - R) / s) and ceil(n / s)
locations along an axis of n pixels (R: the model's receptive field);
padded ones (ResNet, ViT) have ceil(n / s), or n / s.

A *token backbone* (ViT, spatial-spectral ViT) turns the image into patch
tokens and also offers what masked-image objectives need:

* `patch_size` (pixels), `width` (token dimension), `num_prefix_tokens`;
* `token_grid(height, width)` -> (gh, gw);
* `mask=` (B, N) bool: masked patch tokens are replaced by a learned mask
  token before the position embedding (iBOT / DINOv2); the module must be
  built `with_mask_token()`;
* `keep_indices=` (B, K) int: only those patches enter the transformer
  (MAE); features then hold 'visible_tokens' (B, K, D) instead of the grids,
  plus 'prefix_tokens' (B, P, D);
* `with_attention(which)`: a copy whose features include 'attention_<i>'
  (B, heads, T, T) of the last block (True) or of every block ('all');
* `adapt_param(path, value, shape)`: a checkpoint value of another shape
  made to fit (e.g. a position embedding resized to another grid), or a
  ValueError naming the parameter.

A backbone whose parameters do not depend on its input bands (the
spatial-spectral ViT with wavelength-generated patch embeddings) says so with
a `band_agnostic` property that is True; `init_from` then loads its weights
for data of other bands (another sensor) instead of refusing them.

A backbone whose only band-dependent parameters are input kernels declares
them: `input_kernels()` -> the '/'-joined paths of every parameter with a
band axis, which must be axis -2 (a ResNet's 'stem_conv/kernel', a ViT's
'embedding/kernel', a BagNet's 'stem_conv1/kernel'; a segmentation model
forwards its backbone's under 'backbone/'). `init_from` then fits weights
trained on other bands by wavelength (eo_jax/interop/band_adaptation.py)
instead of refusing them. A model without the method, or whose method
returns None (a wrapper around a backbone that declares nothing), keeps
the strict band check.

Objectives and `init_from` check these with `require_backbone` /
`require_token_backbone` (structural checks, not a model's class), so a new
network plugs in by meeting the contract, not by being named in them.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np
from eo_jax.errors import ConfigValueError

Array = jax.Array


@runtime_checkable
class Backbone(Protocol):
  """Any model used headless (see the module docstring)."""

  def __call__(self, image: Array, train: bool = False, mask: Array | None = None
               ) -> tuple[Array, dict[str, Array]]: ...

  def dense_maps(self) -> dict[str, int]:
    """Names of the dense (B, h, w, C) features and their strides in pixels."""
    ...

  def layer_id(self, path: str) -> int:
    """Depth of the parameter at '/'-joined `path` (0 = the input side)."""
    ...

  def num_layers(self) -> int:
    """The top depth: every `layer_id` lies in [0, num_layers()]."""
    ...


@runtime_checkable
class TokenBackbone(Backbone, Protocol):
  """A backbone over patch tokens (see the module docstring)."""

  patch_size: int
  width: int

  @property
  def num_prefix_tokens(self) -> int: ...

  def token_grid(self, height: int, width: int) -> tuple[int, int]: ...

  def with_mask_token(self) -> "TokenBackbone": ...

  def with_attention(self, which: bool | str = True) -> "TokenBackbone": ...

  def adapt_param(self, path: str, value: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray: ...


def require_backbone(model: Any, who: str) -> Backbone:
  """`model` if it meets the backbone contract, else a ValueError for `who`."""
  if not isinstance(model, Backbone):
    raise ConfigValueError(f"{who} needs a backbone (see eo_jax/models/backbone.py); "
                     f"{type(model).__name__} does not offer dense_maps / "
                     "layer_id / num_layers.")
  return model


def require_token_backbone(model: Any, who: str, why: str) -> TokenBackbone:
  """`model` if it is a token backbone; else an error saying what to set.

  Args:
    model: the built model.
    who: e.g. "objective 'mae'", for the message.
    why: what `who` does with tokens, e.g. "encodes only visible patches".
  """
  if not isinstance(model, TokenBackbone):
    raise ConfigValueError(
        f"{who} {why} and needs a token backbone (a ViT); config.model builds "
        f"a {type(model).__name__}. Set config.model.name='vit' (or another "
        "token model).")
  return model
