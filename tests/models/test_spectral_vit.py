"""Tests for eo_jax.models.spectral_vit: shapes, band groups, wavelength
invariances, one parameter set on other sensors, masking, attention, layer
ids and the summary."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import summary
from eo_jax.data.bands import SENTINEL2, Band
from eo_jax.models import MODELS, build_model
from eo_jax.models import backbone as backbone_lib
from eo_jax.models import spectral_vit as sv

MODES = ("factorized", "joint")
EMBEDS = ("wavelength", "group")
B, SIZE, P, D = 2, 16, 4, 32
N = (SIZE // P) ** 2  # 16 patches
G13 = 5  # Sentinel-2's 13 bands in groups of 3: 3, 3, 3, 3, 1


def _tiny(bands=SENTINEL2, num_classes=0, **kw) -> sv.SpectralViT:
  args = dict(variant="S/8", patch_size=P, width=D, depth=2, num_heads=2,
              mlp_dim=64, block_group_size=1, num_registers=1,
              use_mask_token=True)
  args.update(kw)
  return sv.spectral_vit(bands=bands, num_classes=num_classes, **args)


_INIT_CACHE: dict = {}


def _vars(mode="factorized", embed="wavelength", **kw):
  """Variables of `_tiny(mode=, embed=, **kw)` on 13 bands, shared by tests
  (initialising compiles many small ops; 2 cores)."""
  key = (mode, embed, tuple(sorted(kw.items())))
  if key not in _INIT_CACHE:
    model = _tiny(mode=mode, embed=embed, **kw)
    _INIT_CACHE[key] = model.init(jax.random.key(0),
                                  jnp.zeros((B, SIZE, SIZE, 13)))
  return _INIT_CACHE[key]


def _images(channels=13, seed=1):
  return np.asarray(jax.random.normal(jax.random.key(seed),
                                      (B, SIZE, SIZE, channels)))


def _close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=0)


def _differs(a, b, atol=1e-4):
  return not np.allclose(np.asarray(a), np.asarray(b), atol=atol)


def _hyperspectral(n=200):
  return tuple(Band(f"h{i:03d}", 400.0 + 2100.0 * i / (n - 1))
               for i in range(n))


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("embed", EMBEDS)
def test_output_feature_and_parameter_shapes(mode, embed):
  # Abstract evaluation only; values are checked below.
  model = _tiny(num_classes=7, mode=mode, embed=embed, depth=4,
                block_group_size=2, return_attention="all")
  x = jax.ShapeDtypeStruct((B, SIZE, SIZE, 13), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out, f = jax.eval_shape(model.apply, variables, x)
  prefix = 2  # cls + 1 register
  assert out.shape == (B, 7) and out.dtype == jnp.float32
  assert f["patch_embed"].shape == (B, G13, N, D)
  assert f["patch_tokens"].shape == (B, 4, 4, D)
  assert f["group_tokens"].shape == (B, G13, 4, 4, D)
  assert f["cls"].shape == f["pre_logits"].shape == (B, D)
  assert f["registers"].shape == (B, 1, D)
  assert f["prefix_tokens"].shape == (B, prefix, D)
  grids = 4 if mode == "joint" else 2  # blocks, or block groups
  for i in range(grids):
    assert f[f"grid_{i}"].shape == (B, 4, 4, D)
    assert f[f"block_{i}"].shape == (B, prefix + G13 * N, D)
  assert f"grid_{grids}" not in f
  for i in range(4):
    assert f[f"attention_{i}"].shape == (B, 2, prefix + N, prefix + N)
    if mode == "joint":
      t = prefix + G13 * N
      assert f[f"token_attention_{i}"].shape == (B, 2, t, t)
    else:
      assert f[f"spectral_attention_{i}"].shape == (B, N, 2, G13, G13)

  params = variables["params"]
  if embed == "group":
    assert params["embedding"]["kernel"].shape == (G13, 3, P, P, D)
    assert params["embedding"]["bias"].shape == (G13, D)
  else:
    gen = params["embedding"]["generator"]
    assert gen["to_kernel"]["kernel"].shape == (256, P * P * D)
    assert gen["to_bias"]["kernel"].shape == (256, D)
  if mode == "joint":
    assert {f"block_{i}" for i in range(4)} <= set(params)
  else:
    assert {f"spatial_{i}" for i in range(4)} <= set(params)
    assert {f"spectral_{i}" for i in range(4)} <= set(params)
    assert {"fuse_0", "fuse_1"} <= set(params) and "fuse_2" not in params
    assert params["fuse_0"]["kernel"].shape == (2 * D, D)
  assert params["pos_embedding"].shape == (1, 4, 4, D)
  assert params["mask_token"].shape == (1, 1, D)


@pytest.mark.parametrize("mode", MODES)
def test_is_a_token_backbone_with_dense_maps_at_the_patch_stride(mode):
  model = _tiny(mode=mode, use_mask_token=False)
  assert isinstance(model, backbone_lib.TokenBackbone)
  assert backbone_lib.require_token_backbone(model, "objective 'mae'",
                                             "encodes patches") is model
  assert model.num_prefix_tokens == 2 and model.width == D
  assert model.patch_size == P and model.token_grid(16, 24) == (4, 6)
  assert model.with_mask_token().use_mask_token
  assert model.with_attention("all").return_attention == "all"
  maps = model.dense_maps()
  assert maps == {"patch_tokens": P, "grid_0": P, "grid_1": P}
  x = jax.ShapeDtypeStruct((B, 16, 24, 13), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  _, f = jax.eval_shape(model.apply, variables, x)
  for key in maps:
    assert f[key].shape == (B, 4, 6, D), key


def test_headless_output_pooling():
  variables = _vars()
  x = _images()
  out, f = _tiny().apply(variables, x)
  np.testing.assert_array_equal(out, f["cls"])
  out, f = _tiny(pool="mean").apply(variables, x)
  _close(out, f["group_tokens"].mean(axis=(1, 2, 3)))
  _close(f["patch_tokens"], f["group_tokens"].mean(axis=1))


def test_factory_registry_and_config_errors():
  model = build_model(dict(name="spectral_vit", variant="S/8", mode="joint",
                           groups=[["B02", "B03", "B04"], ["B08"]]),
                      bands=SENTINEL2[1:4] + SENTINEL2[7:8], num_classes=3)
  assert MODELS.get("spectral_vit") is sv.spectral_vit
  assert (model.width, model.depth, model.num_heads, model.patch_size) == (
      384, 12, 6, 8)
  assert model.groups == (("B02", "B03", "B04"), ("B08",))
  for kw, match in ((dict(mode="spatial"), "mode must be one of"),
                    (dict(embed="conv"), "embed must be one of"),
                    (dict(spectral_embed="table"), "spectral_embed"),
                    (dict(groups=(("B02", "B99"),)), "B99"),
                    (dict(groups=(("B02",), ("B02",))), "twice"),
                    (dict(group_size=0), "group_size")):
    with pytest.raises(ValueError, match=match):
      _tiny(**kw)
  with pytest.raises(ValueError, match="in no group"):
    _tiny(groups=(("B02", "B03"),))


# ----------------------------------------------------------- band groups


def test_automatic_groups_are_contiguous_wavelength_runs():
  shuffled = tuple(SENTINEL2[i] for i in (12, 0, 7, 3, 10, 1, 8, 5, 2, 11,
                                          4, 9, 6))
  model = _tiny(bands=shuffled)
  assert model.group_bands == (("B01", "B02", "B03"), ("B04", "B05", "B06"),
                               ("B07", "B08", "B8A"), ("B09", "B10", "B11"),
                               ("B12",))
  assert model.num_groups == 5
  names = [b.name for b in shuffled]
  assert model.group_channels[0] == tuple(names.index(n)
                                          for n in ("B01", "B02", "B03"))
  np.testing.assert_allclose(model.group_wavelengths[0],
                             (442.7 + 492.4 + 559.8) / 3)
  assert _tiny(group_size=4).group_bands[-1] == ("B12",)
  assert _tiny(mode="joint").maskable_tokens(16, 16) == 5 * N
  assert _tiny(mode="factorized").maskable_tokens(16, 16) == N


def test_explicit_groups_keep_their_order_and_names():
  groups = (("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A"),
            ("B11", "B12"), ("B01", "B09", "B10"))
  model = _tiny(groups=groups)
  assert model.group_bands == groups
  assert model.num_groups == 4
  np.testing.assert_allclose(model.group_wavelengths[2], (1613.7 + 2202.4) / 2)


def test_wavelength_encoding_values():
  enc = np.asarray(sv.wavelength_encoding(jnp.array([0.0, 500.0]), 8))
  freq = 1.0 / 10_000.0**(np.arange(4) / 3)
  np.testing.assert_allclose(enc[1], np.concatenate(
      [np.sin(500 * freq), np.cos(500 * freq)]), atol=1e-5)
  np.testing.assert_allclose(enc[0], [0, 0, 0, 0, 1, 1, 1, 1])


# ----------------------------------------------------------- invariances


@pytest.mark.parametrize("mode", MODES)
def test_band_permutation_leaves_the_output_unchanged(mode):
  # Reorder the image channels and the Band list the same way: automatic
  # groups sort by wavelength, channels are gathered by index, so the model
  # computes the same thing.
  variables = _vars(mode)
  x = _images()
  perm = np.random.default_rng(0).permutation(13)
  bands = tuple(SENTINEL2[i] for i in perm)
  out, f = _tiny(mode=mode).apply(variables, x)
  out_p, f_p = _tiny(bands=bands, mode=mode).apply(variables, x[..., perm])
  _close(out_p, out)
  _close(f_p["patch_tokens"], f["patch_tokens"])


def test_group_order_in_the_config_does_not_matter_for_wavelength_tokens():
  # The spectral embedding and the token kernels come from wavelengths, not
  # from group indices: listing the groups in another order only permutes
  # the group axis of the tokens.
  groups = (("B01", "B02", "B03", "B04"), ("B05", "B06", "B07"),
            ("B08", "B8A", "B09"), ("B10", "B11", "B12"))
  x = _images()
  for mode in MODES:
    variables = _vars(mode)
    out, f = _tiny(mode=mode, groups=groups).apply(variables, x)
    out_r, f_r = _tiny(mode=mode, groups=groups[::-1]).apply(variables, x)
    _close(out_r, out)
    _close(f_r["group_tokens"], f["group_tokens"][:, ::-1])


def test_group_embedding_is_tied_to_the_group_order():
  # Where the design gives no invariance: embed='group' kernels belong to a
  # (group index, slot). Channel order still does not matter (bands are
  # looked up by name), the order of the configured groups does.
  groups = (("B01", "B02", "B03"), ("B04", "B05", "B06"), ("B07", "B08", "B8A"),
            ("B09", "B10", "B11"), ("B12",))
  variables = _vars("factorized", "group")
  x = _images()
  out = _tiny(embed="group", groups=groups).apply(variables, x)[0]
  perm = np.random.default_rng(1).permutation(13)
  out_p = _tiny(bands=tuple(SENTINEL2[i] for i in perm), embed="group",
                groups=groups).apply(variables, x[..., perm])[0]
  _close(out_p, out)
  swapped = (groups[1], groups[0]) + groups[2:]
  out_s = _tiny(embed="group", groups=swapped).apply(variables, x)[0]
  assert _differs(out_s, out)


# ------------------------------------------------ other sensors, same params


@pytest.mark.parametrize("mode", MODES)
def test_thirteen_band_parameters_run_on_7_and_200_bands(mode):
  variables = _vars(mode)  # initialised on Sentinel-2's 13 bands
  for bands in (SENTINEL2[1:8], _hyperspectral(200)):
    model = _tiny(bands=bands, mode=mode, num_classes=0)
    g = model.num_groups
    out, f = model.apply(variables, _images(len(bands)))
    assert out.shape == (B, D) and np.isfinite(np.asarray(out)).all()
    assert f["group_tokens"].shape == (B, g, 4, 4, D)
    assert np.isfinite(np.asarray(f["patch_tokens"])).all()
  assert g == 67


@pytest.mark.parametrize("mode", MODES)
def test_group_embedding_on_other_bands_raises_a_clear_error(mode):
  variables = _vars(mode, "group")
  for bands in (SENTINEL2[1:8], _hyperspectral(200)):
    model = _tiny(bands=bands, mode=mode, embed="group")
    with pytest.raises(ValueError, match="embed='group' ties"):
      model.apply(variables, _images(len(bands)))


# ----------------------------------------------------------------- masking


def _patch(x, sample, row, col, channels=slice(None), value=50.0):
  """A copy of x with one patch's channels overwritten."""
  y = x.copy()
  y[sample, row * P:(row + 1) * P, col * P:(col + 1) * P, channels] = value
  return y


@pytest.mark.parametrize("mode", MODES)
def test_spatial_mask_hides_every_group_of_the_patch(mode):
  model = _tiny(mode=mode)
  variables = _vars(mode)
  x = _images()
  mask = np.zeros((B, N), bool)
  mask[0, 5] = True  # patch (1, 1) of sample 0
  out, f = model.apply(variables, x, mask=jnp.asarray(mask))
  y = _patch(x, 0, 1, 1)
  out_y, _ = model.apply(variables, y, mask=jnp.asarray(mask))
  _close(out_y, out, atol=1e-6)
  # The masked patch's tokens are the mask token plus the embeddings.
  _, plain = model.apply(variables, x)
  pe = f["patch_embed"]
  assert _differs(pe[0, :, 5], plain["patch_embed"][0, :, 5])
  _close(pe[0, :, 4], plain["patch_embed"][0, :, 4], atol=0)
  # Unmasked, the same change shows.
  assert _differs(model.apply(variables, y)[0][0], plain["cls"][0])


@pytest.mark.parametrize("mode", MODES)
def test_token_mask_hides_one_group_of_one_patch(mode):
  model = _tiny(mode=mode)
  variables = _vars(mode)
  x = _images()
  token_mask = np.zeros((B, G13, N), bool)
  token_mask[0, 1, 5] = True  # group 1 (B04 B05 B06) of patch (1, 1)
  channels = list(model.group_channels[1])
  other = list(model.group_channels[2])
  out, _ = model.apply(variables, x, token_mask=jnp.asarray(token_mask))
  out_y, _ = model.apply(variables, _patch(x, 0, 1, 1, channels),
                         token_mask=jnp.asarray(token_mask))
  _close(out_y, out, atol=1e-6)
  out_z, _ = model.apply(variables, _patch(x, 0, 1, 1, other),
                         token_mask=jnp.asarray(token_mask))
  assert _differs(out_z[0], out[0])


@pytest.mark.parametrize("mode", MODES)
def test_group_mask_makes_the_output_independent_of_those_bands(mode):
  model = _tiny(mode=mode, pool="mean")
  variables = _vars(mode)
  x = _images()
  group_mask = np.zeros((B, G13), bool)
  group_mask[:, 2] = True  # B07 B08 B8A, in both samples
  channels = list(model.group_channels[2])
  y = x.copy()
  noise = np.random.default_rng(3).normal(size=y[..., channels].shape)
  y[..., channels] = noise
  out, f = model.apply(variables, x, group_mask=jnp.asarray(group_mask))
  out_y, f_y = model.apply(variables, y, group_mask=jnp.asarray(group_mask))
  _close(out_y, out, atol=1e-6)
  _close(f_y["patch_tokens"], f["patch_tokens"], atol=1e-6)
  # The other groups' bands still matter.
  z = x.copy()
  z[..., list(model.group_channels[0])] += 1.0
  assert _differs(model.apply(variables, z,
                              group_mask=jnp.asarray(group_mask))[0], out)


def test_mask_errors_name_the_fix():
  variables = _vars()
  x = _images()
  plain = _tiny(use_mask_token=False)
  with pytest.raises(ValueError, match="use_mask_token=True"):
    plain.apply(variables, x, group_mask=jnp.zeros((B, G13), bool))
  model = _tiny()
  for kw, match in ((dict(mask=jnp.zeros((B, N + 1), bool)), "mask must be"),
                    (dict(token_mask=jnp.zeros((B, 4, N), bool)),
                     "token_mask must be"),
                    (dict(group_mask=jnp.zeros((B, 6), bool)),
                     "group_mask must be"),
                    (dict(mask=jnp.zeros((B, N), bool),
                          keep_indices=jnp.zeros((B, 3), jnp.int32)),
                     "not both"),
                    (dict(keep_indices=jnp.zeros((B, N + 1), jnp.int32)),
                     "spatial patches")):
    with pytest.raises(ValueError, match=match):
      model.apply(variables, x, **kw)
  with pytest.raises(ValueError, match="13 bands"):
    model.apply(variables, x[..., :12])
  with pytest.raises(ValueError, match="multiple of patch_size"):
    model.apply(variables, x[:, :14, :14])


def test_keep_indices_in_factorized_mode_drop_whole_patches():
  model = _tiny(pool="mean")
  variables = _vars()
  x = _images()
  keep = jnp.array([[0, 5, 10, 15], [3, 2, 1, 0]], jnp.int32)
  out, f = model.apply(variables, x, keep_indices=keep)
  assert f["visible_tokens"].shape == (B, 4, D)
  assert f["visible_group_tokens"].shape == (B, G13, 4, D)
  assert f["prefix_tokens"].shape == (B, 2, D)
  _close(f["visible_tokens"], f["visible_group_tokens"].mean(axis=1))
  assert "patch_tokens" not in f and "grid_0" not in f
  # Sample 0 dropped patch 1 (row 0, column 1); sample 1 kept it.
  y = _patch(x, 0, 0, 1)
  _close(model.apply(variables, y, keep_indices=keep)[0], out, atol=1e-6)
  y = _patch(x, 1, 0, 1)
  assert _differs(model.apply(variables, y, keep_indices=keep)[0][1], out[1])
  # encode_visible is the same call.
  _, g = model.apply(variables, x, keep, method="encode_visible")
  _close(g["visible_tokens"], f["visible_tokens"], atol=0)


def test_keep_indices_in_joint_mode_index_group_patch_tokens():
  model = _tiny(mode="joint")
  variables = _vars("joint")
  x = _images()
  k = 3 * N
  keep = jnp.stack([jax.random.permutation(jax.random.key(i), G13 * N)[:k]
                    for i in range(B)]).astype(jnp.int32)
  out, f = model.apply(variables, x, keep_indices=keep)
  assert f["visible_tokens"].shape == (B, k, D)
  assert "visible_group_tokens" not in f and "patch_tokens" not in f
  # Token g * N + n is group g of patch n: a dropped token's pixels do not
  # matter. Find a token sample 0 dropped.
  dropped = sorted(set(range(G13 * N)) - set(np.asarray(keep[0]).tolist()))[0]
  grp, n = divmod(dropped, N)
  y = _patch(x, 0, n // 4, n % 4, list(model.group_channels[grp]))
  _close(model.apply(variables, y, keep_indices=keep)[0][0], out[0], atol=1e-6)
  with pytest.raises(ValueError, match=r"K <= 80"):
    model.apply(variables, x, keep_indices=jnp.zeros((B, 81), jnp.int32))


# ---------------------------------------------- attention, training, params


@pytest.mark.parametrize("mode", MODES)
def test_attention_rows_sum_to_one_in_the_vit_layout(mode):
  model = _tiny(mode=mode).with_attention(True)
  _, f = model.apply(_vars(mode), _images())
  att = np.asarray(f["attention_1"])
  assert att.shape == (B, 2, 2 + N, 2 + N) and "attention_0" not in f
  _close(att.sum(-1), np.ones(att.shape[:-1]))
  if mode == "factorized":
    _close(np.asarray(f["spectral_attention_1"]).sum(-1), 1.0)


def test_drop_path_training_step_has_finite_gradients_everywhere():
  # A non-zero head, so gradients reach the backbone.
  kw = dict(num_classes=3, head_zeroinit=False)
  model = _tiny(drop_path=0.5, dropout=0.1, **kw)
  variables = _vars(**kw)
  x = jnp.asarray(_images())

  @jax.jit
  def grad_and_outputs(params):
    def loss(params, rng):
      logits, _ = model.apply({"params": params}, x, train=True,
                              rngs={"dropout": rng})
      return jnp.sum(logits ** 2) + jnp.sum(logits)
    outputs = [model.apply({"params": params}, x, train=True,
                           rngs={"dropout": jax.random.key(i)})[0]
               for i in (2, 3)]
    return jax.grad(loss)(params, jax.random.key(1)), outputs

  grads, (a, b) = grad_and_outputs(variables["params"])
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.isfinite(np.asarray(g)).all() for _, g in leaves)
  # The head and the weight generator both learn.
  assert np.abs(np.asarray(grads["head"]["kernel"])).sum() > 0
  gen = grads["embedding"]["generator"]["to_kernel"]["kernel"]
  assert np.abs(np.asarray(gen)).sum() > 0
  # Dropout and drop-path draw from the 'dropout' rng.
  assert _differs(a, b, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_layer_ids_cover_every_parameter(mode):
  model = _tiny(num_classes=3, mode=mode, depth=4, block_group_size=3,
                spectral_embed="mlp")
  x = jax.ShapeDtypeStruct((B, SIZE, SIZE, 13), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  paths = ["/".join(str(k.key) for k in path) for path, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])]
  top = model.num_layers()
  ids = {p: model.layer_id(p) for p in paths}
  assert top == 5 and set(ids.values()) == set(range(top + 1))
  assert ids["embedding/generator/fc1/kernel"] == 0
  assert ids["spectral_embedding/fc1/kernel"] == 0
  assert ids["mask_token"] == ids["pos_embedding"] == 0
  assert ids["head/kernel"] == ids["encoder_norm/scale"] == top
  if mode == "factorized":
    assert model.block_groups == ((0, 3), (3, 4))
    assert ids["spatial_0/attn/query/kernel"] == 1
    assert ids["spectral_3/mlp/fc1/bias"] == 4
    assert ids["fuse_0/kernel"] == 3 and ids["fuse_1/kernel"] == 4
  else:
    assert ids["block_2/attn/query/kernel"] == 3
  assert model.layer_id("student/backbone/spatial_1/norm1/scale") == 2


def test_fusion_starts_as_the_mean_of_the_two_branches():
  kernel = _vars()["params"]["fuse_0"]["kernel"]
  s = np.random.default_rng(0).normal(size=(3, D))
  e = np.random.default_rng(1).normal(size=(3, D))
  _close(np.concatenate([s, e], -1) @ np.asarray(kernel), (s + e) / 2)


def test_position_embedding_resizes_at_call_time_and_in_adapt_param():
  model = _tiny()
  variables = _vars()
  # The (1, 4, 4, D) table serves a 4 x 6 grid.
  _, f = jax.eval_shape(model.apply, variables,
                        jax.ShapeDtypeStruct((B, 16, 24, 13), jnp.float32))
  assert f["patch_tokens"].shape == (B, 4, 6, D)
  table = np.asarray(variables["params"]["pos_embedding"])
  got = model.adapt_param("pos_embedding", table, (1, 8, 8, D))
  assert got.shape == (1, 8, 8, D)
  with pytest.raises(ValueError, match="embedding/kernel"):
    model.adapt_param("embedding/kernel", np.zeros((5, 3)), (4, 3))


# ----------------------------------------------------------------- summary


@pytest.mark.parametrize("mode", MODES)
def test_summary_rows_params_and_flops(mode):
  model = _tiny(num_classes=4, mode=mode, embed="group")
  rows = summary.summarize(model, (1, SIZE, SIZE, 13))
  by_path = {r.path: r for r in rows}
  x = jax.ShapeDtypeStruct((1, SIZE, SIZE, 13), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
  assert summary.totals(rows)["params"] == count
  embed = by_path["embedding"]
  assert embed.tokens == G13 * N
  # G * N tokens x (S = 3 slots) x p * p pixels x D outputs, 2 FLOPs a MAC.
  assert embed.flops == 2 * G13 * N * 3 * P * P * D
  if mode == "factorized":
    assert by_path["spatial_0"].tokens == 2 + N
    assert by_path["spectral_0"].tokens == G13
    # Attention products of the spatial block: G sequences of P + N tokens.
    att = by_path["spatial_0/attn"]
    assert att.flops == 2 * 2 * G13 * (2 + N) ** 2 * D
    assert "fuse_0" in by_path
  else:
    assert by_path["block_0"].tokens == 2 + G13 * N
  assert not any(r.path.startswith(".") for r in rows)
  table = summary.format_table(rows)
  assert "SpectralPatchEmbed" in table and "Total parameters" in table
