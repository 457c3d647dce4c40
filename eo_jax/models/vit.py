"""Vision Transformer (ViT) for any number of input bands.

A pre-norm ViT in the style of big_vision / timm / DINOv2, registered as
'vit'. Sizes follow the ViT paper and are picked by a `variant` string such as
'S/8' or 'B/16'; `width`, `depth`, `num_heads` and `mlp_dim` override them
(tiny models for tests).

Token layout: `[cls, register_1..register_R, patch_1..patch_N]`, patches in
row-major order of the (gh, gw) grid. Only the cls token and the patches get
a position embedding; registers (Darcet et al. 2023) get none.

Position embeddings: the learned table `pos_embedding` is stored as a 2-D
grid, shape (1, gh, gw, D), for the grid seen at init (or `posemb_grid`),
plus a separate `cls_pos_embedding` (1, 1, D). An input whose grid differs is
served by bilinear interpolation of the stored grid at call time;
`resize_posemb` does the same once, for loading a checkpoint trained at
another resolution. Storing the grid 2-D keeps its shape unambiguous for
non-square inputs.

Masking, two ways:
  * iBOT / DINOv2: `mask` (B, N) bool, True = masked. Masked patch embeddings
    are replaced by the learned `mask_token` (needs `use_mask_token=True`)
    before the position embedding is added, so the token still knows where
    it is.
  * MAE: `keep_indices` (B, K) int, the patches to keep. Patches are gathered
    after the position embedding is added and only 1 + R + K tokens run
    through the blocks. `encode_visible` is the same call under a name. The
    full grid does not exist then, so features hold 'visible_tokens'
    (B, K, D) instead of 'patch_tokens' and the 'grid_<i>'.

Features: 'patch_embed' (B, N, D) (patches + position embedding),
'block_<i>' (B, T, D) (every token after block i), 'grid_<i>' (B, gh, gw, D)
(block i's patch tokens on the grid), 'patch_tokens' (B, gh, gw, D), 'cls'
(B, D), 'registers' (B, R, D), 'prefix_tokens' (B, 1 + R, D) (cls and
registers; the last four after the final norm), 'pre_logits' (B, D). The
grids are views of 'block_<i>'; under jit, features that nothing reads
cost nothing.

The ViT is a token backbone (eo_jax/models/backbone.py): `token_grid`,
`num_prefix_tokens`, `with_mask_token`, `with_attention`, `adapt_param`,
`dense_maps`, `layer_id` and `num_layers`.

Attention goes through `jax.nn.dot_product_attention` (fused kernels on
GPU); when attention weights are asked for, the chosen blocks compute them
explicitly and expose them as features['attention_<i>'] (B, heads, T, T).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.data.bands import Band
from eo_jax.errors import InputShapeError
from eo_jax.models.registry import MODELS

Array = jax.Array
DType = Any

# (width, depth, num_heads, mlp_dim) as in the ViT paper (Ti from DeiT,
# g from DINOv2).
SIZES: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1536, 40, 24, 6144),
}

_LN_EPS = 1e-6  # as in big_vision, timm and DINOv2; matters for weight import
_EMBED_PARAMS = ("embedding", "cls", "cls_pos_embedding", "pos_embedding",
                 "registers", "mask_token")
_TOP_PARAMS = ("encoder_norm", "head")


def parse_variant(variant: str) -> tuple[str, int | None]:
  """Splits 'B/16' into ('B', 16); 'B' alone gives ('B', None)."""
  size, _, patch = variant.partition("/")
  if size not in SIZES or (patch and not patch.isdigit()):
    raise InputShapeError(
        f"Unknown ViT variant {variant!r}. Use '<size>/<patch>' with size in "
        f"{list(SIZES)}, e.g. 'S/8' or 'B/16'.")
  return size, int(patch) if patch else None


def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), written with erf as PyTorch's `nn.GELU()` is.

  Same function as `nn.gelu(x, approximate=False)`, whose erfc form costs an
  exponential per element on XLA CPU: this form made a ViT-S/8 train step
  1.10x faster there (`python -m benchmarks.vit_throughput --baseline
  erfc_gelu`, benchmarks/README.md).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def swiglu_hidden_dim(mlp_dim: int) -> int:
  """SwiGLU hidden size with about the parameters of a `mlp_dim` MLP.

  SwiGLU has three D x h matrices against the MLP's two D x mlp_dim, so
  h = 2/3 mlp_dim keeps the count; rounding up to a multiple of 8 (as DINOv2
  does) keeps matmuls aligned.
  """
  return (int(mlp_dim * 2 / 3) + 7) // 8 * 8


def posemb_sincos_2d(grid: tuple[int, int], width: int,
                     temperature: float = 10_000.) -> Array:
  """Fixed 2-D sine-cosine embedding, (1, gh, gw, width).

  Each quarter of the channels holds sin(x w), cos(x w), sin(y w), cos(y w)
  for frequencies w spaced geometrically from 1 to 1/temperature.
  """
  if width % 4:
    raise InputShapeError(f"posemb='sincos2d' needs a width divisible by 4, got "
                     f"{width}; use posemb='learn' or change the width.")
  gh, gw = grid
  y, x = jnp.mgrid[:gh, :gw]
  quarter = width // 4
  omega = 1.0 / temperature**(jnp.arange(quarter) / max(quarter - 1, 1))
  x = x[..., None] * omega
  y = y[..., None] * omega
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], -1)
  return pe[None].astype(jnp.float32)


def resize_posemb(posemb: Array, new_grid: Sequence[int]) -> Array:
  """Bilinearly resizes a (1, gh, gw, D) position-embedding grid.

  Used at call time when the input grid differs from the stored one, and
  when loading a checkpoint trained at another resolution (e.g. 64 -> 512
  pixels). Upsampling equals torch `interpolate(mode='bilinear',
  align_corners=False)`; downsampling is antialiased. The same grid returns
  `posemb` itself, untouched.
  """
  if posemb.ndim != 4 or posemb.shape[0] != 1:
    raise InputShapeError(f"resize_posemb expects a (1, gh, gw, D) grid, got shape "
                     f"{posemb.shape}.")
  new_grid = tuple(int(g) for g in new_grid)
  if len(new_grid) != 2 or min(new_grid) < 1:
    raise InputShapeError(f"new_grid must be two positive ints, got {new_grid}.")
  if tuple(posemb.shape[1:3]) == new_grid:
    return posemb
  out = jax.image.resize(posemb.astype(jnp.float32),
                         (1, *new_grid, posemb.shape[-1]), method="bilinear")
  return out.astype(posemb.dtype)


def layer_id(path: str, depth: int) -> int:
  """Depth index of a parameter, for layer-wise learning-rate decay.

  Embedding parameters (patch embedding, cls, registers, position and mask
  tokens) -> 0, `block_i` -> i + 1, the final norm and head -> depth + 1.
  `path` is '/'-joined and may carry the ViT's own name inside a larger
  module ('encoder/block_3/...'); the first component naming a ViT part
  decides, so do not pass paths of sibling modules that have their own
  'block_i' (an MAE decoder). Paths naming no ViT part (objective heads)
  get depth + 1, i.e. the undecayed learning rate.
  """
  for part in path.split("/"):
    m = re.fullmatch(r"block_(\d+)", part)
    if m:
      return int(m.group(1)) + 1
    if part in _EMBED_PARAMS:
      return 0
    if part in _TOP_PARAMS:
      return depth + 1
  return depth + 1


def drop_path(x: Array, rate: float, rng: Array | None) -> Array:
  """Stochastic depth: zeroes whole samples with probability `rate`.

  Survivors are scaled by 1 / (1 - rate) so the expectation is unchanged.
  `rng=None` or rate 0 is the identity (evaluation).
  """
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) *
                              (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class PatchEmbed(nn.Module):
  """Non-overlapping p x p patches -> width, i.e. a stride-p VALID conv.

  Written as reshape + einsum (same 'kernel' (p, p, C, D) layout as nn.Conv)
  because a matmul is what a patchify conv is, and XLA runs it as one.
  """
  width: int
  patch_size: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, image: Array) -> Array:
    b, h, w, c = image.shape
    p = self.patch_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, c, self.width))
    bias = self.param("bias", nn.initializers.zeros, (self.width,))
    patches = image.reshape(b, h // p, p, w // p, p, c).astype(self.dtype)
    out = jnp.einsum("bhiwjc,ijcd->bhwd", patches, kernel.astype(self.dtype))
    return out + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with separate q, k, v projections."""
  num_heads: int
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, return_weights: bool = False
               ) -> tuple[Array, Array | None]:
    width = x.shape[-1]
    if width % self.num_heads:
      raise InputShapeError(f"width {width} is not divisible by num_heads "
                       f"{self.num_heads}.")
    head_dim = width // self.num_heads
    proj = functools.partial(nn.DenseGeneral, (self.num_heads, head_dim),
                             dtype=self.dtype,
                             kernel_init=nn.initializers.xavier_uniform())
    q = proj(name="query")(x)
    k = proj(name="key")(x)
    v = proj(name="value")(x)
    weights = None
    if return_weights:
      # Softmax in float32: bf16 rows would not sum to one.
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
      weights = jax.nn.softmax(logits / math.sqrt(head_dim), axis=-1)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
      out = jax.nn.dot_product_attention(q, k, v)
    out = nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype,
                          kernel_init=nn.initializers.xavier_uniform(),
                          name="out")(out)
    return out, weights


class FeedForward(nn.Module):
  """GELU MLP (`ffn='mlp'`) or SwiGLU (`ffn='swiglu'`).

  The GELU is the exact one (`gelu`), as timm's and torchvision's ViTs use.
  SwiGLU uses one fused input matrix 'w12' whose two halves are the
  gate and the value, hidden size `swiglu_hidden_dim(mlp_dim)`.
  """
  mlp_dim: int
  ffn: str = "mlp"
  dropout: float = 0.0
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    width = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.xavier_uniform(),
                              bias_init=nn.initializers.normal(1e-6))
    if self.ffn == "mlp":
      h = gelu(dense(self.mlp_dim, name="fc1")(x))
      out_name = "fc2"
    elif self.ffn == "swiglu":
      hidden = swiglu_hidden_dim(self.mlp_dim)
      gate, value = jnp.split(dense(2 * hidden, name="w12")(x), 2, axis=-1)
      h = nn.silu(gate) * value
      out_name = "w3"
    else:
      raise InputShapeError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}.")
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    return dense(width, name=out_name)(h)


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch (CaiT / DINOv2)."""
  init_value: float

  @nn.compact
  def __call__(self, x: Array) -> Array:
    gamma = self.param("scale", nn.initializers.constant(self.init_value),
                       (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + f(norm(x)) for attention, then FFN."""
  num_heads: int
  mlp_dim: int
  ffn: str = "mlp"
  dropout: float = 0.0
  drop_path: float = 0.0
  layerscale_init: float | None = None
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, return_weights: bool = False
               ) -> tuple[Array, Array | None]:
    def residual(y, name):
      y = nn.Dropout(self.dropout)(y, deterministic=not train)
      if self.layerscale_init is not None:
        y = LayerScale(self.layerscale_init, name=name)(y)
      use_rng = train and self.drop_path > 0
      return drop_path(y, self.drop_path,
                       self.make_rng("dropout") if use_rng else None)

    norm = functools.partial(nn.LayerNorm, _LN_EPS, dtype=self.dtype)
    y, weights = Attention(self.num_heads, self.dtype, name="attn")(
        norm(name="norm1")(x), return_weights)
    x = x + residual(y, "ls1")
    y = FeedForward(self.mlp_dim, self.ffn, self.dropout, self.dtype,
                    name="mlp")(norm(name="norm2")(x), train)
    x = x + residual(y, "ls2")
    return x, weights


class NormLinearHead(nn.Module):
  """BatchNorm without scale or offset, then a linear classifier.

  The linear-probe head of MAE (He et al. 2021, appendix A.2): features of a
  frozen encoder have very different scales per channel, and normalising
  them lets one learning rate suit every channel. Its parameters are named
  like an `nn.Dense` called 'head' ('head/kernel', 'head/bias'); the running
  statistics live in batch_stats 'head/norm'.
  """
  num_classes: int
  kernel_init: Any = nn.initializers.zeros
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    # PyTorch BatchNorm1d(affine=False, eps=1e-6), momentum 0.1 = flax 0.9.
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-6, use_scale=False, use_bias=False,
                     dtype=jnp.float32, name="norm")(x.astype(jnp.float32))
    kernel = self.param("kernel", self.kernel_init,
                        (x.shape[-1], self.num_classes))
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
    x = x.astype(self.dtype)
    return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class ViT(nn.Module):
  """Vision Transformer; see the module docstring for layout and masking.

  Attributes:
    bands: the input bands; the image must have len(bands) channels.
    num_classes: classifier outputs; 0 -> no head, output = pooled features.
    patch_size: patch side in pixels; must divide the image height and width.
    width, depth, num_heads, mlp_dim: transformer size.
    ffn: 'mlp' (GELU) or 'swiglu'.
    num_registers: extra learned tokens without position embedding.
    pool: 'cls' (cls token) or 'mean' (mean of patch tokens only).
    posemb: 'learn' or 'sincos2d' (fixed; cls gets none).
    posemb_grid: grid of the learned table at init; None -> the init input's.
    layerscale_init: LayerScale init value (1e-5 for DINOv2); None -> off.
    drop_path: stochastic-depth rate of the last block; block i gets
      drop_path * i / (depth - 1). Needs rng 'dropout' when training.
    dropout: dropout after the position embedding and in each residual branch.
    use_mask_token: create the learned `mask_token` that `mask` needs.
    return_attention: False, True (last block) or 'all' (every block).
    head_zeroinit: zero-initialise the classifier.
    head_norm: put a BatchNorm without scale and offset before the classifier
      (MAE's linear-probe head); adds a 'batch_stats' collection under
      'head/norm'. The classifier's own parameters keep the paths
      'head/kernel' and 'head/bias' either way.
    dtype: compute dtype (params stay float32).
  """
  bands: tuple[Band, ...]
  num_classes: int = 0
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  ffn: str = "mlp"
  num_registers: int = 0
  pool: str = "cls"
  posemb: str = "learn"
  posemb_grid: tuple[int, int] | None = None
  layerscale_init: float | None = None
  drop_path: float = 0.0
  dropout: float = 0.0
  use_mask_token: bool = False
  return_attention: bool | str = False
  head_zeroinit: bool = True
  head_norm: bool = False
  dtype: DType = jnp.float32

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: the class token and the registers."""
    return 1 + self.num_registers

  def token_grid(self, height: int, width: int) -> tuple[int, int]:
    """(gh, gw) patch grid of a height x width image; both must divide."""
    return _token_grid(self.patch_size, height, width)

  def with_mask_token(self) -> "ViT":
    """A copy with the learned `mask_token` that `mask=` needs."""
    return self.clone(use_mask_token=True)

  def with_attention(self, which: bool | str = True) -> "ViT":
    """A copy whose features hold attention weights (see `return_attention`)."""
    _check_attention_choice(which)
    return self.clone(return_attention=which)

  def adapt_param(self, path: str, value: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    """A checkpoint's `value` for the parameter at `path` made `shape`-d.

    Position-embedding tables ('pos_embedding') of another grid are resized
    bilinearly (`resize_posemb`): the (1, gh, gw, D) grids of this ViT, or
    the older (1, N, D) layout of a square grid without class token, into
    either layout. Any other mismatch is a ValueError naming the parameter.
    """
    return adapt_posemb(path, value, shape)

  def input_kernels(self) -> tuple[str, ...]:
    """The parameters with a band axis (-2): the patch embedding's kernel."""
    return ("embedding/kernel",)

  def dense_maps(self) -> dict[str, int]:
    """'patch_tokens' and every block's 'grid_<i>', at the patch stride."""
    maps = {"patch_tokens": self.patch_size}
    maps.update({f"grid_{i}": self.patch_size for i in range(self.depth)})
    return maps

  def layer_id(self, path: str) -> int:
    """`layer_id(path, self.depth)`: this model's layer-wise decay hook."""
    return layer_id(path, self.depth)

  def num_layers(self) -> int:
    """depth + 1: the final norm and heads, above the last block."""
    return self.depth + 1

  def _check_input(self, image: Array, mask: Array | None,
                   keep_indices: Array | None) -> tuple[int, int]:
    if image.ndim != 4:
      raise InputShapeError(f"ViT expects images (B, H, W, C), got shape "
                       f"{image.shape}.")
    b, h, w, c = image.shape
    if c != len(self.bands):
      raise InputShapeError(
          f"Image has {c} channels but the model was built for "
          f"{len(self.bands)} bands {[x.name for x in self.bands]}; build it "
          "with the dataset's bands (config.data.bands).")
    grid = _token_grid(self.patch_size, h, w)
    if mask is not None:
      if not self.use_mask_token:
        raise InputShapeError("`mask` needs a mask token: build the ViT with "
                         "use_mask_token=True.")
      if mask.shape != (b, grid[0] * grid[1]):
        raise InputShapeError(f"mask must be (B, N_patches) = "
                         f"{(b, grid[0] * grid[1])}, got {mask.shape}.")
      if keep_indices is not None:
        raise InputShapeError("Pass either `mask` (iBOT/DINOv2) or `keep_indices` "
                         "(MAE), not both.")
    if keep_indices is not None and (keep_indices.ndim != 2 or
                                     keep_indices.shape[0] != b):
      raise InputShapeError(f"keep_indices must be (B, K) ints, got shape "
                       f"{keep_indices.shape}.")
    choices = (("pool", self.pool, ("cls", "mean")),
               ("posemb", self.posemb, ("learn", "sincos2d")))
    for name, value, allowed in choices:
      if value not in allowed:
        raise InputShapeError(f"{name} must be one of {allowed}, got {value!r}.")
    return grid

  def _position_embedding(self, grid: tuple[int, int]
                          ) -> tuple[Array, Array | None]:
    """(1, gh, gw, D) patch embedding table and (1, 1, D) cls one (or None)."""
    if self.posemb == "sincos2d":
      return posemb_sincos_2d(grid, self.width), None
    stored = tuple(self.posemb_grid or grid)
    if self.has_variable("params", "pos_embedding"):
      # Apply with a checkpoint: the table's own shape says its grid.
      stored = tuple(self.get_variable("params", "pos_embedding").shape[1:3])
    init = nn.initializers.normal(0.02)
    table = self.param("pos_embedding", init, (1, *stored, self.width))
    cls_pe = self.param("cls_pos_embedding", init, (1, 1, self.width))
    return resize_posemb(table, grid), cls_pe

  @nn.compact
  def __call__(self, image: Array, train: bool = False,
               mask: Array | None = None, *,
               keep_indices: Array | None = None,
               return_attention: bool | str | None = None
               ) -> tuple[Array, dict[str, Array]]:
    """Runs the ViT.

    Args:
      image: (B, H, W, C) with C == len(bands).
      train: enables dropout and drop-path (rng 'dropout').
      mask: optional (B, N) bool, True = replace that patch by the mask token.
      keep_indices: optional (B, K) int patch indices; only these patches
        (with their position embeddings) enter the transformer (MAE).
      return_attention: overrides the `return_attention` attribute.

    Returns:
      (output, features): logits (B, num_classes) in float32, or the pooled
      representation (B, D) when num_classes == 0; features as named in the
      module docstring and the model contract.
    """
    grid = self._check_input(image, mask, keep_indices)
    which = self.return_attention if return_attention is None else (
        return_attention)
    _check_attention_choice(which)
    b = image.shape[0]
    d = self.width
    features: dict[str, Array] = {}

    x = PatchEmbed(d, self.patch_size, self.dtype, name="embedding")(image)
    x = x.reshape(b, -1, d)
    if self.use_mask_token:
      # Created even when unused, so a model initialised without a mask can
      # be applied with one.
      token = self.param("mask_token", nn.initializers.zeros, (1, 1, d))
      if mask is not None:
        x = jnp.where(mask[..., None], token.astype(x.dtype), x)
    patch_pe, cls_pe = self._position_embedding(grid)
    x = x + patch_pe.reshape(1, -1, d).astype(x.dtype)
    features["patch_embed"] = x
    if keep_indices is not None:
      x = jnp.take_along_axis(x, keep_indices[..., None].astype(jnp.int32),
                              axis=1)

    cls = self.param("cls", nn.initializers.normal(1e-6), (1, 1, d))
    if cls_pe is not None:
      cls = cls + cls_pe
    prefix = [jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d))]
    if self.num_registers:
      regs = self.param("registers", nn.initializers.normal(1e-6),
                        (1, self.num_registers, d))
      prefix.append(jnp.broadcast_to(regs.astype(x.dtype),
                                     (b, self.num_registers, d)))
    x = jnp.concatenate(prefix + [x], axis=1)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)

    n_prefix = self.num_prefix_tokens
    for i in range(self.depth):
      want = which == "all" or (which in (True, "last") and i == self.depth - 1)
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x, weights = Block(self.num_heads, self.mlp_dim, self.ffn, self.dropout,
                         rate, self.layerscale_init, self.dtype,
                         name=f"block_{i}")(x, train, want)
      features[f"block_{i}"] = x
      if keep_indices is None:
        features[f"grid_{i}"] = x[:, n_prefix:].reshape(b, *grid, d)
      if weights is not None:
        features[f"attention_{i}"] = weights

    x = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name="encoder_norm")(x)
    patches = x[:, n_prefix:]
    features["cls"] = x[:, 0]
    if self.num_registers:
      features["registers"] = x[:, 1:n_prefix]
    features["prefix_tokens"] = x[:, :n_prefix]
    if keep_indices is None:
      features["patch_tokens"] = patches.reshape(b, *grid, d)
    else:
      features["visible_tokens"] = patches
    pooled = x[:, 0] if self.pool == "cls" else patches.mean(axis=1)
    features["pre_logits"] = pooled

    if not self.num_classes:
      return pooled, features
    kernel_init = (nn.initializers.zeros if self.head_zeroinit
                   else nn.initializers.xavier_uniform())
    if self.head_norm:
      logits = NormLinearHead(self.num_classes, kernel_init, self.dtype,
                              name="head")(pooled, train)
    else:
      logits = nn.Dense(self.num_classes, dtype=self.dtype,
                        kernel_init=kernel_init, name="head")(pooled)
    return logits.astype(jnp.float32), features

  def encode_visible(self, image: Array, keep_indices: Array,
                     train: bool = False) -> tuple[Array, dict[str, Array]]:
    """MAE encoder: runs only the patches in `keep_indices` (B, K).

    Call as `model.apply(variables, image, keep_indices,
    method='encode_visible')`. features['visible_tokens'] (B, K, D) are the
    normalised visible patch tokens in `keep_indices` order; 'cls' and
    'registers' are as usual.
    """
    return self(image, train, keep_indices=keep_indices)


def _token_grid(patch_size: int, height: int, width: int) -> tuple[int, int]:
  if height % patch_size or width % patch_size:
    raise InputShapeError(
        f"Image size {height}x{width} is not a multiple of patch_size "
        f"{patch_size}; resize or crop the input (config.input.image_size) or "
        "pick another patch size.")
  return height // patch_size, width // patch_size


def _check_attention_choice(which: Any) -> None:
  if which not in (False, True, "last", "all"):
    raise InputShapeError(f"return_attention must be False, True/'last' or 'all', "
                     f"got {which!r}.")


def _square_side(n: int) -> int | None:
  side = int(round(math.sqrt(n)))
  return side if side * side == n else None


def _posemb_grid(shape: Sequence[int]) -> tuple[int, int] | None:
  """The (gh, gw) grid of a (1, gh, gw, D) or square (1, N, D) table."""
  if len(shape) == 4:
    return int(shape[1]), int(shape[2])
  if len(shape) == 3:
    side = _square_side(int(shape[1]))
    return None if side is None else (side, side)
  return None


def adapt_posemb(path: str, value: np.ndarray,
                 shape: tuple[int, ...]) -> np.ndarray:
  """`ViT.adapt_param`: resizes a position-embedding table, or raises.

  Args:
    path: '/'-joined parameter path; its last component must be
      'pos_embedding' for a resize.
    value: the checkpoint's array.
    shape: the shape this model wants: (1, gh, gw, D) or (1, N, D).

  Returns:
    `value` when it already has `shape`, else the table resized to
    `shape`'s grid, in `shape`'s layout and `value`'s dtype.
  """
  value = np.asarray(value)
  shape = tuple(int(n) for n in shape)
  if value.shape == shape:
    return value
  old, new = _posemb_grid(value.shape), _posemb_grid(shape)
  if (path.split("/")[-1] != "pos_embedding" or old is None or new is None
      or value.shape[0] != 1 or shape[0] != 1
      or value.shape[-1] != shape[-1]):
    raise InputShapeError(
        f"Parameter {path!r} has shape {value.shape} in the checkpoint but "
        f"{shape} in this model, and only a position embedding of another "
        "grid ((1, gh, gw, D), or (1, N, D) for a square grid) can be "
        "adapted. Match config.model to the source run or leave the "
        "parameter out (config.init_from.params).")
  grid = value.reshape(1, *old, value.shape[-1])
  resized = np.asarray(resize_posemb(jnp.asarray(grid), new))
  return resized.reshape(shape).astype(value.dtype)


@MODELS.register("vit")
def vit(*, bands: Sequence[Band], num_classes: int, variant: str = "B/16",
        patch_size: int | None = None, width: int | None = None,
        depth: int | None = None, num_heads: int | None = None,
        mlp_dim: int | None = None, **kwargs: Any) -> ViT:
  """Builds a ViT from a variant ('S/8') plus explicit overrides.

  Args:
    bands: input bands.
    num_classes: classifier outputs, 0 for a headless backbone.
    variant: '<size>/<patch>' with size in SIZES; patch may be left out when
      `patch_size` is given.
    patch_size, width, depth, num_heads, mlp_dim: override the variant.
      An overridden width without mlp_dim gets mlp_dim = 4 * width.
    **kwargs: any other `ViT` attribute (ffn, num_registers, pool, ...).

  Returns:
    The (unbound) ViT module.
  """
  if not bands:
    raise InputShapeError("vit needs at least one band; check config.data.bands.")
  size, variant_patch = parse_variant(variant)
  patch = patch_size or variant_patch
  if not patch:
    raise InputShapeError(f"variant {variant!r} names no patch size; write e.g. "
                     f"'{size}/16' or set patch_size.")
  v_width, v_depth, v_heads, v_mlp = SIZES[size]
  width = width or v_width
  mlp_dim = mlp_dim or (v_mlp if width == v_width else 4 * width)
  if "posemb_grid" in kwargs and kwargs["posemb_grid"] is not None:
    kwargs["posemb_grid"] = tuple(kwargs["posemb_grid"])
  return ViT(bands=tuple(bands), num_classes=num_classes, patch_size=patch,
             width=width, depth=depth if depth is not None else v_depth,
             num_heads=num_heads or v_heads, mlp_dim=mlp_dim, **kwargs)
