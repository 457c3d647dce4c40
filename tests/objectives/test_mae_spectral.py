"""MAE on the spatial-spectral ViT: per-(group, patch) targets, the three
masking units, the decoder's spectral positions, reconstructions.

The setting: 8 synthetic bands (400-1000 nm) in automatic groups of 3, i.e.
(0, 1, 2), (3, 4, 5), (6, 7): G = 3 groups of unequal size (S = 3, so the
last group's third slot is padding), 16 x 16 images in 4 x 4 patches (N =
16), a width-32 depth-1 encoder with one register (prefix = cls +
register). The whole loss is recomputed in numpy for each supported (mode,
masking) pair from the model's own encoder and decoder.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eo_jax.config import base_config
from eo_jax.data.datasets.synthetic import synthetic
from eo_jax.models import spectral_vit as sv
from eo_jax.models.mae_decoder import (MAEDecoder, group_patchify,
                                       group_unpatchify, group_valid)
from eo_jax.objectives import OBJECTIVES, mae
from eo_jax.objectives.base import TrainState
from eo_jax.visualize.figures import save_figure
import numpy_reference as ref

B, SIZE, P, C = 3, 16, 4, 8
N = (SIZE // P) ** 2
GROUPS = ((0, 1, 2), (3, 4, 5), (6, 7))
G, S = len(GROUPS), 3
COMBINATIONS = [("factorized", "patches"), ("factorized", "groups"),
                ("joint", "patches"), ("joint", "tokens"), ("joint", "groups")]


def _config(mode="factorized", masking="patches", **model):
  c = base_config()
  c.objective = "mae"
  c.model = ml_collections.ConfigDict(dict(
      name="spectral_vit", variant="Ti/4", width=32, depth=1, num_heads=2,
      mlp_dim=64, mode=mode, num_registers=1, **model))
  c.mae = mae.default_config(decoder_width=32, decoder_depth=1,
                             decoder_heads=2, masking=masking)
  return c


def _info(num_bands=C):
  return synthetic(num_bands=num_bands, task="unlabelled").info


def _state(params):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state={}, opt_state=None, extra={})


def _image(seed):
  # Bands on different scales and offsets, as real bands are.
  x = jax.random.normal(jax.random.key(seed), (B, SIZE, SIZE, C))
  return np.asarray(x * jnp.arange(1.0, C + 1.0) + jnp.arange(C), np.float32)


@functools.lru_cache(maxsize=None)
def _objective(mode, masking):
  """(objective, params away from the init, image, jitted methods)."""
  obj = OBJECTIVES.get("mae")(_config(mode, masking), _info())
  image = _image(0)
  params = jax.jit(lambda r, b: obj.init(r, b).params)(jax.random.key(1),
                                                        {"image": image})
  # Every parameter moved at random: mask tokens are no longer zero.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  fns = {name: jax.jit(getattr(obj, name))
         for name in ("loss", "masked_forward", "eval_step",
                      "reconstruct_bands")}
  return obj, params, jnp.asarray(image), fns


# ------------------------------------------------------- pixel layout


def test_group_patchify_layout_by_hand():
  image = np.random.default_rng(0).normal(size=(2, 8, 8, C)).astype(np.float32)
  tokens = np.asarray(group_patchify(jnp.asarray(image), P, GROUPS))
  assert tokens.shape == (2, G * 4, P * P * S)
  # Token g * N + n = group g of patch n; values (row, column, slot).
  g, n = 2, 3                                # group (6, 7), bottom-right patch
  window = image[:, 4:8, 4:8]
  expected = np.zeros((2, P, P, S), np.float32)
  expected[..., :2] = window[..., [6, 7]]
  np.testing.assert_array_equal(tokens[:, g * 4 + n],
                                expected.reshape(2, -1))
  valid = group_valid(P, GROUPS, 4)
  assert valid.shape == (G * 4, P * P * S)
  np.testing.assert_array_equal(valid[g * 4 + n].reshape(P, P, S)[..., 2], False)
  assert valid[:4].all()
  np.testing.assert_array_equal(
      group_unpatchify(jnp.asarray(tokens), P, (2, 2), GROUPS), image)


def test_group_patchify_reads_pixels_like_the_group_patch_embedding():
  model = sv.spectral_vit(bands=_info().bands, num_classes=0, variant="Ti/4",
                          width=8, depth=1, num_heads=2, embed="group")
  image = jnp.asarray(_image(3))
  variables = model.init(jax.random.key(0), image)
  emb = variables["params"]["embedding"]
  kernel, bias = emb["kernel"], emb["bias"]            # (G, S, p, p, D), (G, D)
  assert model.group_channels == GROUPS
  tokens = group_patchify(image, P, GROUPS).reshape(B, G, N, -1)
  flat = jnp.transpose(kernel, (0, 2, 3, 1, 4)).reshape(G, P * P * S, 8)
  by_matmul = jnp.einsum("bgnk,gkd->bgnd", tokens, flat) + bias[None, :, None]
  _, features = model.apply(variables, image)
  # 'patch_embed' adds the spatial and spectral embeddings to the tokens.
  pos = features["patch_embed"] - by_matmul
  np.testing.assert_allclose(pos, jnp.broadcast_to(pos[:1], pos.shape),
                             atol=1e-4)


def test_group_targets_standardise_each_token_over_its_valid_values():
  image = jnp.asarray(_image(4))
  target, valid = mae.group_targets(image, P, GROUPS, norm_pix=True)
  target, valid = np.asarray(target), np.asarray(valid)
  assert target.shape == (B, G * N, P * P * S) and valid.shape == target.shape[1:]
  real = np.broadcast_to(valid, target.shape) > 0
  np.testing.assert_array_equal(target[~real], 0.0)
  for token in (0, N + 5, 2 * N + 7):        # a 3-band and the 2-band group
    values = target[:, token][:, real[0, token]]
    np.testing.assert_allclose(values.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(values.std(-1, ddof=1), 1.0, atol=1e-4)
  assert real[0, 2 * N].sum() == P * P * 2
  raw, _ = mae.group_targets(image, P, GROUPS, norm_pix=False)
  back = mae.denormalize_group_prediction(jnp.asarray(target), image, P,
                                          GROUPS, True)
  np.testing.assert_allclose(np.asarray(back)[real], np.asarray(raw)[real],
                             atol=1e-4)


def test_masked_mse_with_validity_ignores_padding_values():
  pred = jnp.array([[[1.0, 2.0, 100.0], [0.0, 0.0, 0.0]]])
  target = jnp.zeros((1, 2, 3))
  mask = jnp.array([[1.0, 0.0]])
  valid = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  np.testing.assert_allclose(mae.masked_mse(pred, target, mask, valid), [2.5])


def test_decoder_tells_groups_apart_by_wavelength_only():
  # Mask tokens at the same patch in two groups differ only by the
  # spectral position embedding.
  dec = MAEDecoder(patch_size=2, num_bands=2, width=8, depth=1, num_heads=2,
                   wavelengths=(450.0, 850.0))
  tokens = jnp.zeros((1, 2, 16))             # cls + one visible token
  restore = jnp.array([[1, 2, 3, 4, 5, 6, 7, 0]])   # visible -> token 7
  init = jax.jit(dec.init, static_argnums=3)
  variables = init(jax.random.key(0), tokens, restore, (2, 2))
  out = np.asarray(jax.jit(dec.apply, static_argnums=3)(variables, tokens,
                                                        restore, (2, 2)))
  assert out.shape == (1, 8, 2 * 2 * 2)
  assert not np.allclose(out[0, 0], out[0, 4], atol=1e-4)   # group 0 vs 1
  assert not np.allclose(out[0, 0], out[0, 1], atol=1e-4)   # patch 0 vs 1
  # The parameters do not depend on the groups: other wavelengths, same params.
  other = dec.clone(wavelengths=(500.0, 600.0, 700.0, 800.0))
  restore4 = jnp.array([list(range(1, 16)) + [0]])
  out4 = jax.jit(other.apply, static_argnums=3)(variables, tokens, restore4,
                                                (2, 2))
  assert out4.shape == (1, 16, 8)
  with pytest.raises(ValueError, match="2 band group"):
    dec.apply(variables, tokens, restore4, (2, 2))


# ------------------------------------------------- the whole loss, numpy


def _mae_by_hand(obj, params, image, mask_key, mode, masking):
  """(loss per example, pixel MSE per example, (B, G, N) token mask) of
  band-group MAE written out: draw the units from `mask_key` as MAE's
  argsort of uniform noise, spread them over the tokens, run the encoder
  and decoder directly, targets and errors in numpy."""
  units = {"patches": N, "tokens": G * N, "groups": G}[masking]
  keep_count = int(np.floor(units * 0.25 + 0.5))
  noise = np.asarray(jax.random.uniform(mask_key, (B, units)))
  keep_units = np.argsort(noise, axis=1, kind="stable")[:, :keep_count]
  unit_mask = np.ones((B, units))
  np.put_along_axis(unit_mask, keep_units, 0.0, axis=1)
  if masking == "patches":
    mask = np.broadcast_to(unit_mask[:, None, :], (B, G, N))
    keep = np.arange(G)[None, :, None] * N + keep_units[:, None, :]
  elif masking == "tokens":
    mask, keep = unit_mask.reshape(B, G, N), keep_units
  else:
    mask = np.broadcast_to(unit_mask[:, :, None], (B, G, N))
    keep = keep_units[:, :, None] * N + np.arange(N)[None, None]
  keep = keep.reshape(B, -1)
  encode = jax.jit(functools.partial(obj.encoder.apply,
                                     {"params": params["encoder"]}))
  if mode == "joint":
    # The encoder drops every hidden (group, patch) token.
    features = encode(image, keep_indices=jnp.asarray(keep))[1]
    visible = features["visible_tokens"]
  elif masking == "patches":
    # It drops whole patches and returns (B, G, K, D), group-major.
    features = encode(image, keep_indices=jnp.asarray(keep_units))[1]
    visible = features["visible_group_tokens"].reshape(B, -1, 32)
  else:
    # It replaces the hidden groups by its mask token; the decoder gets the
    # visible groups' outputs only.
    features = encode(image, group_mask=jnp.asarray(unit_mask > 0))[1]
    every = np.asarray(features["group_tokens"]).reshape(B, G * N, 32)
    visible = np.take_along_axis(every, keep[..., None], axis=1)
  tokens = jnp.concatenate([features["cls"][:, None], features["registers"],
                            jnp.asarray(visible)], axis=1)
  # The decoder's sequence: visible tokens, then the masked ones in order.
  masked = [np.flatnonzero(row) for row in mask.reshape(B, -1)]
  restore = np.argsort(np.stack([np.concatenate([k, m])
                                 for k, m in zip(keep, masked)]), axis=1)
  pred = np.asarray(jax.jit(obj.decoder.apply, static_argnums=(3, 4))(
      {"params": params["decoder"]}, tokens, jnp.asarray(restore),
      (4, 4), 2), np.float64).reshape(B, G, N, P, P, S)

  image = np.asarray(image, np.float64)
  errors, pixel_errors = np.zeros((B, G, N)), np.zeros((B, G, N))
  for g, channels in enumerate(GROUPS):
    raw = ref.patchify(image[..., list(channels)], P)   # (B, N, p*p*|g|)
    guess = pred[:, g, ..., :len(channels)].reshape(B, N, -1)
    errors[:, g] = ((guess - ref.norm_pix(raw)) ** 2).mean(-1)
    pixels = (guess * np.sqrt(raw.var(-1, ddof=1, keepdims=True) + 1e-6)
              + raw.mean(-1, keepdims=True))
    pixel_errors[:, g] = ((pixels - raw) ** 2).mean(-1)
  # Padding slots hold real (non-zero) predictions: counting them would
  # change the loss, so the comparison below checks they are left out.
  assert np.abs(pred[:, 2, ..., 2]).mean() > 0.1
  per_example = lambda e: (e * mask).sum((1, 2)) / mask.sum((1, 2))
  return per_example(errors), per_example(pixel_errors), mask


@pytest.mark.parametrize("mode,masking", COMBINATIONS)
def test_training_loss_is_numpy_mse_over_masked_group_tokens(mode, masking):
  obj, params, image, fns = _objective(mode, masking)
  assert obj.groups == GROUPS
  rng = jax.random.key(11)
  loss, _ = fns["loss"](params, _state(params), {"image": image}, rng)
  mask_key, _ = jax.random.split(rng)   # the objective's (mask, dropout) split
  expected, _, mask = _mae_by_hand(obj, params, image, mask_key, mode, masking)
  hidden = {"patches": 12 * G, "tokens": 36, "groups": 2 * N}[masking]
  np.testing.assert_array_equal(mask.sum((1, 2)), hidden)
  np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)


def test_eval_step_loss_and_pixel_mse_in_numpy():
  obj, params, image, fns = _objective("factorized", "groups")
  out = fns["eval_step"](_state(params), {"image": image})
  loss, pixel_mse, _ = _mae_by_hand(obj, params, image, obj._eval_mask_rng(),  # pylint: disable=protected-access
                                    "factorized", "groups")
  np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(out["pixel_mse"], pixel_mse, rtol=1e-5)


@pytest.mark.parametrize("mode,masking", COMBINATIONS)
def test_encoder_never_sees_hidden_tokens(mode, masking):
  obj, params, image, fns = _objective(mode, masking)
  key = jax.random.key(12)
  pred, m = fns["masked_forward"](params, image, key)
  assert pred.shape == (B, G * N, P * P * S)
  mask = np.asarray(m.mask).reshape(B, G, N)
  image = np.asarray(image)

  def changed(g, n):
    out = image.copy()
    r, c = divmod(n, 4)
    noise = np.random.default_rng(g * N + n).normal(size=(P, P, len(GROUPS[g])))
    window = out[0, P * r:P * (r + 1), P * c:P * (c + 1)]   # a view
    window[..., list(GROUPS[g])] += 5 * noise
    return fns["masked_forward"](params, jnp.asarray(out), key)[0]

  hidden = np.argwhere(mask[0] > 0)[0]
  np.testing.assert_allclose(changed(*hidden), pred, atol=2e-5)
  shown = np.argwhere(mask[0] == 0)[0]
  assert not np.allclose(changed(*shown)[0], pred[0], atol=1e-3)


def test_reconstruction_pastes_groups_back_into_the_image():
  obj, params, image, fns = _objective("joint", "tokens")
  recon, hidden = fns["reconstruct_bands"](params, image)
  recon, hidden = np.asarray(recon), np.asarray(hidden)
  assert recon.shape == hidden.shape == (B, SIZE, SIZE, C)
  # The evaluation mask, band by band: a token hides its patch's pixels in
  # its group's bands only.
  _, m = fns["masked_forward"](params, image, obj._eval_mask_rng())  # pylint: disable=protected-access
  mask = np.asarray(m.mask).reshape(B, G, 4, 4) > 0
  for g, channels in enumerate(GROUPS):
    per_pixel = mask[:, g].repeat(P, 1).repeat(P, 2)
    for ch in channels:
      np.testing.assert_array_equal(hidden[..., ch], per_pixel)
  np.testing.assert_allclose(recon[~hidden], np.asarray(image)[~hidden],
                             atol=1e-6)
  assert not np.allclose(recon[hidden], np.asarray(image)[hidden], atol=1e-2)
  pixels, any_hidden = jax.jit(obj.reconstruct)(params, image)
  np.testing.assert_allclose(pixels, recon, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(any_hidden, hidden.any(-1))


def test_visualize_draws_the_reconstruction(tmp_path):
  obj, params, image, _ = _objective("factorized", "groups")
  figures = obj.visualize(_state(params), {"image": np.asarray(image)}, 3)
  assert list(figures) == ["reconstruction.png"]
  save_figure(figures["reconstruction.png"], tmp_path / "r.png")
  assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
  title = figures["reconstruction.png"].get_suptitle()
  assert "75% of band groups masked" in title, title


def test_parameters_follow_the_masking():
  obj, params, _, _ = _objective("factorized", "groups")
  # A factorized encoder hides groups with its mask token.
  assert "mask_token" in params["encoder"]
  assert params["decoder"]["pred"]["kernel"].shape == (32, P * P * S)
  joint, joint_params, _, _ = _objective("joint", "groups")
  assert "mask_token" not in joint_params["encoder"]
  assert joint.decoder.wavelengths == tuple(
      float(np.mean([joint.info.bands[c].wavelength_nm for c in g]))
      for g in GROUPS)


def test_config_errors_name_the_fix():
  info = _info()
  with pytest.raises(ValueError, match="mode='joint'"):
    OBJECTIVES.get("mae")(_config("factorized", "tokens"), info)
  with pytest.raises(ValueError, match="masking must be one of"):
    OBJECTIVES.get("mae")(_config("joint", "bands"), info)
  with pytest.raises(ValueError, match="1 group"):
    OBJECTIVES.get("mae")(_config("joint", "groups", group_size=8), info)
  with pytest.raises(ValueError, match="keeps 0 of 3 groups"):
    c = _config("joint", "groups")
    c.mae.mask_ratio = 0.9
    OBJECTIVES.get("mae")(c, info)
  for masking in ("tokens", "groups"):
    c = _config(masking=masking)
    c.model = ml_collections.ConfigDict(dict(
        name="vit", variant="Ti/4", width=32, depth=1, num_heads=2))
    with pytest.raises(ValueError, match="spectral_vit"):
      OBJECTIVES.get("mae")(c, info)
