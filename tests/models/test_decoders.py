"""Tests for eo_jax.models.decoders: every decoder on a tiny ViT and a tiny
ResNet (shapes, gradients, a frozen backbone, bfloat16 compute against
float32), the map choice by name and stride, the mask transformer's masks
and ASPP's taps by hand, and the errors for a backbone that lacks a map."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.data import bands as bands_lib
from eo_jax.errors import ConfigValueError, InputShapeError
from eo_jax.models import build_model
from eo_jax.models.decoders import DECODERS
from eo_jax.models.decoders import base, conv, deeplabv3plus, segmenter

BANDS = bands_lib.SENTINEL2[:3]
IMAGE = (2, 16, 16, 3)
K = 3

# Tiny backbones: the ViT has 4 blocks so 'ms_linear' finds its 4 grids; the
# ResNet's stem and 3 stages are 4 pyramid maps (strides 1, 1, 2, 4).
BACKBONES = {
    "vit": dict(name="vit", variant="S/4", width=8, depth=4, num_heads=2,
                mlp_dim=16),
    "resnet": dict(name="resnet", stage_sizes=(1, 1, 1), width=4,
                   low_res_stem=True),
}
# Narrow decoders; the ASPP rates follow the default rule.
SETTINGS = {
    "linear": {},
    "ms_linear": {},
    "conv": dict(width=4),
    "segmenter": dict(width=8, mlp_dim=16),
    "deeplabv3plus": dict(width=4, low_level_width=4, aux_width=4),
}
# The backbone's first parameters: a gradient there went through it all.
INPUT_SIDE = {"vit": ("embedding", "kernel"), "resnet": ("stem_conv", "kernel")}

VIT_STRIDES = {"patch_tokens": 8, **{f"grid_{i}": 8 for i in range(12)}}
RESNET_OS16 = {"stem": 4, "stage_1": 4, "stage_2": 8, "stage_3": 16,
               "stage_4": 16}


@pytest.fixture(autouse=True)
def _quick_rng_compile():
  # XLA CPU compiles jax 0.10's default (partitionable) threefry several
  # times slower; which random stream initialises the weights is irrelevant.
  with jax.threefry_partitionable(False):
    yield


def _model(decoder, backbone, freeze=False, **settings):
  config = dict(name="segmentation", decoder=decoder,
                decoder_settings={**SETTINGS[decoder], **settings},
                backbone=BACKBONES[backbone], freeze_backbone=freeze)
  return build_model(config, bands=BANDS, num_classes=K)


@functools.lru_cache(maxsize=None)
def _backbone_variables(backbone):
  # Shared by every decoder on this backbone: initialising compiles many
  # small random ops.
  model = build_model(BACKBONES[backbone], bands=BANDS, num_classes=0)
  x = jnp.zeros(IMAGE)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  _, features = jax.eval_shape(model.apply, variables, x)
  return variables, features


def _variables(model, backbone):
  """The segmentation model's variables: the shared backbone's + its
  decoder's, initialised on zero features of the right shapes."""
  bb_vars, feature_shapes = _backbone_variables(backbone)
  features = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), feature_shapes)
  strides = dict(model.strides)
  init = jax.jit(lambda key, f: model.decoder.init(key, f, strides, IMAGE[1:3]))
  dec_vars = init(jax.random.key(1), features)
  out = {}
  for collection in set(bb_vars) | set(dec_vars):
    out[collection] = {}
    if collection in bb_vars:
      out[collection]["backbone"] = bb_vars[collection]
    if collection in dec_vars:
      out[collection]["decoder"] = dec_vars[collection]
  return out


def _nonzero(tree):
  return {"/".join(str(k.key) for k in path): bool(np.any(np.asarray(v)))
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("decoder", sorted(SETTINGS))
def test_decoder_trains_its_backbone_unless_frozen(decoder, backbone):
  free = _model(decoder, backbone)
  frozen = _model(decoder, backbone, freeze=True)
  variables = _variables(free, backbone)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  x = jax.random.normal(jax.random.key(2), IMAGE)
  weights = jax.random.normal(jax.random.key(3), IMAGE[:3] + (K,))

  def loss(model, p):
    (logits, features), new_state = model.apply(
        {"params": p, **state}, x, train=True,
        rngs={"dropout": jax.random.key(4)}, mutable=list(state))
    total = jnp.sum(logits * weights)
    if "aux_logits" in features:
      total += jnp.sum(features["aux_logits"] * weights)
    return total, (logits, features, new_state)

  @jax.jit
  def both(p):
    # One program for both models: compiling is what costs here.
    free_grads, (logits, features, _) = jax.grad(
        lambda p: loss(free, p), has_aux=True)(p)
    frozen_grads, (_, _, frozen_state) = jax.grad(
        lambda p: loss(frozen, p), has_aux=True)(p)
    return logits, features, free_grads, frozen_grads, frozen_state

  logits, features, free_grads, frozen_grads, frozen_state = both(params)
  assert logits.shape == IMAGE[:3] + (K,) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  if decoder == "deeplabv3plus":
    aux = features["aux_logits"]
    assert aux.shape == logits.shape and aux.dtype == jnp.float32
    assert np.isfinite(np.asarray(aux)).all()
  else:
    assert "aux_logits" not in features
  assert "pre_logits" in features

  # Every decoder parameter learns, frozen backbone or not.
  for grads in (free_grads, frozen_grads):
    reached = _nonzero(grads["decoder"])
    assert all(reached.values()), [k for k, v in reached.items() if not v]
  # Unfrozen, the gradient reaches the backbone's input side.
  first, leaf = INPUT_SIDE[backbone]
  assert np.any(np.asarray(free_grads["backbone"][first][leaf]))
  # Frozen, the backbone's gradient is exactly zero ...
  assert not any(_nonzero(frozen_grads["backbone"]).values())
  # ... and it ran in inference mode: its BatchNorm statistics are unchanged,
  # while the decoder's (if any) moved.
  if "batch_stats" in state:
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)),
                        state["batch_stats"].get("backbone", {}),
                        frozen_state["batch_stats"].get("backbone", {}))
    assert all(jax.tree.leaves(same))
    if "decoder" in state["batch_stats"]:
      moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           state["batch_stats"]["decoder"],
                           frozen_state["batch_stats"]["decoder"])
      assert any(jax.tree.leaves(moved))


# ------------------------------------------------------- mixed precision

# Max |bf16 - float32| / max |float32 logit| of each decoder computing in
# bfloat16 on a float32 backbone's features (same parameters and batch,
# BatchNorm on its running statistics; in training, the BatchNorm of ASPP's
# pooling branch normalises over the B = 2 pooled vectors alone and
# magnifies any rounding), measured on this test's batch with the (resnet,
# vit) backbones: linear 4.2e-3, 3.8e-3; ms_linear 4.5e-3, 2.7e-3; conv
# 8.3e-3, 5.1e-3; deeplabv3plus 6.3e-3, 2.6e-3 (aux head 4.3e-3, 5.7e-3);
# segmenter 0.20, 0.080, and its cosines before `mask_norm` 1.8e-2,
# 2.5e-2 (see the test). bfloat16 keeps 8 significant bits (2^-8 = 3.9e-3);
# the bounds leave 3-4x. A decoder left in float32 by mistake gives exactly
# 0, which the test rejects as well.
BF16_TOLERANCE = {"linear": 1.5e-2, "ms_linear": 1.5e-2, "conv": 3e-2,
                  "segmenter": 0.7, "deeplabv3plus": 2e-2}
BF16_MASKS_TOLERANCE = 8e-2
# Layers of a bfloat16 decoder that are float32 by design: the Segmenter's
# LayerNorm over the K cosines (eo_jax/models/decoders/segmenter.py).
FLOAT32_BY_DESIGN = {"segmenter": {"mask_norm"}}
_LAYERS = (nn.Conv, nn.Dense, nn.DenseGeneral, nn.BatchNorm, nn.LayerNorm)


def _layer_dtypes(intermediates):
  """{decoder submodule path: output dtype} of the captured layers."""
  out = {}
  for path, value in jax.tree_util.tree_leaves_with_path(
      intermediates["decoder"]):
    keys = [str(k.key) for k in path if hasattr(k, "key")]
    if "__call__" in keys:  # not what the Segmenter sows itself
      out["/".join(keys[:keys.index("__call__")])] = str(value.dtype)
  return out


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("decoder", sorted(SETTINGS))
def test_bfloat16_decoder_computes_in_bf16_with_float32_params(decoder,
                                                                backbone):
  f32 = _model(decoder, backbone)
  bf16 = _model(decoder, backbone, dtype="bfloat16")
  assert f32.decoder.dtype == jnp.float32
  assert bf16.decoder.dtype == jnp.bfloat16
  # The backbone stays float32: the error measured is the decoder's alone.
  assert bf16.backbone.dtype == jnp.float32
  # Initialised in bfloat16, every variable is float32 all the same.
  shapes = jax.eval_shape(bf16.init, jax.random.key(0),
                          jax.ShapeDtypeStruct(IMAGE, jnp.float32))
  assert {v.dtype for v in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}

  variables = _variables(f32, backbone)
  state = {k: v for k, v in variables.items() if k != "params"}
  x = jax.random.normal(jax.random.key(2), IMAGE)
  capture = lambda mdl, _: isinstance(mdl, _LAYERS)  # noqa: E731

  @jax.jit
  def run(v):
    # One program for the three calls: compiling is what costs here.
    infer = lambda model, **kw: model.apply(  # noqa: E731
        v, x, mutable=["intermediates"], **kw)
    train = bf16.apply(v, x, train=True, rngs={"dropout": jax.random.key(4)},
                       mutable=list(state))
    return infer(f32), infer(bf16, capture_intermediates=capture), train

  ((want, want_f), want_i), ((got, got_f), got_i), train = run(variables)
  pairs = [(got, want)]
  if decoder == "deeplabv3plus":
    pairs.append((got_f["aux_logits"], want_f["aux_logits"]))
  for a, b in pairs:
    assert a.dtype == jnp.float32 and a.shape == b.shape
    error = _relative_error(a, b)
    assert error < BF16_TOLERANCE[decoder], error
    assert not np.array_equal(np.asarray(a), np.asarray(b))  # bf16 rounded
  if decoder == "segmenter":
    # Its logits are a LayerNorm over each patch's K cosines, which divides
    # their rounding by their spread, small at init where the class tokens
    # nearly tie: hence its loose bound above. The cosines it normalises
    # (sown as 'masks') are bounded tightly.
    error = _relative_error(got_i["intermediates"]["decoder"]["masks"][0],
                            want_i["intermediates"]["decoder"]["masks"][0])
    assert error < BF16_MASKS_TOLERANCE, error
  # Every conv, dense layer (attention's too) and norm of the decoder ran in
  # bfloat16 (a layer's output dtype is its compute dtype), save those
  # float32 by design.
  layers = _layer_dtypes(got_i["intermediates"])
  assert layers, "no decoder layer captured"
  in_f32 = {p for p, dt in layers.items() if dt != "bfloat16"}
  assert in_f32 == FLOAT32_BY_DESIGN.get(decoder, set()), layers
  # Training in bfloat16: float32 logits, and the running statistics it
  # updates stay float32.
  (logits, _), new_state = train
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  assert {v.dtype for v in jax.tree.leaves(new_state)} <= {jnp.dtype("float32")}


# ------------------------------------------------------------ map choice


def test_maps_are_chosen_by_name_and_stride():
  assert base.block_grids({"grid_10": 8, "grid_2": 8, "stem": 4}) == [
      "grid_2", "grid_10"]
  assert base.deepest_map(VIT_STRIDES) == "patch_tokens"
  assert base.deepest_map(RESNET_OS16) == "stage_4"  # the last at stride 16
  assert base.deepest_map({"stem": 4, "stage_1": 4, "stage_2": 8}) == "stage_2"
  assert base.deepest_map({}) is None
  # DeepLabV3+: stage_1 (the last stride-4 map) and stage 3; a ViT's first
  # quarter and middle blocks.
  assert deeplabv3plus.low_level_map(RESNET_OS16, "stage_4") == "stage_1"
  assert deeplabv3plus.aux_map(RESNET_OS16, "stage_4") == "stage_3"
  assert deeplabv3plus.low_level_map(VIT_STRIDES, "patch_tokens") == "grid_2"
  assert deeplabv3plus.aux_map(VIT_STRIDES, "patch_tokens") == "grid_5"
  # No stride 4: the closest finer one (log scale, coarser on a tie).
  low_res = {"stem": 1, "stage_1": 1, "stage_2": 2, "stage_3": 8}
  assert deeplabv3plus.low_level_map(low_res, "stage_3") == "stage_2"
  assert deeplabv3plus.low_level_map({"a": 2, "b": 8, "c": 32}, "c") == "b"
  assert deeplabv3plus.low_level_map({"stage_4": 16}, "stage_4") is None


def test_aspp_rates_keep_deeplabs_pixel_spacing():
  assert deeplabv3plus.aspp_rates(16) == (6, 12, 18)
  assert deeplabv3plus.aspp_rates(8) == (12, 24, 36)
  assert deeplabv3plus.aspp_rates(32) == (3, 6, 9)
  assert deeplabv3plus.aspp_rates(14) == (7, 14, 21)  # ViT /14: 6.86, ...
  assert deeplabv3plus.aspp_rates(4) == (24, 48, 72)
  assert deeplabv3plus.aspp_rates(512) == (1, 1, 1)


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)),
                                                 (8, (12, 24, 36))])
def test_deeplabv3plus_on_a_dilated_resnet(output_stride, rates):
  # Shapes only: the maps DeepLabV3+ reads and the sizes they come in.
  config = dict(name="segmentation", decoder="deeplabv3plus",
                decoder_settings=SETTINGS["deeplabv3plus"],
                backbone=dict(name="resnet18", width=4,
                              output_stride=output_stride))
  model = build_model(config, bands=BANDS, num_classes=K)
  assert model.decoder.select_maps(dict(model.strides)) == {
      "deep": "stage_4", "low_level": "stage_1", "aux": "stage_3"}
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, features = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == features["aux_logits"].shape == (2, 64, 64, K)
  assert features["stage_4"].shape[1:3] == (64 // output_stride,) * 2
  aspp = variables["params"]["decoder"]["aspp"]
  assert sorted(aspp) == ["atrous_0", "atrous_1", "atrous_2", "branch_1x1",
                          "pooling", "project"]
  assert deeplabv3plus.resolve_rates(None, output_stride) == rates
  assert deeplabv3plus.resolve_rates([1, 2], output_stride) == (1, 2)
  with pytest.raises(ConfigValueError, match="aspp_rates"):
    deeplabv3plus.resolve_rates((0, 2), output_stride)


def test_conv_decoder_upsamples_any_stride_to_the_image():
  steps = [conv.upsampling_steps(s) for s in (1, 2, 4, 14, 16)]
  assert steps == [0, 1, 2, 4, 4]
  decoder = DECODERS.get("conv")(num_classes=K, width=4)
  features, strides = {"stage_2": jnp.zeros((1, 5, 5, 6))}, {"stage_2": 3}
  variables = jax.eval_shape(
      lambda f: decoder.init(jax.random.key(0), f, strides, (15, 15)), features)
  assert sorted(variables["params"]) == ["classifier", "up_0", "up_1"]
  logits, aux = jax.eval_shape(
      lambda v: decoder.apply(v, features, strides, (15, 15)), variables)
  assert logits.shape == (1, 15, 15, K) and aux == {}


# -------------------------------------------------------- mask transformer


def test_class_masks_by_hand():
  patches = jnp.array([[3.0, 4.0], [1.0, 0.0], [0.0, -2.0]])
  classes = jnp.array([[2.0, 0.0], [0.0, 0.5]])
  # Unit vectors (0.6, 0.8), (1, 0), (0, -1) against (1, 0), (0, 1).
  want = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
  np.testing.assert_allclose(segmenter.class_masks(patches, classes), want,
                             atol=1e-6)
  # Batched, against numpy.
  rng = np.random.default_rng(0)
  p, c = rng.normal(size=(2, 5, 4)), rng.normal(size=(2, 3, 4))
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
  np.testing.assert_allclose(
      segmenter.class_masks(jnp.asarray(p), jnp.asarray(c)),
      np.einsum("bnd,bkd->bnk", unit(p), unit(c)), atol=1e-5)


def test_segmenter_masks_are_cosines_of_its_embeddings():
  decoder = DECODERS.get("segmenter")(num_classes=K, width=8, dropout=0.0)
  grid = jax.random.normal(jax.random.key(0), (2, 3, 4, 6))
  features, strides = {"patch_tokens": grid}, {"patch_tokens": 4}
  variables = jax.jit(lambda key, f: decoder.init(key, f, strides, (12, 16)))(
      jax.random.key(1), features)
  (logits, aux), sown = jax.jit(lambda v, f: decoder.apply(
      v, f, strides, (12, 16), mutable=["intermediates"]))(variables, features)
  assert aux == {} and logits.shape == (2, 12, 16, K)
  inter = sown["intermediates"]
  patches = np.asarray(inter["patch_embeddings"][0])
  classes = np.asarray(inter["class_embeddings"][0])
  masks = np.asarray(inter["masks"][0])
  assert patches.shape == (2, 12, 8) and classes.shape == (2, K, 8)
  np.testing.assert_allclose(np.linalg.norm(patches, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(classes, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(masks, np.einsum("bnd,bkd->bnk", patches, classes),
                             atol=1e-5)
  # Then mask_norm (LayerNorm over K, identity affine at init) and bilinear
  # upsampling of the 3x4 grid.
  normed = (masks - masks.mean(-1, keepdims=True)) / np.sqrt(
      masks.var(-1, keepdims=True) + 1e-5)
  want = jax.image.resize(jnp.asarray(normed.reshape(2, 3, 4, K)),
                          (2, 12, 16, K), "bilinear", antialias=False)
  np.testing.assert_allclose(logits, want, atol=1e-4)


# ------------------------------------------------------------------ ASPP

_BN = 1.0 / np.sqrt(1.0 + 1e-5)  # BatchNorm at init, in inference mode


def _set(params, path, value):
  params = jax.tree.map(lambda v: v, params)
  node = params
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = jnp.asarray(value, jnp.float32)
  return params


def test_aspp_dilated_taps_are_rate_pixels_apart():
  aspp = deeplabv3plus.ASPP(width=1, rates=(2, 3), dropout=0.0)
  x = jnp.zeros((1, 15, 15, 1)).at[0, 7, 7, 0].set(1.0)
  variables = aspp.init(jax.random.key(0), x)
  taps = np.arange(1.0, 10.0).reshape(3, 3)  # all positive: ReLU keeps them
  params = variables["params"]
  for i in range(2):
    params = _set(params, (f"atrous_{i}", "conv", "kernel"),
                  taps.reshape(3, 3, 1, 1))
  _, inter = aspp.apply({**variables, "params": params}, x,
                        capture_intermediates=True, mutable=["intermediates"])
  for i, rate in enumerate((2, 3)):
    out = np.asarray(inter["intermediates"][f"atrous_{i}"]["__call__"][0])
    # Cross-correlation: output (7 - (a-1) r, 7 - (b-1) r) sees the pixel
    # through tap (a, b); nothing else is non-zero.
    want = np.zeros((15, 15))
    for a in range(3):
      for b in range(3):
        want[7 - (a - 1) * rate, 7 - (b - 1) * rate] = taps[a, b] * _BN
    np.testing.assert_allclose(out[0, :, :, 0], want, atol=1e-6)
    rows = sorted(set(np.nonzero(out[0, :, :, 0])[0]))
    assert rows == [7 - rate, 7, 7 + rate]


def test_aspp_image_pooling_broadcasts_the_spatial_mean():
  width = 2
  aspp = deeplabv3plus.ASPP(width=width, rates=(1,), dropout=0.0)
  x = jax.random.uniform(jax.random.key(0), (2, 5, 6, width)) + 0.1
  variables = aspp.init(jax.random.key(1), x)
  params = variables["params"]
  eye = np.eye(width).reshape(1, 1, width, width)
  params = _set(params, ("pooling", "conv", "kernel"), eye)
  # The projection reads only the pooling branch, the last `width` of the
  # 3 * width concatenated channels.
  project = np.zeros((1, 1, 3 * width, width))
  project[0, 0, 2 * width:] = np.eye(width)
  params = _set(params, ("project", "conv", "kernel"), project)
  out = aspp.apply({**variables, "params": params}, x)
  mean = np.asarray(x).mean(axis=(1, 2))  # (B, C)
  want = np.broadcast_to(mean[:, None, None, :] * _BN * _BN, out.shape)
  np.testing.assert_allclose(out, want, rtol=1e-5)


# ---------------------------------------------------------------- errors


def test_deeplabv3plus_without_a_finer_map_names_what_is_missing():
  decoder = DECODERS.get("deeplabv3plus")(num_classes=K)
  with pytest.raises(ConfigValueError) as e:
    decoder.select_maps({"stage_4": 16}, "backbone OneMap")
  text = str(e.value)
  assert "'deeplabv3plus'" in text and "stride 4" in text
  assert "backbone OneMap offers 'stage_4' (stride 16)" in text
  # Called as a module, the same check.
  with pytest.raises(ConfigValueError, match="low-level map at stride 4"):
    decoder.init(jax.random.key(0), {"stage_4": jnp.zeros((1, 2, 2, 4))},
                 {"stage_4": 16}, (32, 32))
  # A named map the backbone lacks.
  named = DECODERS.get("deeplabv3plus")(num_classes=K, aux_map="stage_9")
  with pytest.raises(ConfigValueError, match="'stage_9'.*aux_map"):
    named.select_maps(RESNET_OS16)


def test_ms_linear_on_a_shallow_vit_fails_at_build_time():
  config = dict(name="segmentation", decoder="ms_linear",
                backbone={**BACKBONES["vit"], "depth": 2})
  with pytest.raises(ConfigValueError) as e:
    build_model(config, bands=BANDS, num_classes=K)
  text = str(e.value)
  assert "'ms_linear'" in text and "last 4 block grids" in text
  assert "backbone ViT" in text and "'grid_0..grid_1' (stride 4)" in text
  assert "found 2" in text


def test_a_map_missing_from_the_features_is_named():
  decoder = DECODERS.get("linear")(num_classes=K)
  with pytest.raises(InputShapeError, match="'patch_tokens'.*keep_indices"):
    decoder.init(jax.random.key(0), {"visible_tokens": jnp.zeros((1, 4, 8))},
                 {"patch_tokens": 4}, (8, 8))
  with pytest.raises(ConfigValueError, match="'linear' needs a dense map"):
    decoder.select_maps({})
