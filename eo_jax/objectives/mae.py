"""Masked-autoencoder pretraining ('mae') for images with any number of bands.

He et al., "Masked Autoencoders Are Scalable Vision Learners" (2021). Per
sample, `config.mae.mask_ratio` of the patches are hidden at random; the ViT
from `config.model` (built headless) encodes only the visible ones, and a
light decoder (`models/mae_decoder.py`) predicts the pixels of every band of
every patch. The loss is the mean squared error over the MASKED patches
only; with `norm_pix_loss` each target patch is first standardised by its
own mean and variance over all its pixels and bands.

Parameters are {'encoder': <ViT params>, 'decoder': <decoder params>}, so a
downstream run takes the encoder with `config.init_from.source_prefix =
'encoder'`.

Settings live in `config.mae` (see `DEFAULTS`; `default_config()` returns
them as a ConfigDict for experiment files). Evaluation hides patches with a
FIXED key (derived from `config.seed`), so the validation loss of two
checkpoints compares the same masks; each example's mask then depends on its
position in the eval batch; the 'mean' evaluator averages the per-example
losses. `visualize` draws `reconstruction.png` (`reconstruction_<split>.png`
for splits other than 'val'); `embed` gives the encoder's pooled features of
unmasked images to frozen-feature probes (`config.evals`, types 'knn' and
'linear_probe'); `predict` gives reconstructions. The encoder may be any
token backbone (eo_jax/models/backbone.py).

Band-group tokens (a spatial-spectral ViT, 'spectral_vit': G band groups x
N patches; recognised by its `num_groups`, `group_channels`,
`group_wavelengths` and `maskable_tokens`, not by its class):

* target: each (group, patch) token's pixels, the p*p*|g| values of group
  g's bands in patch n, laid out (row, column, slot) and padded to the
  largest group's S bands (`mae_decoder.group_patchify`); with
  `norm_pix_loss` each token is standardised by the mean and unbiased
  variance of its own valid values. Padded slots never count: a token's
  error is the mean over its valid values, and the loss is the mean over
  the MASKED tokens of that error (per example, then over the batch);
* decoder: G * N tokens, each with the spatial sine-cosine position of its
  patch plus a fixed sine-cosine of its group's centre wavelength; it
  predicts p*p*S values per token;
* `config.mae.masking` chooses what `mask_ratio` hides (each choice is
  drawn by `masking.token_masking` at the unit's level):
    'patches' (default): whole spatial patches, every group of a patch;
    'tokens': single (group, patch) tokens; 'joint' mode only (a
      'factorized' encoder drops whole patches, never single tokens);
    'groups': whole band groups, every patch of a group (at least one group
      stays visible, so G >= 2). In 'joint' mode the encoder drops those
      tokens (`keep_indices` over the G * N tokens); in 'factorized' mode,
      whose `keep_indices` drop only whole patches, the encoder is built
      `with_mask_token()` and gets `group_mask`: the hidden groups' tokens
      are its mask token, so its output does not depend on their bands
      (correct, but the encoder still runs on all G * N tokens: no compute
      is saved; a `keep_groups` argument of the model would save it). In
      both modes the decoder gets the encoder's tokens of the visible
      groups only, its own mask token elsewhere, as for the other units.
  A backbone without band groups (the ViT) takes 'patches' only, where
  nothing changes (one token per patch, all bands).
`reconstruct`, `predict` and `visualize` put the groups back into
(H, W, C) images; the figure greys out pixels hidden in any of its bands.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.models.mae_decoder import (MAEDecoder, group_patchify,
                                       group_unpatchify, group_valid,
                                       patchify, unpatchify)
from eo_jax.objectives import masking
from eo_jax.objectives.base import (OBJECTIVES, Objective, StepOutput,
                                    TrainState, Variables, display_bands,
                                    objective_settings, png_name, token_backbone)
from eo_jax.visualize import reconstruction

#: `config.mae` keys and their defaults (MAE's ViT recipe).
DEFAULTS: dict[str, Any] = {
    "mask_ratio": 0.75,
    "decoder_width": 512,
    "decoder_depth": 8,
    "decoder_heads": 16,
    "decoder_mlp_dim": 0,        # 0 -> 4 * decoder_width
    "norm_pix_loss": True,
    "norm_pix_eps": 1e-6,
    "vis_examples": 4,           # rows of reconstruction.png; 0 -> no PNG
    # What mask_ratio hides: 'patches', 'tokens' or 'groups' (band-group
    # backbones; module docstring).
    "masking": "patches",
}

MASKINGS = masking.UNITS
#: What a band-group backbone must offer for per-group targets and masking.
_GROUP_API = ("num_groups", "group_channels", "group_wavelengths",
              "maskable_tokens")

_EVAL_MASK_SALT = 0x3AE  # separates the eval masks' key from other seeds


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`config.mae` with MAE's defaults, `overrides` applied."""
  return ml_collections.ConfigDict(
      objective_settings("mae", overrides, DEFAULTS))


def set_mae_optim(optim: ml_collections.ConfigDict, *, base_lr: float,
                  batch_size: int, epochs: float) -> None:
  """Sets `config.optim` to MAE's pretraining recipe (He et al. 2022).

  AdamW (0.9, 0.95), weight decay 0.05, lr = base_lr x batch / 256, linear
  warmup over the first 5% of the `epochs`, then cosine to 0.
  """
  optim.name = "adamw"
  optim.b1, optim.b2 = 0.9, 0.95
  optim.weight_decay = 0.05
  optim.lr = base_lr * batch_size / 256
  optim.schedule = "cosine"
  optim.warmup_epochs = 0.05 * epochs


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return objective_settings("mae", config.get("mae", None), DEFAULTS)


# ---------------------------------------------------------------------------
# Targets and loss (pure functions, tested by hand).
# ---------------------------------------------------------------------------


def patch_targets(image: jax.Array, patch_size: int, norm_pix: bool,
                  eps: float = 1e-6) -> jax.Array:
  """(B, H, W, C) images -> (B, N, p*p*C) reconstruction targets.

  With `norm_pix`, each patch is standardised by the mean and variance of
  all its p*p*C values; the variance is the unbiased one (ddof=1), as in the
  MAE reference code (`torch.var`).
  """
  target = patchify(image.astype(jnp.float32), patch_size)
  if not norm_pix:
    return target
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True, ddof=1)
  return (target - mean) / jnp.sqrt(var + eps)


def _token_stats(values: jax.Array, valid: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Mean and unbiased variance (B, T, 1) of each token's valid values."""
  count = valid.sum(axis=-1, keepdims=True)
  mean = jnp.sum(values * valid, axis=-1, keepdims=True) / count
  sq = jnp.sum(jnp.square((values - mean) * valid), axis=-1, keepdims=True)
  # ddof=1 as `patch_targets`; a token of one value gets variance 0, not 0/0.
  return mean, sq / jnp.maximum(count - 1.0, 1.0)


def group_targets(image: jax.Array, patch_size: int,
                  groups: tuple[tuple[int, ...], ...], norm_pix: bool,
                  eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """(B, H, W, C) -> (B, G*N, p*p*S) targets per (group, patch) token and
  their (G*N, p*p*S) float32 validity (0 on padding slots).

  With `norm_pix`, each token is standardised by the mean and unbiased
  variance of its valid values (p*p*|g| of them); padding slots stay 0.
  """
  target = group_patchify(image.astype(jnp.float32), patch_size, groups)
  valid = jnp.asarray(group_valid(patch_size, groups,
                                  target.shape[1] // len(groups)), jnp.float32)
  if not norm_pix:
    return target, valid
  mean, var = _token_stats(target, valid)
  return (target - mean) / jnp.sqrt(var + eps) * valid, valid


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array,
               valid: jax.Array | None = None) -> jax.Array:
  """Per-example mean over masked patches of the per-patch MSE, shape (B,).

  Args:
    pred, target: (B, N, P) predicted and true patch (token) values.
    mask: (B, N), 1 = masked (counted), 0 = visible (ignored).
    valid: optional 0/1 weights broadcastable to (B, N, P): a token's MSE is
      then the mean over its valid values only (band-group padding).
  """
  if valid is None:
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  else:
    valid = jnp.broadcast_to(valid, pred.shape).astype(jnp.float32)
    per_patch = (jnp.sum(jnp.square(pred - target) * valid, axis=-1)
                 / jnp.maximum(valid.sum(axis=-1), 1.0))
  mask = mask.astype(per_patch.dtype)
  return jnp.sum(per_patch * mask, axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def denormalize_prediction(pred: jax.Array, image: jax.Array, patch_size: int,
                           norm_pix: bool, eps: float = 1e-6) -> jax.Array:
  """Predicted patches in the input's units (undoes `norm_pix` with the TRUE
  patch mean and variance, as MAE's figures do)."""
  if not norm_pix:
    return pred
  raw = patchify(image.astype(jnp.float32), patch_size)
  mean = raw.mean(axis=-1, keepdims=True)
  var = raw.var(axis=-1, keepdims=True, ddof=1)
  return pred * jnp.sqrt(var + eps) + mean


def denormalize_group_prediction(pred: jax.Array, image: jax.Array,
                                 patch_size: int,
                                 groups: tuple[tuple[int, ...], ...],
                                 norm_pix: bool, eps: float = 1e-6
                                 ) -> jax.Array:
  """`denormalize_prediction` for (B, G*N, p*p*S) group tokens: each token
  with the TRUE mean and variance of its valid values."""
  if not norm_pix:
    return pred
  raw = group_patchify(image.astype(jnp.float32), patch_size, groups)
  valid = jnp.asarray(group_valid(patch_size, groups,
                                  raw.shape[1] // len(groups)), jnp.float32)
  mean, var = _token_stats(raw, valid)
  return pred * jnp.sqrt(var + eps) + mean


# ---------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------


def band_groups_of(model: Any) -> tuple[tuple[int, ...], ...] | None:
  """The channel indices of each band group of a band-group token backbone
  (the spatial-spectral ViT), or None for a backbone without groups."""
  if not all(hasattr(model, name) for name in _GROUP_API):
    return None
  return tuple(tuple(int(c) for c in g) for g in model.group_channels)


@OBJECTIVES.register("mae")
class MAE(Objective):
  """Masked autoencoder; see the module docstring."""

  main_metric = "loss"
  encoder_prefix = "encoder"

  def __init__(self, config: ml_collections.ConfigDict, info: DatasetInfo,
               run_length: tuple[int, int] | None = None):
    super().__init__(config, info, run_length)
    self.settings = _settings(config)
    self.encoder = token_backbone(config, info, "mae",
                                  "encodes only the visible patches")
    self.patch_size = int(self.encoder.patch_size)
    s = self.settings
    if not 0.0 < float(s["mask_ratio"]) < 1.0:
      raise ConfigValueError(f"config.mae.mask_ratio must be in (0, 1), got "
                       f"{s['mask_ratio']}.")
    self.masking = str(s["masking"])
    self.groups = band_groups_of(self.encoder)
    self._check_masking()
    # 'joint' spatial-spectral encoders drop single (group, patch) tokens:
    # `keep_indices` then index the G tokens of every patch. Asked through
    # the contract's `maskable_tokens` rather than a mode attribute.
    p = self.patch_size
    self._drops_tokens = (self.groups is not None and
                          int(self.encoder.maskable_tokens(p, p))
                          == len(self.groups))
    if (self.groups is not None and self.masking == "groups"
        and not self._drops_tokens):
      # A factorized encoder cannot drop groups: it replaces them by its
      # mask token (`group_mask`), so it needs one.
      self.encoder = self.encoder.with_mask_token()
    values_per_pixel = (info.num_bands if self.groups is None
                        else max(len(g) for g in self.groups))
    self.decoder = MAEDecoder(
        patch_size=self.patch_size, num_bands=values_per_pixel,
        width=int(s["decoder_width"]), depth=int(s["decoder_depth"]),
        num_heads=int(s["decoder_heads"]),
        mlp_dim=int(s["decoder_mlp_dim"]) or None,
        wavelengths=(() if self.groups is None else tuple(
            float(w) for w in self.encoder.group_wavelengths)),
        dtype=self.encoder.dtype)
    self._num_prefix = int(self.encoder.num_prefix_tokens)
    self._reconstruct_fn = None

  def _check_masking(self) -> None:
    """A ConfigValueError for a `config.mae.masking` this encoder cannot do."""
    if self.masking not in MASKINGS:
      raise ConfigValueError(f"config.mae.masking must be one of {MASKINGS}, "
                             f"got {self.masking!r}.")
    if self.masking == "patches":
      return
    if self.groups is None:
      raise ConfigValueError(
          f"config.mae.masking={self.masking!r} hides band groups of "
          f"(group, patch) tokens and needs a backbone with band groups "
          f"(config.model.name='spectral_vit'); "
          f"{type(self.encoder).__name__} has one token per patch. Set "
          "config.mae.masking='patches'.")
    p = self.patch_size
    g = len(self.groups)
    if (self.masking == "tokens" and g > 1
        and int(self.encoder.maskable_tokens(p, p)) != g):
      raise ConfigValueError(
          "config.mae.masking='tokens' drops single (group, patch) tokens, "
          "which only a 'joint' spatial-spectral encoder can (a "
          "'factorized' one drops whole patches). Set config.model.mode="
          "'joint', or config.mae.masking='patches' or 'groups'.")
    if self.masking == "groups":
      if g < 2:
        raise ConfigValueError(
            f"config.mae.masking='groups' hides whole band groups, but the "
            f"bands form {g} group(s) {self.encoder.group_bands}; use more "
            "groups (config.model.group_size / groups) or masking='patches'.")
      masking.num_visible(g, float(self.settings["mask_ratio"]), "groups")

  # -------------------------------------------------------------- forward
  def _grid(self, image: jax.Array) -> tuple[int, int]:
    _, h, w, _ = image.shape
    p = self.patch_size
    if h % p or w % p:
      raise ConfigValueError(f"Image size {h}x{w} is not a multiple of the ViT's "
                       f"patch_size {p}; set config.input.image_size.")
    return h // p, w // p

  def draw_mask(self, rng: jax.Array, batch_size: int, grid: tuple[int, int]
                ) -> tuple[masking.RandomMask, dict[str, jax.Array]]:
    """(the mask of what the decoder predicts, the encoder's mask arguments).

    The mask is over the N patches (ViT) or the G * N (group, patch) tokens
    (band groups); the arguments are `keep_indices` (dropping) or
    `group_mask` (a factorized encoder with masking='groups').
    """
    n = grid[0] * grid[1]
    ratio = self.settings["mask_ratio"]
    if self.groups is None:
      m = masking.random_masking(rng, batch_size, n, ratio)
      return m, {"keep_indices": m.keep_indices}
    tm = masking.token_masking(rng, batch_size, len(self.groups), n, ratio,
                               self.masking)
    if self._drops_tokens:
      return tm.tokens, {"keep_indices": tm.tokens.keep_indices}
    if self.masking == "patches":
      return tm.tokens, {"keep_indices": tm.units.keep_indices}
    return tm.tokens, {"group_mask": tm.units.mask > 0}

  def masked_forward(self, params, image: jax.Array, mask_rng: jax.Array, *,
              train: bool = False, dropout_rng: jax.Array | None = None
              ) -> tuple[jax.Array, masking.RandomMask]:
    """Masks `image` with `mask_rng`, encodes the visible patches, decodes.

    Returns the predicted patches (B, N, p*p*C) (normalised-pixel space when
    `norm_pix_loss`) and the `RandomMask` used; with band groups, the
    predicted tokens (B, G*N, p*p*S) and the token-level `RandomMask`.
    """
    grid = self._grid(image)
    m, encoder_args = self.draw_mask(mask_rng, image.shape[0], grid)
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    _, features = self.encoder.apply(
        {"params": params["encoder"]}, image, train, rngs=rngs, **encoder_args)
    pred = self.decoder.apply({"params": params["decoder"]},
                              self._decoder_tokens(features, m),
                              m.restore_indices, grid, self._num_prefix, train,
                              rngs=rngs)
    return pred, m

  def _decoder_tokens(self, features: Mapping[str, jax.Array],
                      m: masking.RandomMask) -> jax.Array:
    # The encoder's prefix tokens (class token, registers), then the visible
    # patch (or group) tokens in the mask's order.
    if "visible_group_tokens" in features:
      # Factorized, whole patches dropped: (B, G, K, D), group-major.
      tokens = features["visible_group_tokens"]
      visible = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    elif "visible_tokens" in features:
      visible = features["visible_tokens"]
    else:
      # Factorized with `group_mask`: every token came out; the decoder gets
      # the visible groups' ones and its own mask token for the others.
      tokens = features["group_tokens"]
      tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
      visible = jnp.take_along_axis(tokens, m.keep_indices[..., None], axis=1)
    return jnp.concatenate([features["prefix_tokens"], visible], axis=1)

  def targets(self, image: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """(reconstruction targets, validity of their values or None).

    (B, N, p*p*C) and None (ViT), or (B, G*N, p*p*S) and (G*N, p*p*S)
    (band groups: padding slots 0).
    """
    s = self.settings
    if self.groups is None:
      return patch_targets(image, self.patch_size, s["norm_pix_loss"],
                           s["norm_pix_eps"]), None
    return group_targets(image, self.patch_size, self.groups,
                         s["norm_pix_loss"], s["norm_pix_eps"])

  def _raw_and_pixels(self, pred: jax.Array, image: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """(the true patches / tokens, the prediction in the input's units)."""
    s = self.settings
    if self.groups is None:
      return patchify(image, self.patch_size), denormalize_prediction(
          pred, image, self.patch_size, s["norm_pix_loss"], s["norm_pix_eps"])
    return group_patchify(image, self.patch_size, self.groups), (
        denormalize_group_prediction(pred, image, self.patch_size, self.groups,
                                     s["norm_pix_loss"], s["norm_pix_eps"]))

  # ------------------------------------------------------------ interface
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Variables:
    image = batch["image"]
    grid = self._grid(image)
    mask_rng, enc_rng, dec_rng, drop_rng = jax.random.split(rng, 4)
    m, encoder_args = self.draw_mask(mask_rng, image.shape[0], grid)
    enc_vars = dict(self.encoder.init({"params": enc_rng, "dropout": drop_rng},
                                      image, False, **encoder_args))
    enc_params = enc_vars.pop("params")
    if enc_vars:
      raise ConfigValueError(f"The MAE encoder has non-parameter collections "
                       f"{sorted(enc_vars)}; objective 'mae' supports "
                       "encoders whose only variables are 'params'.")
    _, features = self.encoder.apply({"params": enc_params}, image, False,
                                     **encoder_args)
    dec_params = self.decoder.init(
        {"params": dec_rng}, self._decoder_tokens(features, m),
        m.restore_indices, grid, self._num_prefix, False)["params"]
    return Variables(params={"encoder": enc_params, "decoder": dec_params})

  def loss(self, params, state: TrainState, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, StepOutput]:
    mask_rng, dropout_rng = jax.random.split(rng)
    image = batch["image"]
    pred, m = self.masked_forward(params, image, mask_rng, train=True,
                                  dropout_rng=dropout_rng)
    target, valid = self.targets(image)
    per_example = masked_mse(pred, target, m.mask, valid)
    return per_example.mean(), StepOutput(
        metrics={}, model_state=state.model_state, extra=state.extra)

  def _eval_mask_rng(self) -> jax.Array:
    return jax.random.fold_in(jax.random.key(int(self.config.seed)),
                              _EVAL_MASK_SALT)

  def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    image = batch["image"]
    pred, m = self.masked_forward(state.params, image, self._eval_mask_rng())
    target, valid = self.targets(image)
    raw, pixels = self._raw_and_pixels(pred, image)
    return {"loss": masked_mse(pred, target, m.mask, valid),
            # In band-normalised units, comparable with and without norm_pix.
            "pixel_mse": masked_mse(pixels, raw, m.mask, valid)}

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, D) features of whole, unmasked images: the encoder's pooled output
    (`config.model.pool`: the cls token or the mean patch token)."""
    pooled, _ = self.encoder.apply({"params": state.params["encoder"]}, image,
                                   False)
    return pooled.astype(jnp.float32)

  def diagnostics(self, state: TrainState, image: jax.Array) -> dict[str, jax.Array]:
    """The encoder's pooled embedding ('cls') and patch tokens ('patch',
    (B, N, D)) of whole, unmasked images, for the 'collapse' evaluator."""
    pooled, features = self.encoder.apply({"params": state.params["encoder"]},
                                          image, False)
    patch = features["patch_tokens"]
    return {"cls": pooled.astype(jnp.float32),
            "patch": patch.reshape(patch.shape[0], -1, patch.shape[-1]
                                   ).astype(jnp.float32)}

  def predict(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, H, W, C) reconstructions: the visible patches as given, the masked
    ones predicted (evaluation masks), in the input's units."""
    return self.reconstruct(state.params, image)[0]

  def backbones(self) -> dict[str, Any]:
    # The decoder sits above the encoder for layer-wise decay.
    return {"encoder": self.encoder}

  # ----------------------------------------------------------- visualise
  def reconstruct(self, params, image: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """(pasted reconstruction (B, H, W, C), masked pixels (B, H, W) bool).

    Masked patches are the decoder's prediction in the input's units,
    visible patches the input itself; the masks are the evaluation masks.
    With band groups a pixel counts as masked when any of its bands is.
    """
    recon, hidden = self.reconstruct_bands(params, image)
    return recon, hidden.any(axis=-1)

  def reconstruct_bands(self, params, image: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """(pasted reconstruction (B, H, W, C), masked values (B, H, W, C) bool):
    `reconstruct` with the mask per band (band groups hide some bands of a
    pixel and not others)."""
    grid = self._grid(image)
    pred, m = self.masked_forward(params, image, self._eval_mask_rng())
    raw, pixels = self._raw_and_pixels(pred, image)
    pasted = jnp.where(m.mask[..., None] > 0, pixels, raw)
    if self.groups is None:
      recon = unpatchify(pasted, self.patch_size, grid, image.shape[-1])
      hidden = reconstruction.patch_mask_to_pixels(m.mask, self.patch_size,
                                                   grid)
      return recon, jnp.broadcast_to(hidden[..., None], image.shape)
    recon = group_unpatchify(pasted, self.patch_size, grid, self.groups)
    # The token mask spread over each token's pixels and bands.
    hidden = group_unpatchify(jnp.broadcast_to(m.mask[..., None], raw.shape),
                              self.patch_size, grid, self.groups)
    return recon, hidden > 0

  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    n = min(int(self.settings["vis_examples"]), len(batch["image"]))
    if n <= 0:
      return {}
    if self._reconstruct_fn is None:
      self._reconstruct_fn = jax.jit(self.reconstruct_bands)
    image = np.asarray(batch["image"][:n], np.float32)
    recon, hidden = jax.device_get(
        self._reconstruct_fn(jax.device_get(state.params), image))
    indices, shown = display_bands(self.info)
    # Grey where any displayed band was hidden from the encoder.
    hidden = np.asarray(hidden)[..., indices].any(axis=-1)
    ratio = self.settings["mask_ratio"]
    unit = {"patches": "patches", "tokens": "(band group, patch) tokens",
            "groups": "band groups"}[self.masking]
    figure = reconstruction.plot_reconstruction(
        image, hidden, np.asarray(recon), indices,
        title=(f"{self.info.name} {split}: MAE step {step}, {ratio:.0%} of "
               f"{unit} masked, RGB = {shown}"))
    return {png_name("reconstruction", split): figure}
