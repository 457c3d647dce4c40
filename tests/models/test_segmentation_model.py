"""Tests for eo_jax.models.segmentation and nested model configs in
build_model: what the nested config builds, the params layout, the
features, the decoder's compute dtype, the backbone contract (layer ids,
adapt_param), the headless model, and the errors that name the config key
at fault.

Shapes only (`jax.eval_shape`) unless a value matters; the decoders' values
and gradients are tested in test_decoders.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eo_jax import summary
from eo_jax.data import bands as bands_lib
from eo_jax.errors import (ConfigError, ConfigTypeError, ConfigValueError,
                           InputShapeError)
from eo_jax.models import backbone as backbone_lib
from eo_jax.models import build_model
from eo_jax.models import resnet, segmentation, vit
from eo_jax.models.decoders import deeplabv3plus, segmenter
from eo_jax.train import optim

BANDS = bands_lib.SENTINEL2[:4]
K = 5
VIT = dict(name="vit", variant="S/4", width=8, depth=4, num_heads=2,
           mlp_dim=16)
RESNET = dict(name="resnet", stage_sizes=(1, 1, 1, 1), width=4,
              output_stride=8)


def _config(**fields):
  c = dict(name="segmentation", decoder="linear", backbone=VIT)
  c.update(fields)
  return c


def _shapes(model, image=(2, 32, 32, 4), **kwargs):
  x = jax.ShapeDtypeStruct(image, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  return variables, jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(image), **kwargs), variables)


def _paths(tree):
  return ["/".join(str(k.key) for k in path) for path, _ in
          jax.tree_util.tree_leaves_with_path(tree)]


def test_nested_config_builds_the_backbone_and_the_decoder():
  config = ml_collections.ConfigDict(_config(
      decoder="deeplabv3plus", backbone=RESNET,
      decoder_settings=dict(width=8, low_level_width=4, aux_width=4)))
  model = build_model(config, bands=BANDS, num_classes=K)
  assert isinstance(model, segmentation.SegmentationModel)
  assert isinstance(model.backbone, resnet.ResNet)
  assert model.backbone.num_classes == 0 and model.backbone.bands == BANDS
  assert model.backbone.output_stride == 8
  assert isinstance(model.decoder, deeplabv3plus.DeepLabV3PlusDecoder)
  assert model.decoder.num_classes == K and model.decoder.width == 8
  assert dict(model.strides) == model.backbone.dense_maps()

  variables, (logits, features) = _shapes(model)
  assert set(variables["params"]) == {"backbone", "decoder"}
  assert set(variables["batch_stats"]) == {"backbone", "decoder"}
  assert logits.shape == (2, 32, 32, K) and logits.dtype == jnp.float32
  # The backbone's features, its pooled vector, and the auxiliary logits.
  assert set(features) == {"stem", "stage_1", "stage_2", "stage_3", "stage_4",
                           "pre_logits", "aux_logits"}
  assert features["pre_logits"].shape == (2, 32)
  assert features["aux_logits"].shape == (2, 32, 32, K)


def test_the_docstring_example_builds():
  model = build_model(dict(name="segmentation", decoder="segmenter",
                           freeze_backbone=True,
                           backbone=dict(name="vit", variant="S/8")),
                      bands=BANDS, num_classes=K)
  assert isinstance(model.backbone, vit.ViT) and model.backbone.width == 384
  assert isinstance(model.decoder, segmenter.SegmenterDecoder)
  assert model.freeze_backbone


def test_vit_features_and_a_token_mask_pass_through():
  model = build_model(_config(backbone={**VIT, "use_mask_token": True}),
                      bands=BANDS, num_classes=K)
  mask = jnp.zeros((2, 64), bool)
  _, (logits, features) = _shapes(model, mask=mask)
  assert logits.shape == (2, 32, 32, K)
  assert features["patch_tokens"].shape == (2, 8, 8, 8)
  assert {f"grid_{i}" for i in range(4)} <= set(features)
  assert "aux_logits" not in features


def test_headless_it_is_its_backbone():
  model = build_model(_config(), bands=BANDS, num_classes=0)
  assert model.decoder is None
  variables, (output, features) = _shapes(model)
  assert set(variables["params"]) == {"backbone"}
  assert output.shape == (2, 8) and features["pre_logits"].shape == (2, 8)
  assert isinstance(model, backbone_lib.Backbone)
  assert model.dense_maps() == model.backbone.dense_maps()


def test_layer_ids_follow_the_backbone_and_put_the_decoder_on_top():
  model = build_model(_config(decoder="segmenter"), bands=BANDS, num_classes=K)
  top = model.num_layers()
  assert top == 4 + 1
  assert model.layer_id("backbone/embedding/kernel") == 0
  assert model.layer_id("backbone/block_2/attn/query/kernel") == 3
  assert model.layer_id("backbone/encoder_norm/scale") == top
  # The decoder's own 'block_i' are not the backbone's.
  assert model.layer_id("decoder/block_0/attn/query/kernel") == top
  assert model.layer_id("decoder/cls_emb") == top
  # Prefixes an objective puts in front do not confuse it.
  assert model.layer_id("student/backbone/backbone/block_0/mlp/fc1/bias") == 1
  assert model.layer_id("student/backbone/decoder/block_1/norm1/scale") == top
  # Through the optimiser's layer-wise decay: the decoder at the full rate.
  variables, _ = _shapes(model)
  config = ml_collections.ConfigDict(dict(groups=(), frozen=("^backbone/",),
                                          layer_decay=0.5))
  mults = optim.lr_multipliers(config, variables["params"], model.layer_id)
  flat = dict(zip(_paths(variables["params"]), jax.tree.leaves(mults)))
  assert all(m == 0.0 for p, m in flat.items() if p.startswith("backbone/"))
  assert all(m == 1.0 for p, m in flat.items() if p.startswith("decoder/"))


def test_adapt_param_resizes_the_backbones_position_embedding():
  model = build_model(_config(), bands=BANDS, num_classes=K)
  table = np.arange(1 * 4 * 4 * 8, dtype=np.float32).reshape(1, 4, 4, 8)
  out = model.adapt_param("backbone/pos_embedding", table, (1, 8, 8, 8))
  assert out.shape == (1, 8, 8, 8)
  with pytest.raises(InputShapeError, match="'decoder/classifier/kernel'"):
    model.adapt_param("decoder/classifier/kernel", np.zeros((8, 3)), (8, K))


def test_summary_shows_backbone_and_decoder():
  model = build_model(_config(decoder="conv", decoder_settings=dict(width=4)),
                      bands=BANDS, num_classes=K)
  rows = summary.summarize(model, (1, 32, 32, 4))
  paths = [r.path for r in rows]
  assert "backbone" in paths and "decoder" in paths and "decoder/up_0" in paths
  # No row for the strides: the factory read them at build time.
  assert not any(".dense_maps" in p for p in paths)
  assert rows[0].output_shape == (1, 32, 32, K)


@pytest.mark.parametrize("backbone", [VIT, RESNET], ids=["vit", "resnet"])
def test_the_decoder_computes_in_the_backbones_dtype_unless_set(backbone):
  settings = dict(width=8, low_level_width=4, aux_width=4)
  build = lambda bb, **extra: build_model(  # noqa: E731
      _config(decoder="deeplabv3plus", backbone=bb,
              decoder_settings={**settings, **extra}),
      bands=BANDS, num_classes=K)
  assert build(backbone).decoder.dtype == jnp.float32
  bf16 = {**backbone, "dtype": "bfloat16"}
  model = build(bf16)
  assert model.decoder.dtype == jnp.bfloat16
  # decoder_settings.dtype wins, either way; None follows the backbone.
  assert build(bf16, dtype="float32").decoder.dtype == jnp.float32
  assert build(backbone, dtype="bfloat16").decoder.dtype == jnp.bfloat16
  assert build(bf16, dtype=None).decoder.dtype == jnp.bfloat16
  # All bfloat16: every variable float32, and float32 logits.
  variables, (logits, features) = _shapes(model)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {
      jnp.dtype("float32")}
  assert logits.dtype == features["aux_logits"].dtype == jnp.float32


# ---------------------------------------------------------------- errors


def test_nested_errors_name_the_nested_key():
  with pytest.raises(ConfigError, match=r"config\.model\.backbone\.name: "
                     r"Unknown model 'vitt'"):
    build_model(_config(backbone=dict(name="vitt")), bands=BANDS,
                num_classes=K)
  with pytest.raises(ConfigTypeError, match=r"config\.model\.backbone for "
                     r"'resnet' has a field"):
    build_model(_config(backbone=dict(name="resnet", colour=1)), bands=BANDS,
                num_classes=K)
  with pytest.raises(ValueError, match=r"config\.model\.backbone: Unknown ViT "
                     "variant"):
    build_model(_config(backbone=dict(name="vit", variant="Q/8")), bands=BANDS,
                num_classes=K)
  with pytest.raises(ConfigValueError, match=r"needs config\.model\.backbone"):
    build_model(dict(name="segmentation"), bands=BANDS, num_classes=K)


def test_decoder_errors_name_the_decoder_and_its_settings():
  with pytest.raises(ConfigError, match=r"config\.model\.decoder: Unknown "
                     r"decoder 'unet'.*deeplabv3plus"):
    build_model(_config(decoder="unet"), bands=BANDS, num_classes=K)
  with pytest.raises(ConfigTypeError, match=r"decoder_settings has \['depth'\]"
                     r".*'segmenter'.*num_layers"):
    build_model(_config(decoder="segmenter", decoder_settings=dict(depth=3)),
                bands=BANDS, num_classes=K)
  with pytest.raises(ConfigValueError, match=r"decoder_settings\.dtype="
                     r"'bfloat61' is not a floating dtype.*'bfloat16'"):
    build_model(_config(decoder_settings=dict(dtype="bfloat61")), bands=BANDS,
                num_classes=K)
  # A map the backbone lacks, at build time, naming the backbone.
  with pytest.raises(ConfigValueError, match=r"'deeplabv3plus' needs a "
                     r"low-level map.*backbone ResNet"):
    build_model(_config(decoder="deeplabv3plus", backbone=dict(
        RESNET, num_stages=1, low_res_stem=True, output_stride=None),
                        decoder_settings=dict(aux_head=False)),
                bands=BANDS, num_classes=K)

