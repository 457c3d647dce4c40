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
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.models.mae_decoder import MAEDecoder, patchify, unpatchify
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
}

_EVAL_MASK_SALT = 0x3AE  # separates the eval masks' key from other seeds


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`config.mae` with MAE's defaults, `overrides` applied."""
  return ml_collections.ConfigDict(
      objective_settings("mae", overrides, DEFAULTS))


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


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-example mean over masked patches of the per-patch MSE, shape (B,).

  Args:
    pred, target: (B, N, P) predicted and true patch values.
    mask: (B, N), 1 = masked (counted), 0 = visible (ignored).
  """
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
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


# ---------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------


@OBJECTIVES.register("mae")
class MAE(Objective):
  """Masked autoencoder; see the module docstring."""

  main_metric = "loss"

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
    self.decoder = MAEDecoder(
        patch_size=self.patch_size, num_bands=info.num_bands,
        width=int(s["decoder_width"]), depth=int(s["decoder_depth"]),
        num_heads=int(s["decoder_heads"]),
        mlp_dim=int(s["decoder_mlp_dim"]) or None,
        dtype=self.encoder.dtype)
    self._num_prefix = int(self.encoder.num_prefix_tokens)
    self._reconstruct_fn = None

  # -------------------------------------------------------------- forward
  def _grid(self, image: jax.Array) -> tuple[int, int]:
    _, h, w, _ = image.shape
    p = self.patch_size
    if h % p or w % p:
      raise ConfigValueError(f"Image size {h}x{w} is not a multiple of the ViT's "
                       f"patch_size {p}; set config.input.image_size.")
    return h // p, w // p

  def masked_forward(self, params, image: jax.Array, mask_rng: jax.Array, *,
              train: bool = False, dropout_rng: jax.Array | None = None
              ) -> tuple[jax.Array, masking.RandomMask]:
    """Masks `image` with `mask_rng`, encodes the visible patches, decodes.

    Returns the predicted patches (B, N, p*p*C) (normalised-pixel space when
    `norm_pix_loss`) and the `RandomMask` used.
    """
    grid = self._grid(image)
    m = masking.random_masking(mask_rng, image.shape[0], grid[0] * grid[1],
                               self.settings["mask_ratio"])
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    _, features = self.encoder.apply(
        {"params": params["encoder"]}, image, train, keep_indices=m.keep_indices,
        rngs=rngs)
    pred = self.decoder.apply({"params": params["decoder"]},
                              self._decoder_tokens(features), m.restore_indices,
                              grid, self._num_prefix, train, rngs=rngs)
    return pred, m

  def _decoder_tokens(self, features: Mapping[str, jax.Array]) -> jax.Array:
    # The encoder's prefix tokens (class token, registers), then the visible
    # patch tokens in shuffle order.
    return jnp.concatenate([features["prefix_tokens"],
                            features["visible_tokens"]], axis=1)

  # ------------------------------------------------------------ interface
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Variables:
    image = batch["image"]
    grid = self._grid(image)
    mask_rng, enc_rng, dec_rng, drop_rng = jax.random.split(rng, 4)
    m = masking.random_masking(mask_rng, image.shape[0], grid[0] * grid[1],
                               self.settings["mask_ratio"])
    enc_vars = dict(self.encoder.init({"params": enc_rng, "dropout": drop_rng},
                                      image, False, keep_indices=m.keep_indices))
    enc_params = enc_vars.pop("params")
    if enc_vars:
      raise ConfigValueError(f"The MAE encoder has non-parameter collections "
                       f"{sorted(enc_vars)}; objective 'mae' supports "
                       "encoders whose only variables are 'params'.")
    _, features = self.encoder.apply({"params": enc_params}, image, False,
                                     keep_indices=m.keep_indices)
    dec_params = self.decoder.init(
        {"params": dec_rng}, self._decoder_tokens(features), m.restore_indices,
        grid, self._num_prefix, False)["params"]
    return Variables(params={"encoder": enc_params, "decoder": dec_params})

  def loss(self, params, state: TrainState, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, StepOutput]:
    mask_rng, dropout_rng = jax.random.split(rng)
    image = batch["image"]
    pred, m = self.masked_forward(params, image, mask_rng, train=True,
                                  dropout_rng=dropout_rng)
    s = self.settings
    target = patch_targets(image, self.patch_size, s["norm_pix_loss"],
                           s["norm_pix_eps"])
    per_example = masked_mse(pred, target, m.mask)
    return per_example.mean(), StepOutput(
        metrics={}, model_state=state.model_state, extra=state.extra)

  def _eval_mask_rng(self) -> jax.Array:
    return jax.random.fold_in(jax.random.key(int(self.config.seed)),
                              _EVAL_MASK_SALT)

  def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    image = batch["image"]
    pred, m = self.masked_forward(state.params, image, self._eval_mask_rng())
    s = self.settings
    target = patch_targets(image, self.patch_size, s["norm_pix_loss"],
                           s["norm_pix_eps"])
    pixels = denormalize_prediction(pred, image, self.patch_size,
                                    s["norm_pix_loss"], s["norm_pix_eps"])
    return {"loss": masked_mse(pred, target, m.mask),
            # In band-normalised units, comparable with and without norm_pix.
            "pixel_mse": masked_mse(pixels, patchify(image, self.patch_size),
                                    m.mask)}

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    """(B, D) features of whole, unmasked images: the encoder's pooled output
    (`config.model.pool`: the cls token or the mean patch token)."""
    pooled, _ = self.encoder.apply({"params": state.params["encoder"]}, image,
                                   False)
    return pooled.astype(jnp.float32)

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
    """
    grid = self._grid(image)
    pred, m = self.masked_forward(params, image, self._eval_mask_rng())
    s = self.settings
    pixels = denormalize_prediction(pred, image, self.patch_size,
                                    s["norm_pix_loss"], s["norm_pix_eps"])
    pasted = jnp.where(m.mask[..., None] > 0, pixels,
                       patchify(image, self.patch_size))
    c = image.shape[-1]
    recon = unpatchify(pasted, self.patch_size, grid, c)
    hidden = reconstruction.patch_mask_to_pixels(m.mask, self.patch_size, grid)
    return recon, hidden

  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    n = min(int(self.settings["vis_examples"]), len(batch["image"]))
    if n <= 0:
      return {}
    if self._reconstruct_fn is None:
      self._reconstruct_fn = jax.jit(self.reconstruct)
    image = np.asarray(batch["image"][:n], np.float32)
    recon, hidden = jax.device_get(
        self._reconstruct_fn(jax.device_get(state.params), image))
    indices, shown = display_bands(self.info)
    ratio = self.settings["mask_ratio"]
    figure = reconstruction.plot_reconstruction(
        image, np.asarray(hidden), np.asarray(recon), indices,
        title=(f"{self.info.name} {split}: MAE step {step}, {ratio:.0%} of "
               f"patches masked, RGB = {shown}"))
    return {png_name("reconstruction", split): figure}
