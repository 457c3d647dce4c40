"""Every registered model meets the backbone contract (models/backbone.py).

Shapes only (`jax.eval_shape`: nothing is compiled), so every model of the
registry is checked at once; a model registered without an entry in SMALL
fails here until it gets one.
"""
import math

import jax
import jax.numpy as jnp
import pytest

from eo_jax.data import bands as bands_lib
from eo_jax.models import MODELS, build_model
from eo_jax.models import backbone as backbone_lib

# Small enough to trace in a second; each keeps the model's structure.
SMALL = {
    "bagnet": dict(width=4, blocks=(1, 1, 1, 1), kernel3=(1, 1, 0, 0)),
    "bagnet9": dict(width=4, blocks=(1, 1, 1, 1)),
    "bagnet17": dict(width=4, blocks=(1, 1, 1, 1)),
    "bagnet33": dict(width=4, blocks=(1, 1, 1, 1)),
    "lenet": dict(),
    "resnet": dict(width=4, stage_sizes=(1, 1, 1), block="bottleneck"),
    "resnet18": dict(width=4),
    "resnet34": dict(width=4, low_res_stem=True),
    "resnet50": dict(width=4, output_stride=8),
    "resnet18_truncated": dict(width=4),
    "spectral_vit": dict(variant="S/8", width=32, depth=2, num_heads=2,
                         mlp_dim=64, num_registers=1, group_size=2,
                         block_group_size=1),
    "vit": dict(variant="S/8", width=32, depth=2, num_heads=2, mlp_dim=64,
                num_registers=1),
    # A nested backbone config; the segmenter's own 'block_i' must not take
    # the backbone's layer ids.
    "segmentation": dict(decoder="segmenter", decoder_settings=dict(width=8),
                         backbone=dict(name="vit", variant="S/8", width=16,
                                       depth=2, num_heads=2, mlp_dim=32)),
}

# Where a model keeps what sits on top of its backbone, at the top depth.
HEAD_PREFIX = {"segmentation": "decoder/"}

# Non-square, a multiple of the ViT's patch, above BagNet-33's field.
IMAGE = (2, 40, 48, 4)

# Unpadded ('VALID') models lose up to their receptive field at the border:
# a map of stride s seeing r <= R pixels has (n - r) // s + 1 locations, at
# least ceil((n - R) / s). Padded models have exactly ceil(n / s).
def _border(name, model):
  if name.startswith("bagnet"):
    return model.rf.size
  if name == "lenet":
    return 16  # 5x5 conv, 2x2 pool, 5x5 conv, 2x2 pool
  return 0


def _build(name, num_classes=0):
  if name not in SMALL:
    pytest.fail(f"Model {name!r} is registered but tests/models/"
                "test_backbone.py has no small configuration for it; add one "
                "to SMALL.")
  # Through build_model, which builds nested model configs.
  return build_model(dict(name=name, **SMALL[name]),
                     bands=bands_lib.SENTINEL2[:IMAGE[-1]],
                     num_classes=num_classes)


def _abstract(model):
  x = jax.ShapeDtypeStruct(IMAGE, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  return variables, out


def _param_paths(variables):
  return ["/".join(str(k.key) for k in path) for path, _ in
          jax.tree_util.tree_leaves_with_path(variables["params"])]


@pytest.mark.parametrize("name", MODELS.names())
def test_headless_model_is_a_backbone_with_its_dense_maps(name):
  model = _build(name)
  assert isinstance(model, backbone_lib.Backbone)
  assert backbone_lib.require_backbone(model, "test") is model
  _, (output, features) = _abstract(model)
  assert features["pre_logits"].shape == output.shape
  assert output.ndim == 2 and output.shape[0] == IMAGE[0]
  maps = model.dense_maps()
  assert maps, name
  border = _border(name, model)
  for key, stride in maps.items():
    assert key in features, (name, key)
    shape = features[key].shape
    assert len(shape) == 4 and shape[0] == IMAGE[0], (name, key, shape)
    for got, n in zip(shape[1:3], IMAGE[1:3]):
      assert math.ceil((n - border) / stride) <= got <= math.ceil(n / stride), (
          name, key, stride, shape)


@pytest.mark.parametrize("name", MODELS.names())
def test_layer_ids_span_zero_to_num_layers(name):
  model = _build(name, num_classes=3)
  variables, _ = _abstract(model)
  top = model.num_layers()
  ids = {p: model.layer_id(p) for p in _param_paths(variables)}
  assert all(0 <= i <= top for i in ids.values()), ids
  assert min(ids.values()) == 0
  # Heads sit at the top; the backbone reaches at least the level below.
  prefix = HEAD_PREFIX.get(name, "head/")
  head = {p: i for p, i in ids.items() if p.startswith(prefix)}
  assert head and set(head.values()) == {top}, head
  body = [i for p, i in ids.items() if not p.startswith(prefix)]
  assert max(body) >= top - 1
  # The ids see through the prefixes objectives put on the backbone.
  some = sorted(ids)[len(ids) // 2]
  assert model.layer_id("student/backbone/" + some) == ids[some]


def test_vit_is_a_token_backbone_and_resnet_is_not():
  vit = _build("vit")
  assert isinstance(vit, backbone_lib.TokenBackbone)
  assert backbone_lib.require_token_backbone(vit, "objective 'mae'",
                                             "encodes patches") is vit
  for name in ("resnet18", "bagnet9", "lenet"):
    model = _build(name)
    assert not isinstance(model, backbone_lib.TokenBackbone), name
    with pytest.raises(ValueError, match="config.model.name='vit'"):
      backbone_lib.require_token_backbone(model, "objective 'mae'",
                                          "encodes patches")


def test_a_model_without_the_methods_is_not_a_backbone():
  with pytest.raises(ValueError, match="dense_maps"):
    backbone_lib.require_backbone(object(), "a probe")
