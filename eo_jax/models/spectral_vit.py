r"""Spatial-spectral ViT: wavelength-aware tokens per (band group, patch).

Registered as 'spectral_vit'. Sizes come from a ViT `variant` ('S/8') with
the same overrides as 'vit' (`width`, `depth`, `num_heads`, `mlp_dim`,
`patch_size`).

Band groups
-----------
The C input bands are split into G groups. `groups=(('B02', 'B03', 'B04'),
('B05', 'B06', 'B07', 'B8A'), ...)` names them (every band in exactly one
group, groups in the given order); without `groups`, the bands are sorted by
(centre wavelength, name) and cut into contiguous runs of `group_size` (the
last run may be shorter). A group's centre wavelength is the mean of its
bands' `Band.wavelength_nm`. `group_bands` / `group_channels` say which
bands (names / channel indices) form each group, `group_wavelengths` their
centres: what a per-group reconstruction target needs.

Tokens
------
Patches are p x p pixels on a (gh, gw) grid, N = gh * gw. Token (g, n) is
group g's view of patch n:

  token = embed_g(pixels of group g in patch n)    [or the mask token]
          + spatial(n)      2-D: learned (1, gh, gw, D) table, bilinearly
                            resized to other grids, or fixed sincos2d
          + spectral(g)     sinusoidal encoding of the group's centre
                            wavelength in nm, optionally through an MLP

The spectral term is a function of the wavelength, never of the group index,
so the same weights serve another sensor's groups.

Patch embedding (`embed`):
  * 'wavelength' (default; DOFA's dynamic weights): an MLP, the "weight
    generator", maps each band's wavelength encoding to that band's
    (p, p, D) projection and a D bias; a group token is the MEAN over the
    group's bands of their projected patches. No parameter depends on the
    number or the order of the bands: a model trained on 13 bands runs on
    7, 32 or 200 with the same parameters.
  * 'group' (SatMAE): one learned (p, p, |g|, D) projection per group,
    summed over the group's bands. Parameters 'embedding/kernel'
    (G, S, p, p, D) and 'embedding/bias' (G, D), S = the largest group (the
    slots of smaller groups are zeroed). Tied to this grouping: other bands
    raise a clear error.

Transformer (`mode`)
--------------------
'joint': one sequence [prefix (P), group 0's N patches, group 1's, ...] of
P + G * N tokens through `depth` plain ViT blocks 'block_<i>'. Full
spatial-spectral attention, quadratic in G * N: for small inputs.

'factorized' (default): `depth` layers, each a spatial block 'spatial_<i>'
and a spectral block 'spectral_<i>', organised in block groups of
`block_group_size` layers (the last group may be shorter). A block group
runs two branches from the same input and fuses them:

  z (B, G, N, D), prefix q (B, P, D)         block group input
  spatial branch, for i in the block group:
    per group: [q, z_g] (B*G, P + N, D) -> spatial_i -> split;
    q <- mean over groups of the G prefix outputs  (B, P, D)
    z_g <- the patch outputs                       (B, G, N, D)  = s
  spectral branch (from the same z), for i in the block group:
    per patch: the G group tokens (B*N, G, D) -> spectral_i  -> e (B, G, N, D)
  fusion 'fuse_<j>' (1x1 projection): z <- Dense_D(concat[s, e]) (B, G, N, D),
    initialised to (s + e) / 2 so the residual stream passes unchanged at
    init; the prefix tokens take the spatial branch's q.

Attention across positions sees one group at a time and attention across
groups one position at a time, so a layer costs G * (P + N)^2 + N * G^2 dot
products instead of (P + G N)^2. The prefix tokens (cls, registers) live in
the spatial branch; averaging their per-group copies after every spatial
block lets them gather every group. Stochastic depth drops a whole block
per sample (not per group sequence or per patch sequence); joint blocks
drop each residual branch per sample as the ViT.

Both modes end with a LayerNorm 'encoder_norm' on every token. With
`keep_indices` (below) the factorized flow is the same with N replaced by
the K kept patches.

Parameters
----------
'embedding/generator/{fc1,fc2,to_kernel,to_bias}' ('wavelength') or
'embedding/{kernel,bias}' ('group'); 'spectral_embedding/{fc1,fc2}' (only
with `spectral_embed='mlp'`); 'pos_embedding' (1, gh, gw, D) and
'cls_pos_embedding' (1, 1, D) (only with `posemb='learn'`); 'cls'
(1, 1, D); 'registers' (1, R, D); 'mask_token' (1, 1, D) (only
`use_mask_token`); 'block_<i>' ('joint') or 'spatial_<i>', 'spectral_<i>'
(vit.Block each) and 'fuse_<j>' (Dense 2D -> D) ('factorized');
'encoder_norm'; 'head' (with classes). Layer ids for layer-wise decay:
embeddings 0, layer i i + 1 (both of its blocks), 'fuse_<j>' the id of the
last layer of block group j, 'encoder_norm' and 'head' depth + 1.

Features
--------
'patch_embed' (B, G, N, D) tokens entering the transformer; 'block_<i>'
(B, P + G * N, D) every token after block i (joint) or after block group i
(factorized, fused), prefix first, then group-major; 'grid_<i>' (B, gh, gw,
D) block (group) i's patch tokens averaged over groups; 'group_tokens'
(B, G, gh, gw, D) and 'patch_tokens' (B, gh, gw, D) (their mean over groups)
after the final norm; 'cls' (B, D); 'registers' (B, R, D); 'prefix_tokens'
(B, P, D); 'pre_logits' (B, D): the cls token (`pool='cls'`) or the mean of
all group tokens (`pool='mean'`). Dense maps ('patch_tokens', 'grid_<i>')
have stride `patch_size`; the heads of the backbone contract use them
unchanged.

With `with_attention(which)`: 'attention_<i>' (B, heads, P + N, P + N) in
the ViT's layout, so the DINO attention figure works: in 'factorized' the
spatial attention of layer i averaged over groups; in 'joint' the full
attention with keys summed and queries averaged over groups (rows still sum
to one), the full (B, heads, P + G N, P + G N) matrix being
'token_attention_<i>'. 'factorized' also gives 'spectral_attention_<i>'
(B, N, heads, G, G).

Masking
-------
Replacement masks (need `use_mask_token=True` / `with_mask_token()`): the
token is replaced by the learned 'mask_token' before the spatial and
spectral embeddings are added, so it still knows where and which band group
it stands for. They combine (logical or) and work in both modes:
  * `mask` (B, N) bool: spatial patches, every group (iBOT / DINOv2);
  * `token_mask` (B, G, N) bool: single (group, patch) tokens;
  * `group_mask` (B, G) bool: whole band groups (spectral masking of a
    student view); the output then does not depend on those bands.
Dropping (MAE), `keep_indices` (B, K) int:
  * 'joint': indices into the G * N (group, patch) tokens, group-major
    (token g * N + n); 0 < K <= G * N. features 'visible_tokens' (B, K, D);
  * 'factorized': indices into the N spatial patches; every group of a kept
    patch is kept; 0 < K <= N. features 'visible_tokens' (B, K, D) (mean
    over groups, the layout objectives/mae.py's decoder reads) and
    'visible_group_tokens' (B, G, K, D).
  Both add 'prefix_tokens' and drop the grids. `maskable_tokens(h, w)` is
  the count `keep_indices` indexes (G * N or N). `mask` with `keep_indices`
  is an error; `token_mask` / `group_mask` with `keep_indices` apply before
  the tokens are gathered (dual spatial + spectral masking).

Invariances
-----------
Nothing depends on the channel order: groups are found by band name or by
sorted wavelength, and channels are gathered by index from the band list.
Both modes are equivariant to the order of the groups (attention is, the
spectral term is a function of the wavelength, prefix tokens and
'patch_tokens' average over groups), and the 'wavelength' embedding
averages over a group's bands, so with `embed='wavelength'` permuting the
bands (image channels and `bands` together) or the `groups` in the config
leaves the output, 'cls', 'patch_tokens' and the grids unchanged up to float
rounding (features with a group axis permute with the groups). Not
invariant:
  * `embed='group'` ties kernels to (group index, position in the group):
    reordering `groups` or the bands inside a group changes the model, and
    other band sets raise an error;
  * the grouping itself: automatic grouping of another band set (or
    another `group_size`) forms other groups, so a sensor change changes
    the tokens (the parameters still apply);
  * the learned spatial table is tied to positions (as in the ViT).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.data.bands import Band
from eo_jax.errors import ConfigValueError, InputShapeError
from eo_jax.models import vit as vit_lib
from eo_jax.models.registry import MODELS

Array = jax.Array
DType = Any

_LN_EPS = 1e-6  # the ViT's LayerNorm epsilon
MODES = ("factorized", "joint")
EMBEDS = ("wavelength", "group")
SPECTRAL_EMBEDS = ("sincos", "mlp")
# Parameters at depth 0 (layer-wise decay) and at the top.
_EMBED_PARAMS = ("embedding", "spectral_embedding", "cls", "cls_pos_embedding",
                 "pos_embedding", "registers", "mask_token")
_TOP_PARAMS = ("encoder_norm", "head")
_BLOCK = re.compile(r"(?:block|spatial|spectral)_(\d+)")
_FUSE = re.compile(r"fuse_(\d+)")


# ----------------------------------------------------------------- groups


def band_groups(bands: Sequence[Band],
                groups: Sequence[Sequence[str]] | None = None,
                group_size: int = 3) -> tuple[tuple[int, ...], ...]:
  """Channel indices of each band group.

  Args:
    bands: the input bands, in channel order.
    groups: band names per group; every band must be in exactly one group.
      None -> automatic grouping.
    group_size: bands per automatic group: the bands sorted by (wavelength,
      name) are cut into runs of this many, the last run possibly shorter.

  Returns:
    One tuple of channel indices per group, in group order.
  """
  names = [b.name for b in bands]
  if not names:
    raise ConfigValueError("spectral_vit needs at least one band; check "
                           "config.data.bands.")
  if groups is None:
    if int(group_size) < 1:
      raise ConfigValueError(f"config.model.group_size must be >= 1, got "
                             f"{group_size}.")
    # The name breaks wavelength ties, so the grouping never depends on the
    # channel order.
    order = sorted(range(len(bands)),
                   key=lambda i: (bands[i].wavelength_nm, bands[i].name))
    size = int(group_size)
    return tuple(tuple(order[i:i + size]) for i in range(0, len(order), size))
  out, seen = [], set()
  for group in groups:
    group = tuple(group) if not isinstance(group, str) else (group,)
    if not group:
      raise ConfigValueError("config.model.groups has an empty group.")
    for name in group:
      if name not in names:
        raise ConfigValueError(
            f"config.model.groups names band {name!r}, which is not among the "
            f"input bands {names}. Name only the dataset's bands, or leave "
            "groups unset to group by wavelength (config.model.group_size).")
      if name in seen:
        raise ConfigValueError(f"config.model.groups names band {name!r} "
                               "twice.")
      seen.add(name)
    out.append(tuple(names.index(n) for n in group))
  left = [n for n in names if n not in seen]
  if left:
    raise ConfigValueError(
        f"Bands {left} are in no group of config.model.groups; put each input "
        "band in one group, or select fewer bands (config.data.bands).")
  return tuple(out)


def wavelength_encoding(wavelengths_nm: Array, dim: int,
                        temperature: float = 10_000.) -> Array:
  """Sinusoidal encoding of wavelengths in nm, (n,) -> (n, dim).

  Half the channels are sin(f * wavelength), half cos(f * wavelength), for
  frequencies f spaced geometrically from 1 to 1/temperature rad/nm:
  periods from 6.3 nm (neighbouring hyperspectral bands differ) to 63 um
  (longer than any optical or thermal band, so no two wavelengths alias).
  """
  if dim % 2 or dim < 2:
    raise ConfigValueError(f"A wavelength encoding needs an even width, got "
                           f"{dim}.")
  half = dim // 2
  freq = 1.0 / temperature**(jnp.arange(half, dtype=jnp.float32) /
                             max(half - 1, 1))
  angle = jnp.asarray(wavelengths_nm, jnp.float32)[:, None] * freq
  return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


def group_slots(groups: Sequence[Sequence[int]]
                ) -> tuple[np.ndarray, np.ndarray]:
  """(G, S) channel index per (group, slot) and its validity; S = largest group.

  Groups are padded to S slots so that one einsum embeds every group (and the
  MAE decoder's per-group targets share one shape); padded slots point at
  channel 0 and get weight zero.
  """
  size = max(len(g) for g in groups)
  index = np.zeros((len(groups), size), np.int32)
  valid = np.zeros((len(groups), size), bool)
  for i, group in enumerate(groups):
    index[i, :len(group)] = group
    valid[i, :len(group)] = True
  return index, valid


# ----------------------------------------------------------------- layers


class WeightGenerator(nn.Module):
  """Band wavelengths (C,) nm -> patch kernels (C, p*p*D) and biases (C, D).

  DOFA's idea (Xiong et al. 2024) with an MLP generator: the projection of a
  band is a function of its wavelength, learned once for every sensor.
  Computed in float32: it runs once per call on C rows, and the generated
  kernels are parameters in all but name.
  """
  width: int
  patch_size: int
  wave_dim: int = 128
  hidden_dim: int = 256

  @nn.compact
  def __call__(self, wavelengths: Array) -> tuple[Array, Array]:
    p, d = self.patch_size, self.width
    h = wavelength_encoding(wavelengths, self.wave_dim)
    h = vit_lib.gelu(nn.Dense(self.hidden_dim, name="fc1")(h))
    h = vit_lib.gelu(nn.Dense(self.hidden_dim, name="fc2")(h))
    # Divided by p (= sqrt of the fan-in of one band's patch) so a generated
    # kernel starts at LeCun scale, as the ViT's patch embedding does.
    kernel = nn.Dense(p * p * d, name="to_kernel")(h) / p
    # Zero-initialised like the ViT's patch-embedding bias.
    bias = nn.Dense(d, kernel_init=nn.initializers.zeros, name="to_bias")(h)
    return kernel, bias


class SpectralPatchEmbed(nn.Module):
  """(B, H, W, C) -> (B, G * N, D): one token per (group, patch), group-major.

  `embed='wavelength'`: kernels from the `WeightGenerator`, averaged over the
  group's bands; `embed='group'`: a learned kernel per (group, slot), summed
  (see the module docstring).
  """
  width: int
  patch_size: int
  groups: tuple[tuple[int, ...], ...]
  wavelengths: tuple[float, ...]
  embed: str = "wavelength"
  wave_dim: int = 128
  generator_dim: int = 256
  dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, image: Array) -> Array:
    b, h, w, _ = image.shape
    p, d = self.patch_size, self.width
    index, valid = group_slots(self.groups)
    g, s = index.shape
    if self.embed == "wavelength":
      kernels, biases = WeightGenerator(d, p, self.wave_dim, self.generator_dim,
                                        name="generator")(
          jnp.asarray(self.wavelengths, jnp.float32))
      # Mean over the group's bands: a token's scale does not grow with the
      # group's size, and a band's order inside its group does not matter.
      weight = valid / valid.sum(axis=1, keepdims=True)
      kernel = kernels.reshape(-1, p, p, d)[index] * weight[..., None, None,
                                                            None]
      bias = jnp.einsum("gs,gsd->gd", weight, biases[index])
    elif self.embed == "group":
      shape = (g, s, p, p, d)
      if self.has_variable("params", "kernel"):
        got = tuple(self.get_variable("params", "kernel").shape)
        if got != shape:
          raise InputShapeError(
              f"embed='group' ties the patch embedding to its band groups: "
              f"the parameters were made for {got[0]} groups of up to "
              f"{got[1]} bands ('embedding/kernel' {got}), this model has "
              f"{g} groups of up to {s} bands ({shape}). Use the bands and "
              "groups of the checkpoint, or build with embed='wavelength' "
              "to run one set of parameters on any bands.")
      init = nn.initializers.variance_scaling(
          1.0, "fan_in", "normal", in_axis=(1, 2, 3), out_axis=4,
          batch_axis=(0,))
      kernel = self.param("kernel", init, shape) * valid[..., None, None, None]
      bias = self.param("bias", nn.initializers.zeros, (g, d))
    else:
      raise ConfigValueError(f"embed must be one of {EMBEDS}, got "
                             f"{self.embed!r}.")
    # Gathering the channels once, group by group, lets one einsum embed
    # every group (a grouped patchify convolution).
    x = jnp.take(image, jnp.asarray(index.reshape(-1)), axis=-1)
    x = x.reshape(b, h // p, p, w // p, p, g, s).astype(self.dtype)
    out = jnp.einsum("bhiwjgs,gsijd->bghwd", x, kernel.astype(self.dtype))
    out = out + bias.astype(self.dtype)[:, None, None, :]
    return out.reshape(b, g * (h // p) * (w // p), d)


class SpectralEmbedding(nn.Module):
  """Group centre wavelengths (G,) nm -> (G, D) spectral embeddings.

  `kind='sincos'`: the fixed `wavelength_encoding`; 'mlp': that encoding
  through a two-layer GELU MLP (parameters independent of G).
  """
  width: int
  kind: str = "sincos"

  @nn.compact
  def __call__(self, wavelengths: Array) -> Array:
    enc = wavelength_encoding(wavelengths, self.width)
    if self.kind == "sincos":
      return enc
    if self.kind != "mlp":
      raise ConfigValueError(f"spectral_embed must be one of "
                             f"{SPECTRAL_EMBEDS}, got {self.kind!r}.")
    h = vit_lib.gelu(nn.Dense(self.width, name="fc1")(enc))
    return nn.Dense(self.width, name="fc2")(h)


def _token_grid(patch_size: int, height: int, width: int) -> tuple[int, int]:
  if height % patch_size or width % patch_size:
    raise InputShapeError(
        f"Image size {height}x{width} is not a multiple of patch_size "
        f"{patch_size}; resize or crop the input (config.input.image_size) or "
        "pick another patch size.")
  return height // patch_size, width // patch_size


def _check_attention(which: Any) -> None:
  if which not in (False, True, "last", "all"):
    raise ConfigValueError(f"return_attention must be False, True/'last' or "
                           f"'all', got {which!r}.")


def _mean_of_two(key: Array, shape: Sequence[int], dtype: Any = jnp.float32
                 ) -> Array:
  """(2D, D) kernel of Dense(concat[s, e]) = (s + e) / 2."""
  del key
  two_d, d = shape
  if two_d != 2 * d:
    raise ValueError(f"fusion kernel must be (2D, D), got {shape}.")
  eye = jnp.eye(d, dtype=dtype)
  return 0.5 * jnp.concatenate([eye, eye], axis=0)


def _patch_attention(weights: Array, prefix: int, groups: int,
                     patches: int) -> Array:
  """Joint attention (B, h, P + G N, P + G N) -> (B, h, P + N, P + N).

  Keys are summed over groups (a query's attention to a patch, any band
  group) and queries averaged over groups, so rows still sum to one.
  """
  b, heads = weights.shape[:2]
  keys = jnp.concatenate(
      [weights[..., :prefix],
       weights[..., prefix:].reshape(b, heads, -1, groups, patches).sum(-2)],
      axis=-1)
  rows = keys[:, :, prefix:].reshape(b, heads, groups, patches, -1).mean(2)
  return jnp.concatenate([keys[:, :, :prefix], rows], axis=2)


# ------------------------------------------------------------------ model


def layer_id(path: str, depth: int,
             block_groups: Sequence[tuple[int, int]] = ()) -> int:
  """Depth of a parameter for layer-wise learning-rate decay.

  Embeddings (patch, spectral, position, cls, registers, mask token) -> 0;
  'block_<i>', 'spatial_<i>', 'spectral_<i>' -> i + 1; 'fuse_<j>' -> the
  depth of the last layer of block group j; the final norm, heads and
  anything unnamed -> depth + 1. The first path component naming a part
  decides (paths may carry prefixes).
  """
  for part in path.split("/"):
    m = _BLOCK.fullmatch(part)
    if m:
      return int(m.group(1)) + 1
    m = _FUSE.fullmatch(part)
    if m:
      j = int(m.group(1))
      return block_groups[j][1] if j < len(block_groups) else depth + 1
    if part in _EMBED_PARAMS:
      return 0
    if part in _TOP_PARAMS:
      return depth + 1
  return depth + 1


class SpectralViT(nn.Module):
  """Spatial-spectral ViT; see the module docstring for layout and masking.

  Attributes:
    bands: the input bands; the image must have len(bands) channels.
    num_classes: classifier outputs; 0 -> no head, output = pooled features.
    patch_size: patch side in pixels; must divide the image height and width.
    width, depth, num_heads, mlp_dim: transformer size; in 'factorized'
      mode each of the `depth` layers has a spatial and a spectral block.
    mode: 'factorized' or 'joint'.
    embed: 'wavelength' (generated per-band kernels) or 'group' (learned
      per-group kernels).
    groups: band names per group, or None for automatic grouping.
    group_size: bands per automatic group.
    block_group_size: layers per block group ('factorized'); the spatial and
      spectral branches are fused after each block group.
    spectral_embed: 'sincos' (fixed) or 'mlp' (sincos through an MLP).
    wave_dim: width of the wavelength encoding the weight generator reads.
    generator_dim: hidden width of the weight generator.
    ffn: 'mlp' (GELU) or 'swiglu'.
    num_registers: extra learned tokens without position embedding.
    pool: 'cls' or 'mean' (mean of every group token).
    posemb: 'learn' or 'sincos2d' (spatial; cls gets none with sincos2d).
    posemb_grid: grid of the learned table at init; None -> the init input's.
    layerscale_init: LayerScale init value; None -> off.
    drop_path: stochastic-depth rate of the last layer; layer i gets
      drop_path * i / (depth - 1). Needs rng 'dropout' when training.
    dropout: dropout after the embeddings and in each residual branch.
    use_mask_token: create the learned `mask_token` the masks need.
    return_attention: False, True (last layer) or 'all'.
    head_zeroinit: zero-initialise the classifier.
    head_norm: BatchNorm before the classifier (as the ViT's).
    dtype: compute dtype (params stay float32).
  """
  bands: tuple[Band, ...]
  num_classes: int = 0
  patch_size: int = 8
  width: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_dim: int = 1536
  mode: str = "factorized"
  embed: str = "wavelength"
  groups: tuple[tuple[str, ...], ...] | None = None
  group_size: int = 3
  block_group_size: int = 3
  spectral_embed: str = "sincos"
  wave_dim: int = 128
  generator_dim: int = 256
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

  # --------------------------------------------------------- band groups
  @property
  def group_channels(self) -> tuple[tuple[int, ...], ...]:
    """Channel indices of each group's bands (group order, slot order)."""
    return band_groups(self.bands, self.groups, self.group_size)

  @property
  def group_bands(self) -> tuple[tuple[str, ...], ...]:
    """Names of each group's bands."""
    return tuple(tuple(self.bands[i].name for i in g)
                 for g in self.group_channels)

  @property
  def num_groups(self) -> int:
    """G, the number of band groups (tokens per spatial patch)."""
    return len(self.group_channels)

  @property
  def group_wavelengths(self) -> tuple[float, ...]:
    """Centre wavelength (nm) of each group: the mean of its bands'."""
    return tuple(float(np.mean([self.bands[i].wavelength_nm for i in g]))
                 for g in self.group_channels)

  @property
  def block_groups(self) -> tuple[tuple[int, int], ...]:
    """(first layer, last layer + 1) of each 'factorized' block group."""
    size = max(int(self.block_group_size), 1)
    return tuple((i, min(i + size, self.depth))
                 for i in range(0, self.depth, size))

  # ------------------------------------------------- token-backbone API
  @property
  def band_agnostic(self) -> bool:
    """With embed='wavelength' no parameter depends on the bands: weights
    trained on one sensor's bands load for another's (`config.init_from`
    then skips its band check)."""
    return self.embed == "wavelength"

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: the class token and the registers."""
    return 1 + self.num_registers

  def token_grid(self, height: int, width: int) -> tuple[int, int]:
    """(gh, gw) patch grid of a height x width image; both must divide."""
    return _token_grid(self.patch_size, height, width)

  def maskable_tokens(self, height: int, width: int) -> int:
    """What `keep_indices` indexes: G * N tokens ('joint') or N patches."""
    return self._maskable(_token_grid(self.patch_size, height, width))

  def _maskable(self, grid: tuple[int, int]) -> int:
    return grid[0] * grid[1] * (self.num_groups if self.mode == "joint" else 1)

  def with_mask_token(self) -> "SpectralViT":
    """A copy with the learned `mask_token` that the masks need."""
    return self.clone(use_mask_token=True)

  def with_attention(self, which: bool | str = True) -> "SpectralViT":
    """A copy whose features hold attention weights (module docstring)."""
    _check_attention(which)
    return self.clone(return_attention=which)

  def adapt_param(self, path: str, value: np.ndarray,
                  shape: tuple[int, ...]) -> np.ndarray:
    """Resizes a 'pos_embedding' of another grid; other mismatches raise."""
    return vit_lib.adapt_posemb(path, value, shape)

  def dense_maps(self) -> dict[str, int]:
    """'patch_tokens' and every 'grid_<i>', at the patch stride."""
    count = self.depth if self.mode == "joint" else len(self.block_groups)
    maps = {"patch_tokens": self.patch_size}
    maps.update({f"grid_{i}": self.patch_size for i in range(count)})
    return maps

  def layer_id(self, path: str) -> int:
    """`layer_id(path, depth, block_groups)`: the layer-wise decay hook."""
    return layer_id(path, self.depth, self.block_groups)

  def num_layers(self) -> int:
    """depth + 1: the final norm and heads, above the last layer."""
    return self.depth + 1

  # ------------------------------------------------------------ checks
  def check_config(self) -> None:
    """Raises a ConfigValueError for an attribute that cannot work."""
    self._check_config()

  def _check_config(self) -> None:
    # Private, so summaries (which record public method calls) skip it.
    choices = (("mode", self.mode, MODES), ("embed", self.embed, EMBEDS),
               ("spectral_embed", self.spectral_embed, SPECTRAL_EMBEDS),
               ("pool", self.pool, ("cls", "mean")),
               ("posemb", self.posemb, ("learn", "sincos2d")),
               ("ffn", self.ffn, ("mlp", "swiglu")))
    for name, value, allowed in choices:
      if value not in allowed:
        raise ConfigValueError(f"config.model.{name} must be one of {allowed}, "
                               f"got {value!r}.")
    if self.depth < 1 or self.block_group_size < 1:
      raise ConfigValueError(f"depth and block_group_size must be >= 1, got "
                             f"{self.depth} and {self.block_group_size}.")
    if self.width % 2 or self.wave_dim % 2:
      raise ConfigValueError(f"width and wave_dim must be even (sinusoidal "
                             f"wavelength encodings), got {self.width} and "
                             f"{self.wave_dim}.")
    band_groups(self.bands, self.groups, self.group_size)

  def _check_input(self, image: Array, mask: Array | None,
                   token_mask: Array | None, group_mask: Array | None,
                   keep_indices: Array | None) -> tuple[int, int]:
    self._check_config()
    if image.ndim != 4:
      raise InputShapeError(f"SpectralViT expects images (B, H, W, C), got "
                            f"shape {image.shape}.")
    b, h, w, c = image.shape
    if c != len(self.bands):
      raise InputShapeError(
          f"Image has {c} channels but the model was built for "
          f"{len(self.bands)} bands {[x.name for x in self.bands]}; build it "
          "with the image's bands (config.data.bands).")
    grid = _token_grid(self.patch_size, h, w)
    n, g = grid[0] * grid[1], self.num_groups
    masks = (("mask", mask, (b, n), "(B, N_patches)"),
             ("token_mask", token_mask, (b, g, n), "(B, G, N_patches)"),
             ("group_mask", group_mask, (b, g), "(B, G)"))
    for name, value, shape, layout in masks:
      if value is None:
        continue
      if not self.use_mask_token:
        raise InputShapeError(f"`{name}` needs a mask token: build the model "
                              "with use_mask_token=True (with_mask_token()).")
      if tuple(value.shape) != shape:
        raise InputShapeError(
            f"{name} must be {layout} = {shape} for {g} band groups "
            f"{list(self.group_bands)} on a {grid[0]}x{grid[1]} grid, got "
            f"{tuple(value.shape)}.")
    if keep_indices is not None:
      if mask is not None:
        raise InputShapeError("Pass either `mask` (iBOT/DINOv2) or "
                              "`keep_indices` (MAE), not both.")
      limit = self._maskable(grid)
      what = ("(group, patch) tokens, index g * N + n" if self.mode == "joint"
              else "spatial patches (every group of a kept patch is kept)")
      if (keep_indices.ndim != 2 or keep_indices.shape[0] != b
          or not 0 < keep_indices.shape[1] <= limit):
        raise InputShapeError(
            f"keep_indices must be (B, K) ints with 0 < K <= {limit}: in "
            f"mode={self.mode!r} they index the {limit} {what}; got shape "
            f"{tuple(keep_indices.shape)}.")
    return grid

  # ------------------------------------------------------------- pieces
  def _position_embedding(self, grid: tuple[int, int]
                          ) -> tuple[Array, Array | None]:
    """(1, gh, gw, D) spatial table and the (1, 1, D) cls one (or None)."""
    if self.posemb == "sincos2d":
      return vit_lib.posemb_sincos_2d(grid, self.width), None
    stored = tuple(self.posemb_grid or grid)
    if self.has_variable("params", "pos_embedding"):
      # Applied with a checkpoint: the table's own shape says its grid.
      stored = tuple(self.get_variable("params", "pos_embedding").shape[1:3])
    init = nn.initializers.normal(0.02)
    table = self.param("pos_embedding", init, (1, *stored, self.width))
    cls_pe = self.param("cls_pos_embedding", init, (1, 1, self.width))
    return vit_lib.resize_posemb(table, grid), cls_pe

  def _token_mask(self, shape: tuple[int, int, int], mask: Array | None,
                  token_mask: Array | None, group_mask: Array | None
                  ) -> Array | None:
    """The (B, G, N) union of the three replacement masks, or None."""
    out = None
    for m in (None if mask is None else mask[:, None, :],
              token_mask,
              None if group_mask is None else group_mask[:, :, None]):
      if m is not None:
        m = jnp.broadcast_to(m.astype(bool), shape)
        out = m if out is None else out | m
    return out

  def _block(self, name: str, x: Array, batch: int, rate: float, train: bool,
             want: bool) -> tuple[Array, Array | None]:
    """A ViT block over (batch * k, T, D) sequences, drop-path per sample.

    The Block's own drop path would drop a group's (or a patch's) sequence;
    here the whole block update of a sample is dropped, as stochastic depth
    over samples intends.
    """
    y, weights = vit_lib.Block(self.num_heads, self.mlp_dim, self.ffn,
                               self.dropout, 0.0, self.layerscale_init,
                               self.dtype, name=name)(x, train, want)
    if train and rate > 0:
      delta = (y - x).reshape(batch, -1, x.shape[-1])
      delta = vit_lib.drop_path(delta, rate, self.make_rng("dropout"))
      y = x + delta.reshape(x.shape)
    return y, weights

  def _wants(self, which: bool | str, i: int) -> bool:
    return which == "all" or (which in (True, "last") and i == self.depth - 1)

  def _rate(self, i: int) -> float:
    return self.drop_path * i / max(self.depth - 1, 1)

  # --------------------------------------------------------------- call
  @nn.compact
  def __call__(self, image: Array, train: bool = False,
               mask: Array | None = None, *,
               token_mask: Array | None = None,
               group_mask: Array | None = None,
               keep_indices: Array | None = None,
               return_attention: bool | str | None = None
               ) -> tuple[Array, dict[str, Array]]:
    """Runs the model.

    Args:
      image: (B, H, W, C) with C == len(bands).
      train: enables dropout and drop-path (rng 'dropout').
      mask: optional (B, N) bool, True = every group of that patch becomes
        the mask token.
      token_mask: optional (B, G, N) bool, single (group, patch) tokens.
      group_mask: optional (B, G) bool, whole band groups.
      keep_indices: optional (B, K) int; 'joint': (group, patch) tokens
        g * N + n, 'factorized': spatial patches. Only those enter the
        transformer (MAE).
      return_attention: overrides the `return_attention` attribute.

    Returns:
      (output, features): logits (B, num_classes) in float32, or the pooled
      representation (B, D) when num_classes == 0; features as listed in the
      module docstring.
    """
    grid = self._check_input(image, mask, token_mask, group_mask,
                             keep_indices)
    which = self.return_attention if return_attention is None else (
        return_attention)
    _check_attention(which)
    b, d = image.shape[0], self.width
    g, n = self.num_groups, grid[0] * grid[1]
    prefix_len = self.num_prefix_tokens
    features: dict[str, Array] = {}

    x = SpectralPatchEmbed(
        d, self.patch_size, self.group_channels,
        tuple(float(band.wavelength_nm) for band in self.bands), self.embed,
        self.wave_dim, self.generator_dim, self.dtype, name="embedding")(image)
    x = x.reshape(b, g, n, d)
    if self.use_mask_token:
      # Created even when unused, so a model initialised without masks can
      # be applied with them.
      token = self.param("mask_token", nn.initializers.zeros, (1, 1, d))
      masked = self._token_mask((b, g, n), mask, token_mask, group_mask)
      if masked is not None:
        x = jnp.where(masked[..., None], token.astype(x.dtype), x)
    patch_pe, cls_pe = self._position_embedding(grid)
    spectral = SpectralEmbedding(d, self.spectral_embed,
                                 name="spectral_embedding")(
        jnp.asarray(self.group_wavelengths, jnp.float32))
    x = (x + patch_pe.reshape(1, 1, n, d).astype(x.dtype)
         + spectral[None, :, None, :].astype(x.dtype))
    features["patch_embed"] = x

    cls = self.param("cls", nn.initializers.normal(1e-6), (1, 1, d))
    if cls_pe is not None:
      cls = cls + cls_pe
    prefix = [jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d))]
    if self.num_registers:
      regs = self.param("registers", nn.initializers.normal(1e-6),
                        (1, self.num_registers, d))
      prefix.append(jnp.broadcast_to(regs.astype(x.dtype),
                                     (b, self.num_registers, d)))
    prefix = jnp.concatenate(prefix, axis=1)

    keep = None if keep_indices is None else keep_indices.astype(jnp.int32)
    if self.mode == "joint":
      prefix, tokens = self._joint(x, prefix, keep, grid, train, which,
                                   features)
    else:
      prefix, tokens = self._factorized(x, prefix, keep, grid, train, which,
                                        features)

    # tokens: (B, G, n', D) ('factorized', n' = N or K), or (B, K, D)
    # ('joint' with keep_indices); prefix (B, P, D); both normalised.
    features["cls"] = prefix[:, 0]
    if self.num_registers:
      features["registers"] = prefix[:, 1:]
    features["prefix_tokens"] = prefix
    if keep is None:
      features["group_tokens"] = tokens.reshape(b, g, *grid, d)
      features["patch_tokens"] = tokens.mean(axis=1).reshape(b, *grid, d)
    elif tokens.ndim == 4:
      features["visible_group_tokens"] = tokens
      features["visible_tokens"] = tokens.mean(axis=1)
    else:
      features["visible_tokens"] = tokens
    pooled = prefix[:, 0] if self.pool == "cls" else tokens.reshape(
        b, -1, d).mean(axis=1)
    features["pre_logits"] = pooled

    if not self.num_classes:
      return pooled, features
    kernel_init = (nn.initializers.zeros if self.head_zeroinit
                   else nn.initializers.xavier_uniform())
    if self.head_norm:
      logits = vit_lib.NormLinearHead(self.num_classes, kernel_init,
                                      self.dtype, name="head")(pooled, train)
    else:
      logits = nn.Dense(self.num_classes, dtype=self.dtype,
                        kernel_init=kernel_init, name="head")(pooled)
    return logits.astype(jnp.float32), features

  def _final_norm(self, prefix: Array, tokens: Array) -> tuple[Array, Array]:
    """'encoder_norm' over (B, P, D) and any (B, ..., D) tokens."""
    b, d = prefix.shape[0], prefix.shape[-1]
    flat = jnp.concatenate([prefix, tokens.reshape(b, -1, d)], axis=1)
    flat = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name="encoder_norm")(flat)
    p = prefix.shape[1]
    return flat[:, :p], flat[:, p:].reshape(tokens.shape)

  def _joint(self, x: Array, prefix: Array, keep: Array | None,
             grid: tuple[int, int], train: bool, which: bool | str,
             features: dict[str, Array]) -> tuple[Array, Array]:
    """Plain ViT blocks over [prefix, every (group, patch) token]."""
    b, g, n, d = x.shape
    p = prefix.shape[1]
    t = x.reshape(b, g * n, d)
    if keep is not None:
      t = jnp.take_along_axis(t, keep[..., None], axis=1)
    t = jnp.concatenate([prefix, t], axis=1)
    t = nn.Dropout(self.dropout)(t, deterministic=not train)
    for i in range(self.depth):
      t, weights = vit_lib.Block(self.num_heads, self.mlp_dim, self.ffn,
                                 self.dropout, self._rate(i),
                                 self.layerscale_init, self.dtype,
                                 name=f"block_{i}")(t, train,
                                                    self._wants(which, i))
      features[f"block_{i}"] = t
      if keep is None:
        features[f"grid_{i}"] = t[:, p:].reshape(b, g, *grid, d).mean(axis=1)
      if weights is not None:
        features[f"token_attention_{i}"] = weights
        features[f"attention_{i}"] = (
            weights if keep is not None else _patch_attention(weights, p, g, n))
    prefix, tokens = self._final_norm(t[:, :p], t[:, p:])
    return prefix, tokens if keep is not None else tokens.reshape(b, g, n, d)

  def _factorized(self, x: Array, prefix: Array, keep: Array | None,
                  grid: tuple[int, int], train: bool, which: bool | str,
                  features: dict[str, Array]) -> tuple[Array, Array]:
    """Block groups of parallel spatial and spectral branches, fused 1x1."""
    b, g, _, d = x.shape
    p = prefix.shape[1]
    if keep is not None:
      x = jnp.take_along_axis(x, keep[:, None, :, None], axis=2)
    n = x.shape[2]
    # One dropout over every token, as the ViT's after its embeddings.
    t = jnp.concatenate([prefix, x.reshape(b, g * n, d)], axis=1)
    t = nn.Dropout(self.dropout)(t, deterministic=not train)
    q, z = t[:, :p], t[:, p:].reshape(b, g, n, d)
    for j, (start, stop) in enumerate(self.block_groups):
      # Spatial branch: each group's patches (and the prefix) attend across
      # positions.
      s, q_next = z, q
      for i in range(start, stop):
        seq = jnp.concatenate(
            [jnp.broadcast_to(q_next[:, None], (b, g, p, d)), s], axis=2)
        seq, weights = self._block(f"spatial_{i}", seq.reshape(b * g, p + n, d),
                                   b, self._rate(i), train,
                                   self._wants(which, i))
        seq = seq.reshape(b, g, p + n, d)
        q_next, s = seq[:, :, :p].mean(axis=1), seq[:, :, p:]
        if weights is not None:
          features[f"attention_{i}"] = weights.reshape(
              b, g, *weights.shape[1:]).mean(axis=1)
      # Spectral branch, from the same input: each position's groups attend
      # across wavelengths.
      e = z.transpose(0, 2, 1, 3).reshape(b * n, g, d)
      for i in range(start, stop):
        e, weights = self._block(f"spectral_{i}", e, b, self._rate(i), train,
                                 self._wants(which, i))
        if weights is not None:
          features[f"spectral_attention_{i}"] = weights.reshape(
              b, n, *weights.shape[1:])
      e = e.reshape(b, n, g, d).transpose(0, 2, 1, 3)
      # 1x1 fusion of the two representations of every token.
      fused = nn.Dense(d, dtype=self.dtype, kernel_init=_mean_of_two,
                       name=f"fuse_{j}")(
          jnp.concatenate([s, e], axis=-1).reshape(b, g * n, 2 * d))
      z, q = fused.reshape(b, g, n, d), q_next
      features[f"block_{j}"] = jnp.concatenate([q, fused], axis=1)
      if keep is None:
        features[f"grid_{j}"] = z.reshape(b, g, *grid, d).mean(axis=1)
    return self._final_norm(q, z)

  def encode_visible(self, image: Array, keep_indices: Array,
                     train: bool = False) -> tuple[Array, dict[str, Array]]:
    """MAE encoder: `self(image, train, keep_indices=keep_indices)`."""
    return self(image, train, keep_indices=keep_indices)


@MODELS.register("spectral_vit")
def spectral_vit(*, bands: Sequence[Band], num_classes: int,
                 variant: str = "S/8", patch_size: int | None = None,
                 width: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, mlp_dim: int | None = None,
                 **kwargs: Any) -> SpectralViT:
  """Builds a SpectralViT from a ViT variant ('S/8') plus overrides.

  Args:
    bands: input bands (their wavelengths define the groups and embeddings).
    num_classes: classifier outputs, 0 for a headless backbone.
    variant: '<size>/<patch>' with size in vit.SIZES.
    patch_size, width, depth, num_heads, mlp_dim: override the variant; an
      overridden width without mlp_dim gets mlp_dim = 4 * width.
    **kwargs: any other `SpectralViT` attribute (mode, embed, groups,
      group_size, block_group_size, spectral_embed, pool, ...).

  Returns:
    The (unbound) SpectralViT; its configuration is checked here.
  """
  size, variant_patch = vit_lib.parse_variant(variant)
  patch = patch_size or variant_patch
  if not patch:
    raise ConfigValueError(f"variant {variant!r} names no patch size; write "
                           f"e.g. '{size}/8' or set patch_size.")
  v_width, v_depth, v_heads, v_mlp = vit_lib.SIZES[size]
  width = width or v_width
  mlp_dim = mlp_dim or (v_mlp if width == v_width else 4 * width)
  if kwargs.get("posemb_grid") is not None:
    kwargs["posemb_grid"] = tuple(kwargs["posemb_grid"])
  if kwargs.get("groups") is not None:
    # Config files give lists; module attributes must be hashable.
    kwargs["groups"] = tuple((grp,) if isinstance(grp, str) else tuple(grp)
                             for grp in kwargs["groups"])
  model = SpectralViT(bands=tuple(bands), num_classes=num_classes,
                      patch_size=patch, width=width,
                      depth=depth if depth is not None else v_depth,
                      num_heads=num_heads or v_heads, mlp_dim=mlp_dim,
                      **kwargs)
  model.check_config()
  return model
