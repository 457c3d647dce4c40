"""'segmenter': the mask transformer of Segmenter (Strudel et al. 2021).

On the deepest map's tokens (a ViT's 'patch_tokens', N = gh * gw of them;
a CNN's deepest map works the same way):

  1. a linear projection of the tokens to the decoder's width D;
  2. K learned class embeddings appended to the N patch tokens;
  3. `num_layers` pre-norm transformer blocks (eo_jax.models.vit.Block) over
     the N + K tokens, then a LayerNorm;
  4. patches and classes through their own D x D projections, each
     L2-normalised, and `masks = patches @ classes^T` (B, N, K): cosine
     similarities (`class_masks`);
  5. a LayerNorm over the K mask values of each patch (Segmenter's
     `mask_norm`), reshaped to (B, gh, gw, K) and upsampled bilinearly to
     the label's size.

Defaults follow Segmenter's decoder: D = the input's width, D // 64 heads,
MLP 4 D, dropout 0.1, 2 layers. The normalised patch and class embeddings
and the masks before `mask_norm` are sown into the 'intermediates'
collection ('patch_embeddings' (B, N, D), 'class_embeddings' (B, K, D),
'masks' (B, N, K)) for inspection: apply with `mutable=['intermediates']`.

In a bfloat16 `dtype` the projections of steps 1 and 4 and the blocks
compute in bfloat16; the L2 normalisation, the cosines and `mask_norm` in
float32. `mask_norm` divides the K cosines of a patch by their spread,
which is small where classes nearly tie (at initialisation, when the class
embeddings start close together), so it magnifies whatever rounding the
cosines carry: bfloat16 cosines would add their own.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from eo_jax.models import common
from eo_jax.models import vit as vit_lib
from eo_jax.models.decoders.base import (DECODERS, Decoder, logits_at,
                                         read_map)

Array = jax.Array

_LN_EPS = 1e-5  # PyTorch's nn.LayerNorm default, as Segmenter's norms
_NORM_EPS = 1e-12  # only guards a zero vector; Segmenter divides by the norm


def class_masks(patch_emb: Array, class_emb: Array) -> Array:
  """Cosine similarity of every patch with every class: (..., N, K).

  Args:
    patch_emb: (..., N, D) patch embeddings.
    class_emb: (..., K, D) class embeddings.
  """
  p = common.l2_normalize(patch_emb, eps=_NORM_EPS)
  c = common.l2_normalize(class_emb, eps=_NORM_EPS)
  return jnp.einsum("...nd,...kd->...nk", p, c)


def default_heads(width: int) -> int:
  """Segmenter's width // 64 heads, lowered until it divides `width` (>= 1)."""
  heads = max(1, width // 64)
  while width % heads:
    heads -= 1
  return heads


@DECODERS.register("segmenter")
class SegmenterDecoder(Decoder):
  """Segmenter's mask transformer (module docstring).

  Attributes:
    width: decoder width D; None is the input map's channels.
    num_layers: transformer blocks over patches and classes.
    num_heads: attention heads; None is `default_heads(width)`.
    mlp_dim: hidden size of the blocks' MLP; None is 4 * width.
    dropout: dropout in the blocks (needs rng 'dropout' when training).
  """
  width: int | None = None
  num_layers: int = 2
  num_heads: int | None = None
  mlp_dim: int | None = None
  dropout: float = 0.1

  kind = "segmenter"

  needs = "a token grid ('patch_tokens') or a dense map"

  @nn.compact
  def __call__(self, features: Mapping[str, Array], strides: Mapping[str, int],
               image_hw: Sequence[int], train: bool = False
               ) -> tuple[Array, dict[str, Array]]:
    name = self._select(dict(strides), "the backbone")["input"]
    dtype = self.dtype
    grid = read_map(self.kind, features, name, dtype)
    b, gh, gw, c = grid.shape
    d = self.width or c
    k = self.num_classes
    heads = self.num_heads or default_heads(d)
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, dtype=dtype, kernel_init=nn.initializers.truncated_normal(0.02),
        name=name)

    x = dense(d, "proj_dec")(grid.reshape(b, gh * gw, c))
    classes = self.param("cls_emb", nn.initializers.truncated_normal(0.02),
                         (1, k, d)).astype(dtype)
    x = jnp.concatenate([x, jnp.broadcast_to(classes, (b, k, d))], axis=1)
    for i in range(self.num_layers):
      x, _ = vit_lib.Block(heads, self.mlp_dim or 4 * d, dropout=self.dropout,
                           dtype=dtype, name=f"block_{i}")(x, train)
    x = nn.LayerNorm(_LN_EPS, dtype=dtype, name="decoder_norm")(x)

    # Segmenter draws both projections as randn * D^-0.5.
    init = nn.initializers.normal(d ** -0.5)
    patches = x[:, :-k] @ self.param("proj_patch", init, (d, d)).astype(dtype)
    classes = x[:, -k:] @ self.param("proj_classes", init, (d, d)).astype(dtype)
    # From here on float32 (module docstring).
    patches = patches.astype(jnp.float32)
    classes = classes.astype(jnp.float32)
    patches = common.l2_normalize(patches, eps=_NORM_EPS)
    classes = common.l2_normalize(classes, eps=_NORM_EPS)
    masks = class_masks(patches, classes)
    self.sow("intermediates", "patch_embeddings", patches)
    self.sow("intermediates", "class_embeddings", classes)
    self.sow("intermediates", "masks", masks)
    masks = nn.LayerNorm(_LN_EPS, name="mask_norm")(masks)
    return logits_at(masks.reshape(b, gh, gw, k), image_hw), {}
