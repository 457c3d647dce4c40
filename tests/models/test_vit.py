"""Tests for eo_jax.models.vit: shapes, position embeddings, attention,
masking, stochastic depth, training and the known ViT-B/16 parameter count."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from eo_jax.data.bands import RGB, SENTINEL2, Band
from eo_jax.models import MODELS, build_model
from eo_jax.models import vit as vit_lib


def _bands(n: int) -> tuple[Band, ...]:
  return tuple(Band(f"b{i}", 400.0 + 10 * i) for i in range(n))


def _tiny(num_classes: int = 0, bands=RGB, **kw) -> vit_lib.ViT:
  args = dict(variant="S/8", width=32, depth=2, num_heads=2, mlp_dim=64)
  args.update(kw)
  return vit_lib.vit(bands=bands, num_classes=num_classes, **args)


_INIT_CACHE: dict = {}


def _init(model, size=32, channels=3, seed=0):
  # Initialising compiles many small random ops; tests share variables per
  # model configuration to stay fast on 2 cores.
  key = (repr(model), size, channels, seed)
  if key not in _INIT_CACHE:
    x = jnp.zeros((2, size, size, channels))
    _INIT_CACHE[key] = model.init(jax.random.key(seed), x)
  return _INIT_CACHE[key]


def _base(**kw) -> vit_lib.ViT:
  """The shared tiny model; `kw` may only change parameter-free attributes."""
  return _tiny(num_registers=2, use_mask_token=True).clone(**kw)


def _base_vars():
  return _init(_base())


def _images(b=2, size=32, channels=3, seed=1):
  return jax.random.normal(jax.random.key(seed), (b, size, size, channels))


def _replace(variables, path, value):
  """Returns a copy of `variables` with params[path...] = value."""
  params = jax.tree.map(lambda x: x, variables["params"])
  node = params
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  return {**variables, "params": params}


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels,patch", [(3, 8), (13, 16), (32, 8)])
def test_output_and_feature_shapes(channels, patch):
  # Shapes only (abstract evaluation, no compilation); values are checked by
  # the tests below.
  model = _tiny(num_classes=7, bands=_bands(channels), patch_size=patch,
                num_registers=2, return_attention=True)
  x = jax.ShapeDtypeStruct((2, 32, 32, channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out, f = jax.eval_shape(model.apply, variables, x)
  g = 32 // patch
  n, t, d = g * g, 1 + 2 + g * g, 32
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  assert f["patch_embed"].shape == (2, n, d)
  assert f["block_0"].shape == f["block_1"].shape == (2, t, d)
  assert f["patch_tokens"].shape == (2, g, g, d)
  assert f["cls"].shape == f["pre_logits"].shape == (2, d)
  assert f["registers"].shape == (2, 2, d)
  assert f["attention_1"].shape == (2, 2, t, t)
  assert "attention_0" not in f
  assert variables["params"]["embedding"]["kernel"].shape == (
      patch, patch, channels, d)


def test_headless_output_is_pooled_representation():
  model = _base()
  variables = _base_vars()
  assert "head" not in variables["params"]
  out, f = model.apply(variables, _images())
  np.testing.assert_array_equal(out, f["cls"])
  np.testing.assert_array_equal(out, f["pre_logits"])


def test_mean_pool_excludes_cls_and_registers():
  model = _base(pool="mean")
  variables = _base_vars()
  out, f = model.apply(variables, _images())
  np.testing.assert_allclose(out, f["patch_tokens"].mean(axis=(1, 2)),
                             atol=1e-6)
  assert not np.allclose(out, f["cls"], atol=1e-3)


def test_variants_match_the_vit_paper():
  for variant, (w, d, h, m) in {"Ti/16": (192, 12, 3, 768),
                                "S/8": (384, 12, 6, 1536),
                                "B/16": (768, 12, 12, 3072),
                                "L/16": (1024, 24, 16, 4096)}.items():
    model = vit_lib.vit(bands=RGB, num_classes=0, variant=variant)
    assert (model.width, model.depth, model.num_heads, model.mlp_dim) == (
        w, d, h, m)
    assert model.patch_size == int(variant.split("/")[1])
  assert vit_lib.vit(bands=RGB, num_classes=0, variant="B",
                     patch_size=14).patch_size == 14
  # An overridden width gets a 4x MLP unless mlp_dim is given too.
  assert vit_lib.vit(bands=RGB, num_classes=0, variant="B/16",
                     width=64).mlp_dim == 256
  with pytest.raises(ValueError, match="Unknown ViT variant"):
    vit_lib.vit(bands=RGB, num_classes=0, variant="X/16")
  with pytest.raises(ValueError, match="no patch size"):
    vit_lib.vit(bands=RGB, num_classes=0, variant="B")


def test_seed_config_vit_b8_64px_32_bands_builds():
  model = vit_lib.vit(bands=_bands(32), num_classes=10, variant="B/8")
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 32)))["params"]
  blocks = sorted(k for k in shapes if k.startswith("block_"))
  assert len(blocks) == 12
  assert shapes["block_11"]["attn"]["query"]["kernel"].shape == (768, 12, 64)
  assert shapes["embedding"]["kernel"].shape == (8, 8, 32, 768)
  assert shapes["pos_embedding"].shape == (1, 8, 8, 768)
  assert shapes["head"]["kernel"].shape == (768, 10)


def test_vit_b16_parameter_count_is_the_published_one():
  model = vit_lib.vit(bands=RGB, num_classes=1000, variant="B/16")
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == 86_567_656


def test_build_from_config_and_registry():
  assert "vit" in MODELS
  cfg = ml_collections.ConfigDict(dict(name="vit", variant="Ti/16", width=32,
                                       depth=1, num_heads=2, ffn="swiglu"))
  model = build_model(cfg, bands=SENTINEL2, num_classes=3)
  assert isinstance(model, vit_lib.ViT) and len(model.bands) == 13
  cfg.unknown_field = 1
  with pytest.raises(TypeError, match="unknown_field"):
    build_model(cfg, bands=SENTINEL2, num_classes=3)


def test_bad_input_errors_name_the_fix():
  model = _tiny()
  variables = _base_vars()
  with pytest.raises(ValueError, match="3 bands"):
    model.apply(variables, jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
    model.apply(variables, jnp.zeros((1, 30, 32, 3)))
  with pytest.raises(ValueError, match="use_mask_token=True"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)),
                mask=jnp.zeros((1, 16), bool))
  with pytest.raises(ValueError, match="pool"):
    _base(pool="max").apply(variables, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="ffn"):
    jax.eval_shape(_tiny(ffn="geglu").init, jax.random.key(0),
                   jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="keep_indices must be"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)),
                keep_indices=jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="not both"):
    _base().apply(variables, jnp.zeros((1, 32, 32, 3)),
                  mask=jnp.zeros((1, 16), bool),
                  keep_indices=jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="return_attention"):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), return_attention="x")


def test_patch_embedding_is_a_strided_valid_conv():
  embed = vit_lib.PatchEmbed(width=32, patch_size=8)
  x = _images()
  kernel = _base_vars()["params"]["embedding"]["kernel"]
  bias = jax.random.normal(jax.random.key(3), (32,))
  variables = {"params": {"kernel": kernel, "bias": bias}}
  ref = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(8, 8), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + bias
  np.testing.assert_allclose(embed.apply(variables, x), ref, atol=1e-5)


# ----------------------------------------------------- position embedding


def test_resize_posemb_identity_at_same_size():
  pe = jax.random.normal(jax.random.key(0), (1, 3, 5, 4))
  assert vit_lib.resize_posemb(pe, (3, 5)) is pe


def test_resize_posemb_2x2_to_4x4_by_hand_and_against_torch():
  grid = np.array([[0.0, 1.0], [2.0, 3.0]])
  pe = np.stack([grid, 10 * grid[::-1]], axis=-1)[None]  # (1, 2, 2, 2)
  # Half-pixel-centre bilinear 2 -> 4 samples the input at -0.25, 0.25, 0.75,
  # 1.25, clamped at the borders.
  w = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  expected = np.einsum("ia,jb,abc->ijc", w, w, pe[0])
  got = vit_lib.resize_posemb(jnp.asarray(pe, jnp.float32), (4, 4))
  assert got.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(got[0], expected, atol=1e-6)
  np.testing.assert_allclose(got[0, :, :, 0], [
      [0.0, 0.25, 0.75, 1.0], [0.5, 0.75, 1.25, 1.5],
      [1.5, 1.75, 2.25, 2.5], [2.0, 2.25, 2.75, 3.0]], atol=1e-6)
  ref = torch.nn.functional.interpolate(
      torch.tensor(pe).permute(0, 3, 1, 2), size=(4, 4), mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, ref, atol=1e-6)


def test_resize_posemb_non_square_matches_torch():
  pe = np.random.default_rng(0).normal(size=(1, 2, 3, 4)).astype(np.float32)
  got = vit_lib.resize_posemb(jnp.asarray(pe), (5, 7))
  ref = torch.nn.functional.interpolate(
      torch.tensor(pe).permute(0, 3, 1, 2), size=(5, 7), mode="bilinear",
      align_corners=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, ref, atol=1e-5)
  with pytest.raises(ValueError, match=r"\(1, gh, gw, D\)"):
    vit_lib.resize_posemb(jnp.zeros((1, 6, 4)), (2, 2))


def test_call_time_resize_equals_resized_checkpoint():
  model = _base()
  variables = _base_vars()  # grid 4x4
  assert variables["params"]["pos_embedding"].shape == (1, 4, 4, 32)
  big = _images(size=64)
  out, f = model.apply(variables, big)
  assert f["patch_tokens"].shape == (2, 8, 8, 32)
  resized = _replace(variables, ["pos_embedding"], vit_lib.resize_posemb(
      variables["params"]["pos_embedding"], (8, 8)))
  out2, _ = model.apply(resized, big)
  np.testing.assert_allclose(out, out2, atol=1e-6)
  # The position embedding does change the result (the test above can fail).
  flat = _replace(variables, ["pos_embedding"],
                  jnp.zeros_like(variables["params"]["pos_embedding"]))
  assert not np.allclose(model.apply(flat, big)[0], out, atol=1e-4)


def test_posemb_grid_attribute_sets_the_stored_grid():
  model = _tiny(posemb_grid=(8, 6))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
  assert shapes["params"]["pos_embedding"].shape == (1, 8, 6, 32)
  variables = _base_vars()
  variables = _replace(variables, ["pos_embedding"], jnp.zeros((1, 8, 6, 32)))
  _, f = model.apply(variables, _images(size=32))
  assert f["patch_tokens"].shape == (2, 4, 4, 32)


def test_sincos2d_values_by_hand():
  pe = vit_lib.posemb_sincos_2d((2, 3), 8)
  assert pe.shape == (1, 2, 3, 8)
  # Position y=1, x=2; frequencies 1 and 1/10000.
  expected = [math.sin(2), math.sin(2e-4), math.cos(2), math.cos(2e-4),
              math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)]
  np.testing.assert_allclose(pe[0, 1, 2], expected, atol=1e-6)
  np.testing.assert_allclose(pe[0, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1])


def test_sincos2d_model_has_no_position_parameters():
  model = _tiny(posemb="sincos2d", num_registers=2)
  variables = _init(model)
  assert "pos_embedding" not in variables["params"]
  assert "cls_pos_embedding" not in variables["params"]
  x = _images()
  _, f = model.apply(variables, x)
  embed = vit_lib.PatchEmbed(32, 8).apply(
      {"params": variables["params"]["embedding"]}, x)
  np.testing.assert_allclose(
      f["patch_embed"], (embed + vit_lib.posemb_sincos_2d((4, 4), 32)
                         ).reshape(2, 16, 32), atol=1e-5)


# -------------------------------------------------------------- registers


def test_registers_have_no_position_embedding():
  shapes = lambda m: jax.eval_shape(  # noqa: E731
      m.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  plain, with_regs = shapes(_tiny()), shapes(_tiny(num_registers=4))
  assert with_regs["pos_embedding"].shape == plain["pos_embedding"].shape
  assert with_regs["registers"].shape == (1, 4, 32)


def test_register_outputs_ignore_position_embeddings():
  # With no blocks a token's output is LayerNorm(its input): registers must be
  # exactly LayerNorm(register parameter), whatever the position embeddings.
  model = _tiny(depth=0, num_registers=3)
  variables = _init(model)
  regs = jax.random.normal(jax.random.key(5), (1, 3, 32))
  variables = _replace(variables, ["registers"], regs)
  _, f = model.apply(variables, _images())
  norm = variables["params"]["encoder_norm"]
  r = np.asarray(regs[0], np.float64)
  ln = (r - r.mean(-1, keepdims=True)) / np.sqrt(r.var(-1, keepdims=True)
                                                  + 1e-6)
  expected = ln * np.asarray(norm["scale"]) + np.asarray(norm["bias"])
  np.testing.assert_allclose(f["registers"][0], expected, atol=1e-5)
  np.testing.assert_allclose(f["registers"][1], expected, atol=1e-5)
  key = jax.random.key(6)
  moved = _replace(variables, ["pos_embedding"], jax.random.normal(
      key, variables["params"]["pos_embedding"].shape))
  moved = _replace(moved, ["cls_pos_embedding"], jnp.ones((1, 1, 32)))
  _, g = model.apply(moved, _images())
  np.testing.assert_array_equal(g["registers"], f["registers"])
  assert not np.allclose(g["cls"], f["cls"], atol=1e-3)


def test_permuting_registers_permutes_their_outputs_only():
  model = _base()
  variables = _base_vars()
  regs = jax.random.normal(jax.random.key(5), (1, 2, 32))
  a = _replace(variables, ["registers"], regs)
  b = _replace(variables, ["registers"], regs[:, ::-1])
  _, fa = model.apply(a, _images())
  _, fb = model.apply(b, _images())
  np.testing.assert_allclose(fb["registers"], fa["registers"][:, ::-1],
                             atol=1e-5)
  np.testing.assert_allclose(fb["cls"], fa["cls"], atol=1e-5)
  np.testing.assert_allclose(fb["patch_tokens"], fa["patch_tokens"], atol=1e-5)


# -------------------------------------------------------------- attention


def _numpy_attention(x, p, heads):
  x = np.asarray(x, np.float64)
  n1 = p["norm1"]
  h = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)
                                                + 1e-6)
  h = h * np.asarray(n1["scale"]) + np.asarray(n1["bias"])

  def proj(name):
    k = np.asarray(p["attn"][name]["kernel"], np.float64)
    return np.einsum("btd,dhe->bhte", h, k) + np.asarray(
        p["attn"][name]["bias"])[None, :, None, :]

  q, k = proj("query"), proj("key")
  logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
  logits -= logits.max(-1, keepdims=True)
  w = np.exp(logits)
  return w / w.sum(-1, keepdims=True)


def test_attention_weights_match_numpy_softmax_and_sum_to_one():
  model = _base(return_attention="all")
  variables = _base_vars()
  _, f = model.apply(variables, 3 * _images())
  for i in (0, 1):
    np.testing.assert_allclose(f[f"attention_{i}"].sum(-1), 1.0, atol=1e-5)
  expected = _numpy_attention(f["block_0"], variables["params"]["block_1"], 2)
  got = np.asarray(f["attention_1"])
  assert np.abs(expected - 1 / expected.shape[-1]).max() > 1e-2  # not uniform
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_fused_attention_path_equals_explicit_path():
  model = _base()
  variables = _base_vars()
  x = 3 * _images()
  out, f = model.apply(variables, x)
  out2, f2 = model.apply(variables, x, return_attention="all")
  assert "attention_1" not in f and "attention_1" in f2
  np.testing.assert_allclose(out2, out, atol=1e-5)
  np.testing.assert_allclose(f2["block_1"], f["block_1"], atol=1e-5)


# ------------------------------------------------ feed-forward / training


def test_swiglu_hidden_size_keeps_mlp_parameter_count():
  assert vit_lib.swiglu_hidden_dim(3072) == 2048
  assert vit_lib.swiglu_hidden_dim(100) == 72  # 66 rounded up to 8s
  count = lambda m: sum(x.size for x in jax.tree.leaves(  # noqa: E731
      jax.eval_shape(m.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))))
  mlp = count(vit_lib.vit(bands=RGB, num_classes=0, variant="S/16"))
  swiglu = count(vit_lib.vit(bands=RGB, num_classes=0, variant="S/16",
                             ffn="swiglu"))
  assert abs(swiglu - mlp) / mlp < 0.01


@pytest.mark.parametrize("ffn", ["mlp", "swiglu"])
def test_a_few_steps_reduce_the_loss(ffn):
  model = _tiny(num_classes=4, ffn=ffn, layerscale_init=1e-1, num_registers=2)
  x = _images(b=8)
  y = jnp.arange(8) % 4
  params = model.init(jax.random.key(0), x)["params"]
  assert ("w12" in params["block_0"]["mlp"]) == (ffn == "swiglu")
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p):
    logits, _ = model.apply({"params": p}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  losses = []
  for _ in range(6):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  assert losses[-1] < losses[0] - 0.05, losses


def test_layerscale_scales_the_residual_branches():
  model = _tiny(layerscale_init=1e-5, depth=1)
  x = _images()
  variables = _init(model)
  np.testing.assert_allclose(variables["params"]["block_0"]["ls1"]["scale"],
                             np.full(32, 1e-5))
  assert "ls1" not in _base_vars()["params"]["block_0"]
  # A tiny scale makes the block nearly the identity on its input tokens;
  # without LayerScale it is far from it.
  _, f = model.apply(variables, x)
  np.testing.assert_allclose(f["block_0"][:, 1:], f["patch_embed"], atol=1e-3)
  _, g = _base().apply(_base_vars(), x)
  assert np.abs(g["block_0"][:, 3:] - g["patch_embed"]).max() > 0.1


# ---------------------------------------------------------- drop path etc.


def test_drop_path_helper_drops_whole_samples():
  x = jnp.ones((2000, 3, 4))
  y = np.asarray(vit_lib.drop_path(x, 0.25, jax.random.key(0)))
  per_sample = y.reshape(2000, -1)
  assert np.all(per_sample.min(1) == per_sample.max(1))  # all or nothing
  np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs((per_sample[:, 0] > 0).mean() - 0.75) < 0.04
  assert vit_lib.drop_path(x, 0.25, None) is x
  assert vit_lib.drop_path(x, 0.0, jax.random.key(0)) is x


def test_drop_path_is_identity_at_eval_and_at_rate_zero():
  x = _images(b=8)
  variables = _base_vars()
  ref, _ = _base().apply(variables, x)
  eval_out, _ = _base(drop_path=0.5).apply(variables, x, train=False)
  np.testing.assert_array_equal(eval_out, ref)
  train0, _ = _base(drop_path=0.0).apply(variables, x, train=True)
  np.testing.assert_array_equal(train0, ref)
  rngs = {"dropout": jax.random.key(1)}
  dropped, _ = _base(drop_path=0.5).apply(variables, x, train=True, rngs=rngs)
  assert not np.allclose(dropped, ref, atol=1e-5)


# ----------------------------------------------------------------- masking


def test_mask_token_replaces_exactly_the_masked_patches():
  model = _base()
  variables = _base_vars()
  token = jax.random.normal(jax.random.key(7), (1, 1, 32))
  variables = _replace(variables, ["mask_token"], token)
  x = _images()
  mask = jax.random.bernoulli(jax.random.key(8), 0.4, (2, 16))
  _, plain = model.apply(variables, x)
  _, masked = model.apply(variables, x, mask=mask)
  pos = variables["params"]["pos_embedding"].reshape(1, 16, 32)
  m = np.asarray(mask)
  assert 0 < m.sum() < m.size
  got = np.asarray(masked["patch_embed"])
  base = np.asarray(plain["patch_embed"])
  np.testing.assert_array_equal(got[~m], base[~m])
  expected = np.broadcast_to(np.asarray(token + pos), (2, 16, 32))[m]
  np.testing.assert_allclose(got[m], expected, atol=1e-6)
  with pytest.raises(ValueError, match="mask must be"):
    model.apply(variables, x, mask=jnp.zeros((2, 15), bool))


def test_encode_visible_keeps_position_embeddings_with_their_patches():
  model = _base()
  variables = _base_vars()
  x = _images()
  _, full = model.apply(variables, x)
  perm = jnp.stack([jax.random.permutation(jax.random.key(i), 16)
                    for i in range(2)])
  _, f = model.apply(variables, x, perm, method="encode_visible")
  tokens = full["patch_tokens"].reshape(2, 16, 32)
  np.testing.assert_allclose(
      f["visible_tokens"], jnp.take_along_axis(tokens, perm[..., None], 1),
      atol=1e-5)
  np.testing.assert_allclose(f["cls"], full["cls"], atol=1e-5)
  assert "patch_tokens" not in f


def test_encode_visible_ignores_the_dropped_patches():
  model = _base(pool="mean")
  variables = _base_vars()
  x = np.asarray(_images())
  keep = jnp.array([[0, 5, 10, 15], [3, 2, 1, 0]])
  out, f = model.apply(variables, jnp.asarray(x), keep_indices=keep)
  assert f["visible_tokens"].shape == (2, 4, 32) and out.shape == (2, 32)
  # Overwrite a patch that sample 0 dropped (row 0, column 1 of the grid).
  y = x.copy()
  y[0, 0:8, 8:16] = 100.0
  out2, f2 = model.apply(variables, jnp.asarray(y), keep_indices=keep)
  np.testing.assert_allclose(out2, out, atol=1e-6)
  # ...but not when the patch is kept: sample 1 keeps patch 1.
  y[1, 0:8, 8:16] = 100.0
  out3, _ = model.apply(variables, jnp.asarray(y), keep_indices=keep)
  assert not np.allclose(out3[1], out[1], atol=1e-3)


# ------------------------------------------------------------------- misc


def test_bfloat16_compute_keeps_float32_params():
  model = _base(dtype=jnp.bfloat16)
  variables = _base_vars()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  x = _images()
  out, f = model.apply(variables, x)
  ref, f_ref = _base().apply(variables, x)
  assert f["block_0"].dtype == jnp.bfloat16
  # The headless model's output is the pre-logits vector (|max| 2.2 here),
  # so the comparison has a scale. bfloat16 keeps 8 significant bits
  # (rounding error <= 2^-8 = 0.39% per op); over the patch embedding and
  # two blocks the measured max errors are 0.45% (patch_embed), 0.85%
  # (block_1) and 1.35% (output) of each tensor's max |value|: 5% leaves
  # ~4x margin and still fails for a wrong wire (errors of order 100%).
  for got, want in ((out, ref), (f["block_1"], f_ref["block_1"]),
                    (f["patch_embed"], f_ref["patch_embed"])):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.abs(want).max() > 1.0
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    # Not float32 in disguise: the bfloat16 path really rounded.
    assert not np.array_equal(got, want)


def test_layer_id_for_layerwise_decay():
  depth = 12
  assert vit_lib.layer_id("embedding/kernel", depth) == 0
  assert vit_lib.layer_id("cls", depth) == 0
  assert vit_lib.layer_id("pos_embedding", depth) == 0
  assert vit_lib.layer_id("registers", depth) == 0
  assert vit_lib.layer_id("block_0/attn/query/kernel", depth) == 1
  assert vit_lib.layer_id("block_11/mlp/fc1/bias", depth) == 12
  assert vit_lib.layer_id("encoder/block_3/norm1/scale", depth) == 4
  assert vit_lib.layer_id("encoder_norm/scale", depth) == 13
  assert vit_lib.layer_id("head/kernel", depth) == 13
  # Every real parameter of a model gets an id in [0, depth + 1].
  params = _base_vars()["params"]
  ids = {"/".join(str(k.key) for k in path): vit_lib.layer_id(
      "/".join(str(k.key) for k in path), 2)
         for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert set(ids.values()) == {0, 1, 2, 3}
  assert ids["mask_token"] == ids["cls_pos_embedding"] == 0
  assert ids["block_1/mlp/fc2/kernel"] == 2
  assert ids["encoder_norm/scale"] == 3


def test_gelu_is_the_exact_gelu():
  # x * Phi(x) against scipy's normal CDF and flax's erfc form, tails included.
  from scipy.stats import norm  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = np.linspace(-12.0, 12.0, 4001).astype(np.float32)
  got = np.asarray(vit_lib.gelu(jnp.asarray(x)))
  np.testing.assert_allclose(got, x * norm.cdf(x.astype(np.float64)),
                             atol=2e-6, rtol=1e-6)
  np.testing.assert_allclose(got, np.asarray(nn.gelu(x, approximate=False)),
                             atol=2e-6, rtol=1e-6)


# ------------------------------------------------------ backbone contract


def test_token_backbone_attributes():
  model = _tiny(num_registers=2)
  assert model.num_prefix_tokens == 3
  assert model.token_grid(32, 48) == (4, 6)
  with pytest.raises(ValueError, match="not a multiple of patch_size 8"):
    model.token_grid(30, 32)
  masked = model.with_mask_token()
  assert masked.use_mask_token and not model.use_mask_token
  assert masked.depth == model.depth and masked.parent is None
  assert model.with_attention().return_attention is True
  assert model.with_attention("all").return_attention == "all"
  with pytest.raises(ValueError, match="return_attention"):
    model.with_attention("first")
  assert model.num_layers() == 3
  assert model.dense_maps() == {"patch_tokens": 8, "grid_0": 8, "grid_1": 8}


def test_block_grids_and_prefix_tokens():
  model = _base()
  variables = _base_vars()
  _, f = model.apply(variables, _images())
  for i in range(2):
    # Block i's patch tokens, row-major on the 4x4 grid, prefix dropped.
    np.testing.assert_array_equal(
        f[f"grid_{i}"], f[f"block_{i}"][:, 3:].reshape(2, 4, 4, 32))
  np.testing.assert_array_equal(f["prefix_tokens"][:, 0], f["cls"])
  np.testing.assert_array_equal(f["prefix_tokens"][:, 1:], f["registers"])
  # MAE's path has no full grid; the prefix tokens are still there.
  keep = jnp.array([[0, 5, 7], [1, 2, 15]])
  _, f = model.apply(variables, _images(), keep_indices=keep)
  assert not [k for k in f if k.startswith("grid_")]
  assert f["prefix_tokens"].shape == (2, 3, 32)
  assert f["visible_tokens"].shape == (2, 3, 32)


def test_adapt_param_resizes_position_embeddings_in_either_layout():
  model = _tiny()
  rng = np.random.default_rng(0)
  table = rng.normal(size=(1, 2, 3, 8)).astype(np.float32)
  out = model.adapt_param("pos_embedding", table, (1, 4, 6, 8))
  assert isinstance(out, np.ndarray) and out.dtype == np.float32
  np.testing.assert_allclose(
      out, vit_lib.resize_posemb(jnp.asarray(table), (4, 6)), rtol=1e-6)
  np.testing.assert_array_equal(
      model.adapt_param("pos_embedding", table, table.shape), table)
  # The older (1, N, D) layout of a square grid, into either layout.
  flat = rng.normal(size=(1, 4, 8)).astype(np.float32)
  expected = np.asarray(vit_lib.resize_posemb(
      jnp.asarray(flat.reshape(1, 2, 2, 8)), (3, 3)))
  np.testing.assert_allclose(
      model.adapt_param("encoder/pos_embedding", flat, (1, 3, 3, 8)),
      expected, rtol=1e-6)
  np.testing.assert_allclose(
      model.adapt_param("pos_embedding", flat, (1, 9, 8)),
      expected.reshape(1, 9, 8), rtol=1e-6)


@pytest.mark.parametrize("path,old,new", [
    ("block_0/mlp/fc1/kernel", (4, 8), (4, 16)),     # not a position table
    ("pos_embedding", (1, 5, 8), (1, 9, 8)),          # not a square grid
    ("pos_embedding", (1, 2, 2, 8), (1, 2, 2, 16)),   # another width
    ("cls_pos_embedding", (1, 1, 8), (1, 1, 16)),
])
def test_adapt_param_names_what_cannot_be_adapted(path, old, new):
  with pytest.raises(ValueError) as e:
    _tiny().adapt_param(path, np.zeros(old, np.float32), new)
  for text in (repr(path), str(old), str(new)):
    assert text in str(e.value)
