"""The `input_kernels()` hook of the backbone contract: every declared path
is a parameter whose axis -2 runs over the bands, and every parameter that
depends on the band count is declared (so band adaptation misses none)."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import traverse_util

from eo_jax.data import bands as bands_lib
from eo_jax.models import build_model
from eo_jax.models.lenet import LeNet
from eo_jax.models.segmentation import SegmentationModel

CONFIGS = {
    "resnet": dict(name="resnet", stage_sizes=(1, 1), width=4),
    "resnet18_truncated": dict(name="resnet18_truncated", width=4),
    "vit": dict(name="vit", patch_size=4, width=16, depth=1, num_heads=2),
    "bagnet": dict(name="bagnet", kernel3=(1, 0), strides=(1, 2), blocks=(1, 1),
                   width=4),
    "segmentation": dict(name="segmentation", decoder="linear",
                         backbone=dict(name="resnet", stage_sizes=(1,), width=4)),
}


def _shapes(config, bands):
  model = build_model(ml_collections.ConfigDict(config), bands=bands, num_classes=3)
  image = jnp.zeros((1, 32, 32, len(bands)))
  params = jax.eval_shape(model.init, jax.random.key(0), image)["params"]
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  return model, {k: v.shape for k, v in flat.items()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_declared_kernels_are_all_the_band_dependent_parameters(name):
  model, three = _shapes(CONFIGS[name], bands_lib.RGB)
  _, thirteen = _shapes(CONFIGS[name], bands_lib.SENTINEL2)
  declared = model.input_kernels()
  assert declared
  for path in declared:
    assert three[path][-2] == 3 and thirteen[path][-2] == 13, path
  assert {k for k in three if three[k] != thirteen[k]} == set(declared)


def test_a_wrapper_around_an_undeclared_backbone_says_none():
  model = SegmentationModel(backbone=LeNet(num_classes=0))
  assert model.input_kernels() is None
