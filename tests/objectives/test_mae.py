"""Tests for the MAE objective, its decoder and the ViT's downstream hooks.

Targets and the loss are checked by hand; the objective on a tiny ViT
(width 32, depth 1, 16 x 16 images, 4 x 4 patches) for the invariants that
define MAE: the encoder never sees a masked patch, visible patches do not
count in the loss, every band is predicted.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from eo_jax.config import base_config
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.bands import SENTINEL2
from eo_jax.data.datasets.synthetic import synthetic
from eo_jax.models import vit as vit_lib
from eo_jax.models.mae_decoder import MAEDecoder, patchify, unpatchify
from eo_jax.objectives import OBJECTIVES, mae
from eo_jax.objectives.base import TrainState
from eo_jax.objectives.supervised import Supervised
from eo_jax.evaluate.means import MeanMetrics
from eo_jax.visualize import reconstruction
from eo_jax.visualize.figures import save_figure
import numpy_reference as ref


def _config(**mae_overrides):
  c = base_config()
  c.objective = "mae"
  c.model = ml_collections.ConfigDict(dict(
      name="vit", variant="Ti/4", width=32, depth=1, num_heads=2, mlp_dim=64))
  c.mae = mae.default_config(decoder_width=32, decoder_depth=1, decoder_heads=2,
                             **mae_overrides)
  return c


_CACHE = {}


def _objective(num_bands=4, **mae_overrides):
  """(objective, params); eager Flax calls are slow on 2 cores, so tests call
  the objective's methods through `jax.jit` and share them here."""
  key = (num_bands, tuple(sorted(mae_overrides.items())))
  if key not in _CACHE:
    info = synthetic(num_bands=num_bands, task="unlabelled").info
    obj = OBJECTIVES.get("mae")(_config(**mae_overrides), info)
    image = jax.random.normal(jax.random.key(0), (2, 16, 16, num_bands))
    params = jax.jit(lambda r, b: obj.init(r, b).params)(jax.random.key(1),
                                                          {"image": image})
    _CACHE[key] = obj, params
  return _CACHE[key]


_JITTED = {}


def _jit(obj, name):
  if (id(obj), name) not in _JITTED:
    _JITTED[id(obj), name] = jax.jit(getattr(obj, name))
  return _JITTED[id(obj), name]


def _state(params):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                    opt_state=None, extra={})


# ------------------------------------------------------ targets and loss


def test_patchify_orders_pixels_like_the_vit_patch_embedding():
  image = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  embed = vit_lib.PatchEmbed(width=5, patch_size=4)
  variables = embed.init(jax.random.key(1), image)
  kernel = variables["params"]["kernel"]            # (p, p, C, D)
  by_matmul = patchify(image, 4) @ kernel.reshape(-1, 5) + variables["params"]["bias"]
  np.testing.assert_allclose(by_matmul.reshape(2, 2, 3, 5),
                             embed.apply(variables, image), atol=1e-5)
  np.testing.assert_array_equal(unpatchify(patchify(image, 4), 4, (2, 3), 3), image)


def test_patchify_layout_by_hand():
  image = np.arange(2 * 4 * 2, dtype=np.float32).reshape(1, 2, 4, 2)
  patches = np.asarray(patchify(jnp.asarray(image), 2))
  assert patches.shape == (1, 2, 8)
  # Patch 1 is the right 2x2 block: rows 0-1, columns 2-3, (row, col, band).
  np.testing.assert_array_equal(
      patches[0, 1], [image[0, 0, 2, 0], image[0, 0, 2, 1], image[0, 0, 3, 0],
                      image[0, 0, 3, 1], image[0, 1, 2, 0], image[0, 1, 2, 1],
                      image[0, 1, 3, 0], image[0, 1, 3, 1]])


def test_norm_pix_target_by_hand():
  # One 2x2 patch with 2 bands holding 1..8: mean 4.5, unbiased variance 6.
  image = jnp.arange(1.0, 9.0).reshape(1, 2, 2, 2)
  target = np.asarray(mae.patch_targets(image, 2, norm_pix=True, eps=1e-6))
  expected = (np.arange(1.0, 9.0) - 4.5) / np.sqrt(6.0 + 1e-6)
  np.testing.assert_allclose(target[0, 0], expected, rtol=1e-6)
  raw = np.asarray(mae.patch_targets(image, 2, norm_pix=False))
  np.testing.assert_array_equal(raw[0, 0], np.arange(1.0, 9.0))


def test_norm_pix_statistics_are_per_patch_over_all_bands():
  image = np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 4, 13)).astype(np.float32)
  image[:, :2, :2] += 50.0  # a bright patch must not shift the others
  target = np.asarray(mae.patch_targets(jnp.asarray(image), 2, norm_pix=True))
  np.testing.assert_allclose(target.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(target.std(-1, ddof=1), 1.0, atol=1e-4)
  np.testing.assert_allclose(
      mae.denormalize_prediction(jnp.asarray(target), jnp.asarray(image), 2, True),
      patchify(jnp.asarray(image), 2), atol=1e-4)


def test_masked_mse_by_hand():
  pred = jnp.zeros((2, 3, 2))
  target = jnp.array([[[1., 1.], [2., 2.], [3., 3.]],
                      [[1., 3.], [0., 0.], [0., 0.]]])
  mask = jnp.array([[1., 0., 1.], [1., 1., 0.]])
  # Sample 0: patches 0 and 2 -> (1 + 9) / 2; sample 1: (5 + 0) / 2.
  np.testing.assert_allclose(mae.masked_mse(pred, target, mask), [5.0, 2.5])


def test_loss_ignores_visible_targets_and_counts_masked_ones():
  rng = np.random.default_rng(1)
  image = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  pred = jnp.asarray(rng.normal(size=(2, 4, 64)).astype(np.float32))
  mask = jnp.array([[1., 0., 0., 1.], [0., 1., 1., 1.]])

  def loss(img):
    return float(mae.masked_mse(pred, mae.patch_targets(jnp.asarray(img), 4, True),
                                mask).mean())

  base = loss(image)
  visible = image.copy()
  visible[0, 0, 5, 2] += 10.0          # sample 0, patch 1 (visible)
  assert loss(visible) == base
  masked = image.copy()
  masked[0, 5, 6, 3] += 10.0           # sample 0, patch 3 (masked)
  assert abs(loss(masked) - base) > 1e-3


# --------------------------------------------------------- the objective


@pytest.mark.parametrize("num_bands", [4, 13])
def test_shapes_and_parameter_layout(num_bands):
  obj, params = _objective(num_bands)
  assert set(params) == {"encoder", "decoder"}
  assert "embedding" in params["encoder"] and "head" not in params["encoder"]
  assert params["decoder"]["pred"]["kernel"].shape == (32, 4 * 4 * num_bands)
  image = jax.random.normal(jax.random.key(2), (3, 16, 16, num_bands))
  pred, m = _jit(obj, "masked_forward")(params, image, jax.random.key(3))
  assert pred.shape == (3, 16, 4 * 4 * num_bands) and pred.dtype == jnp.float32
  assert m.keep_indices.shape == (3, 4)
  loss, out = _jit(obj, "loss")(params, _state(params), {"image": image},
                                  jax.random.key(4))
  assert loss.shape == () and np.isfinite(float(loss))
  assert out.model_state == {} and out.extra == {}
  ev = _jit(obj, "eval_step")(_state(params), {"image": image})
  assert ev["loss"].shape == (3,) and ev["pixel_mse"].shape == (3,)


def test_encoder_never_sees_masked_patches():
  obj, params = _objective(4)
  image = np.asarray(jax.random.normal(jax.random.key(5), (2, 16, 16, 4)))
  key = jax.random.key(6)
  predict = _jit(obj, "masked_forward")
  pred, m = predict(params, jnp.asarray(image), key)
  mask = np.asarray(m.mask)
  masked_patch = int(np.flatnonzero(mask[0])[0])
  visible_patch = int(np.flatnonzero(mask[0] == 0)[0])

  def corrupt(patch):
    out = image.copy()
    r, c = divmod(patch, 4)
    # One pixel, not the whole patch: norm-pix targets ignore an offset.
    out[0, 4 * r + 1, 4 * c + 2, 1] += 5.0
    return jnp.asarray(out)

  pred_m, _ = predict(params, corrupt(masked_patch), key)
  np.testing.assert_allclose(pred_m, pred, atol=1e-5)   # unseen
  target = lambda x: mae.patch_targets(x, 4, True)
  loss_before = mae.masked_mse(pred, target(jnp.asarray(image)), m.mask)[0]
  loss_after = mae.masked_mse(pred_m, target(corrupt(masked_patch)), m.mask)[0]
  assert abs(float(loss_after - loss_before)) > 1e-3    # but it is a target
  pred_v, _ = predict(params, corrupt(visible_patch), key)
  assert not np.allclose(pred_v[0], pred[0], atol=1e-3)  # visible ones are seen


def test_eval_is_deterministic_and_evaluator_averages_exactly():
  obj, params = _objective(4)
  image = jax.random.normal(jax.random.key(7), (4, 16, 16, 4))
  a = _jit(obj, "eval_step")(_state(params), {"image": image})
  b = _jit(obj, "eval_step")(_state(params), {"image": image})
  np.testing.assert_array_equal(a["loss"], b["loss"])
  ev = MeanMetrics()
  ev.update({k: v[:3] for k, v in a.items()})
  ev.update({k: v[3:] for k, v in a.items()})
  result = ev.result()
  np.testing.assert_allclose(result["loss"], np.mean(np.asarray(a["loss"], np.float64)),
                             rtol=1e-12)
  assert set(result) == {"loss", "pixel_mse"}


def test_a_few_steps_reduce_the_loss_and_train_both_parts():
  obj, params = _objective(4)
  image = jax.random.normal(jax.random.key(8), (4, 16, 16, 4))
  tx = optax.adam(3e-3)
  key = jax.random.key(9)  # one mask: the model can overfit this batch

  @jax.jit
  def step(p, o):
    (loss, _), g = jax.value_and_grad(obj.loss, has_aux=True)(
        p, _state(p), {"image": image}, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss, g

  p, o = params, tx.init(params)
  losses = []
  for _ in range(10):
    p, o, loss, grads = step(p, o)
    losses.append(float(loss))
  assert losses[-1] < 0.7 * losses[0], losses
  for part in ("encoder", "decoder"):
    assert float(optax.tree.norm(grads[part])) > 0, part


def test_visualize_draws_the_reconstruction(tmp_path):
  obj, params = _objective(13)
  image = np.asarray(jax.random.normal(jax.random.key(10), (5, 16, 16, 13)))
  figures = obj.visualize(_state(params), {"image": image}, 7)
  assert list(figures) == ["reconstruction.png"]
  path = save_figure(figures["reconstruction.png"], tmp_path / "r.png")
  assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and path
  assert list(obj.visualize(_state(params), {"image": image}, 7, "test")) == [
      "reconstruction_test.png"]


def test_reconstruction_keeps_visible_patches_and_marks_hidden_ones():
  obj, params = _objective(4)
  image = jax.random.normal(jax.random.key(11), (2, 16, 16, 4))
  recon, hidden = _jit(obj, "reconstruct")(params, image)
  hidden = np.asarray(hidden)
  assert hidden.shape == (2, 16, 16) and hidden.mean() == 0.75
  np.testing.assert_allclose(np.asarray(recon)[~hidden], np.asarray(image)[~hidden],
                             atol=1e-6)


def test_patch_mask_to_pixels_by_hand():
  mask = np.array([[1, 0, 0, 1]])
  got = reconstruction.patch_mask_to_pixels(mask, 2, (2, 2))
  expected = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(got[0], expected)


def test_config_errors_name_the_fix():
  info = synthetic(num_bands=4, task="unlabelled").info
  c = _config()
  c.mae.decoder_widht = 8
  with pytest.raises(KeyError, match="decoder_widht"):
    OBJECTIVES.get("mae")(c, info)
  with pytest.raises(ValueError, match="mask_ratio"):
    OBJECTIVES.get("mae")(_config(mask_ratio=1.0), info)
  c = _config()
  c.model = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1,),
                                           width=8))
  with pytest.raises(ValueError, match="needs a token backbone \\(a ViT\\)"):
    OBJECTIVES.get("mae")(c, info)
  with pytest.raises(KeyError, match="Unknown config.mae"):
    mae.default_config(ratio=0.5)


def test_decoder_sees_its_own_position_embedding():
  # Mask tokens are all equal; only the position embedding tells them apart.
  dec = MAEDecoder(patch_size=2, num_bands=1, width=8, depth=1, num_heads=2)
  tokens = jnp.zeros((1, 2, 16))       # cls + one visible token
  restore = jnp.array([[1, 2, 3, 0]])  # visible token -> patch 3
  variables = jax.jit(dec.init, static_argnums=3)(jax.random.key(0), tokens,
                                                  restore, (2, 2))
  out = np.asarray(jax.jit(dec.apply, static_argnums=3)(variables, tokens,
                                                        restore, (2, 2)))
  assert out.shape == (1, 4, 4)
  assert not np.allclose(out[0, 0], out[0, 1], atol=1e-4)


def test_mae_layer_id_separates_encoder_depth_from_decoder():
  obj, _ = _objective(4)
  assert obj.layer_id("encoder/embedding/kernel") == 0
  assert obj.layer_id("encoder/block_0/attn/query/kernel") == 1
  assert obj.layer_id("encoder/encoder_norm/scale") == 2
  assert obj.layer_id("decoder/block_0/attn/query/kernel") == 2


# ------------------------------------------------------- downstream hooks


def test_supervised_objective_forwards_the_vit_layer_id():
  info = synthetic(num_bands=4).info
  c = base_config()
  c.model = ml_collections.ConfigDict(dict(name="vit", variant="Ti/4", width=32,
                                           depth=3, num_heads=2))
  obj = Supervised(c, info)
  assert obj.layer_id("block_2/mlp/fc1/kernel") == 3
  assert obj.layer_id("head/kernel") == 4


def test_vit_head_norm_is_batchnorm_without_affine_then_linear():
  model = vit_lib.vit(bands=SENTINEL2[:4], num_classes=3, variant="Ti/4", width=32,
                      depth=1, num_heads=2, head_norm=True, head_zeroinit=False)
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 4))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  head = variables["params"]["head"]
  assert set(head) == {"kernel", "bias"}                      # no scale/offset
  assert set(variables["batch_stats"]["head"]["norm"]) == {"mean", "var"}
  (logits, feats), new_state = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats"]))(variables, x)
  pooled = np.asarray(feats["pre_logits"], np.float64)
  normed = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-6)
  np.testing.assert_allclose(logits, normed @ np.asarray(head["kernel"])
                             + np.asarray(head["bias"]), atol=1e-4)
  # Running mean moves 10% of the way to the batch mean (PyTorch momentum 0.1).
  np.testing.assert_allclose(new_state["batch_stats"]["head"]["norm"]["mean"],
                             0.1 * pooled.mean(0), atol=1e-5)
  eval_logits, _ = jax.jit(model.apply)(variables, x)
  np.testing.assert_allclose(eval_logits, pooled / np.sqrt(1 + 1e-6)
                             @ np.asarray(head["kernel"]), atol=1e-4)


def test_embed_is_the_encoder_on_the_whole_image():
  obj, params = _objective(4)
  image = jax.random.normal(jax.random.key(12), (2, 16, 16, 4))
  feats = _jit(obj, "embed")(_state(params), image)
  assert feats.shape == (2, 32)
  pooled, features = jax.jit(obj.encoder.apply)({"params": params["encoder"]}, image)
  np.testing.assert_allclose(feats, pooled, atol=1e-6)
  # The collapse evaluator's inputs: the same embedding and the 4 x 4 grid of
  # patch tokens in row-major order.
  diag = _jit(obj, "diagnostics")(_state(params), image)
  np.testing.assert_allclose(diag["cls"], pooled, atol=1e-6)
  np.testing.assert_allclose(diag["patch"],
                             np.asarray(features["patch_tokens"]).reshape(2, 16, 32),
                             atol=1e-6)


# ----------------------------------------- the whole loss, in numpy


@functools.lru_cache(maxsize=None)
def _registers_objective():
  """MAE on a 1-register ViT (prefix = cls + register) for the wiring tests."""
  config = _config(mask_ratio=0.75, norm_pix_loss=True)
  config.model.num_registers = 1
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", task="unlabelled", num_bands=5, image_size=16,
      num_train=16, num_val=8, num_test=8))
  config.input.batch_size = 4
  dataset = build_dataset(config.data)
  obj = OBJECTIVES.get("mae")(config, dataset.info)
  image = next(iter(pipeline.train_loader(dataset, config.input, seed=1)))["image"]
  params = jax.jit(lambda r, b: obj.init(r, b).params)(jax.random.key(2),
                                                        {"image": image})
  # Away from the initialisation: every parameter moved at random.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(treedef, [
      x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return obj, jnp.asarray(image), params


def _mae_by_hand(obj, params, image, mask_key):
  """(numpy loss per example, pixel MSE per example, mask) of MAE written out:
  noise -> argsort -> the first N/4 patches stay visible; the encoder gets
  them, the decoder gets [cls, register, visible tokens] and the un-shuffle."""
  p, n = 4, 16
  noise = np.asarray(jax.random.uniform(mask_key, (image.shape[0], n)))
  shuffle = np.argsort(noise, axis=1, kind="stable")
  keep = shuffle[:, :4]                        # round(16 * (1 - 0.75))
  restore = np.argsort(shuffle, axis=1)
  mask = np.ones((image.shape[0], n))
  np.put_along_axis(mask, keep, 0.0, axis=1)
  _, features = jax.jit(obj.encoder.apply)({"params": params["encoder"]}, image,
                                           keep_indices=jnp.asarray(keep))
  tokens = jnp.concatenate([features["cls"][:, None], features["registers"],
                            features["visible_tokens"]], axis=1)
  pred = np.asarray(jax.jit(obj.decoder.apply, static_argnums=(3, 4))(
      {"params": params["decoder"]}, tokens, jnp.asarray(restore), (4, 4), 2),
                    np.float64)
  raw = ref.patchify(np.asarray(image), p)
  loss = ref.masked_patch_mse(pred, ref.norm_pix(raw), mask)
  # Predictions back in band-normalised units with each patch's true statistics.
  pixels = (pred * np.sqrt(raw.var(-1, ddof=1, keepdims=True) + 1e-6)
            + raw.mean(-1, keepdims=True))
  return loss, ref.masked_patch_mse(pixels, raw, mask), mask


def test_training_loss_is_numpy_mse_over_the_masked_patches_only():
  obj, image, params = _registers_objective()
  rng = jax.random.key(11)
  loss, _ = _jit(obj, "loss")(params, _state(params), {"image": image}, rng)
  mask_key, _ = jax.random.split(rng)   # the objective's (mask, dropout) split
  expected, _, mask = _mae_by_hand(obj, params, image, mask_key)
  assert mask.sum(1).tolist() == [12.0] * 4
  np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
  # The same numbers over the VISIBLE patches are far from it.
  visible = ref.masked_patch_mse(
      np.asarray(_jit(obj, "masked_forward")(params, image, mask_key)[0]),
      ref.norm_pix(ref.patchify(np.asarray(image), 4)), 1 - mask).mean()
  assert abs(visible - expected.mean()) > 1e-2 * expected.mean()


def test_eval_step_loss_and_pixel_mse_in_numpy():
  obj, image, params = _registers_objective()
  out = _jit(obj, "eval_step")(_state(params), {"image": image})
  # Evaluation masks come from the objective's fixed key, whatever the step.
  loss, pixel_mse, _ = _mae_by_hand(obj, params, image, obj._eval_mask_rng())  # pylint: disable=protected-access
  np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(out["pixel_mse"], pixel_mse, rtol=1e-5)
