"""`config.init_from.torch_checkpoint`: converted weights through init_from's
copy / left / log logic, band adaptation, BatchNorm statistics, prefixes,
and a tiny supervised run that starts from them."""
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

import eo_jax
from eo_jax.config import base_config
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.interop import band_adaptation
from eo_jax.models import build_model, layers
from eo_jax.train.init_from import load_init_from
import parity
import torch_twins
from tiny import flat_params, tiny_config

S2 = bands_lib.SENTINEL2
RGB_OF_S2 = "B04,B03,B02"


def _init_from(path, **fields) -> ml_collections.ConfigDict:
  cfg = base_config().init_from
  cfg.torch_checkpoint = str(path)
  for k, v in fields.items():
    cfg[k] = v
  return cfg


def _info(bands) -> DatasetInfo:
  return DatasetInfo(name="test", bands=tuple(bands),
                     class_names=tuple("abcde"))


def _plain():
  # XLA's own convolutions: eo_jax's CPU formulations (same values) cost
  # seconds when run op by op.
  return layers.override_formulations(im2col_max_size=0, matmul_kernel_grad=False,
                                      max_pool_views_grad=False)


def _load(model_config, bands, cfg, image_size=32):
  model = build_model(model_config, bands=bands, num_classes=5)
  image = jnp.zeros((1, image_size, image_size, len(bands)))
  variables = parity.random_variables(model, image)
  params = variables.pop("params")
  new_params, new_state = load_init_from(cfg, _info(bands), params, variables,
                                         {"": model}, model_config=model_config)
  return model, params, variables, new_params, new_state


def _embed(rgb: np.ndarray) -> np.ndarray:
  """A 13-band image holding `rgb` in B04, B03, B02 and zeros elsewhere."""
  out = np.zeros(rgb.shape[:3] + (13,), np.float32)
  for i, name in enumerate(RGB_OF_S2.split(",")):
    out[..., bands_lib.names(S2).index(name)] = rgb[..., i]
  return out


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_copy_rule_keeps_the_checkpoints_outputs_on_its_bands(arch, tmp_path):
  """3-band weights on 13 bands with rule 'copy': an image whose extra bands
  are zero gives the PyTorch model's output on the 3 bands."""
  if arch == "resnet":
    twin = torch_twins.TorchvisionResNet("basic", (1, 1), width=4, num_classes=5)
    config = dict(name="resnet", stage_sizes=(1, 1), width=4)
  else:
    twin = torch_twins.TimmViT(image=16, patch=4, dim=16, depth=1, num_heads=2,
                               hidden=32, num_classes=5)
    config = dict(name="vit", patch_size=4, width=16, depth=1, num_heads=2,
                  mlp_dim=32)
  twin = torch_twins.randomize(twin, seed=9)
  path = parity.save(twin, tmp_path / "w.pth")
  cfg = _init_from(path, checkpoint_bands=RGB_OF_S2, band_rule="copy",
                   params=(".",))  # the head too: same class count
  model, _, _, params, state = _load(ml_collections.ConfigDict(config), S2, cfg,
                                     image_size=16)
  rgb = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
  with _plain():
    got, _ = model.apply({"params": params, **state}, jnp.asarray(_embed(rgb)))
  with torch.no_grad():
    want = twin(parity.nchw(rgb)).numpy()
  diff = parity.relative_difference(got, want)
  print(f"{arch}, 3 -> 13 bands, rule 'copy': max relative difference {diff:.2e}")
  assert diff < 1e-5


def test_nearest_rule_statistics_and_a_head_of_other_classes(tmp_path, caplog):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (1, 1), width=4, num_classes=7), seed=10)
  path = parity.save(twin, tmp_path / "w.safetensors")
  config = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1), width=4))
  caplog.set_level(logging.INFO)
  # params=('.',): the head is wanted too, but has 5 classes, not 7.
  _, init, _, params, state = _load(config, S2, _init_from(path, params=(".",)))
  sd = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
  rgb_kernel = sd["conv1.weight"].transpose(2, 3, 1, 0)
  want, _ = band_adaptation.adapt_band_kernel(rgb_kernel, bands_lib.RGB, S2,
                                              "nearest")
  np.testing.assert_allclose(params["stem_conv"]["kernel"], want, rtol=1e-6)
  np.testing.assert_array_equal(state["batch_stats"]["stage_2_block_0"]["bn1"]["var"],
                                sd["layer2.0.bn1.running_var"])
  np.testing.assert_array_equal(params["stage_1_block_0"]["conv2"]["kernel"],
                                sd["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["head"]["fc"]["kernel"],
                                init["head"]["fc"]["kernel"])
  assert "B03: copied from G at 9.8 nm" in caplog.text
  assert "B8A: nearest R at 254.7 nm, x0.1" in caplog.text  # R serves 10 bands
  assert "fc (7 classes) left out: this model has 5 classes" in caplog.text
  assert "left 2 at their initial values (head/fc/bias, head/fc/kernel)" in caplog.text


def test_segmentation_backbone_takes_the_weights_under_its_prefix(tmp_path):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (1, 1), width=4, num_classes=5), seed=11)
  path = parity.save(twin, tmp_path / "w.pth")
  config = ml_collections.ConfigDict(dict(
      name="segmentation", decoder="linear",
      backbone=dict(name="resnet", stage_sizes=(1, 1), width=4)))
  with pytest.raises(ConfigValueError, match="target_prefix='backbone'"):
    _load(config, S2, _init_from(path))
  _, init, _, params, state = _load(config, S2,
                                    _init_from(path, target_prefix="backbone"))
  assert params["backbone"]["stem_conv"]["kernel"].shape == (7, 7, 13, 4)
  np.testing.assert_array_equal(
      state["batch_stats"]["backbone"]["stem_bn"]["mean"],
      twin.bn1.running_mean.detach().numpy())
  # The decoder is new: every array keeps its initial value.
  jax.tree.map(np.testing.assert_array_equal, params["decoder"], init["decoder"])


def test_one_source_and_a_known_rule(tmp_path):
  config = ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1,), width=4))
  with pytest.raises(ConfigValueError, match="both workdir=.*keep one"):
    _load(config, bands_lib.RGB, _init_from(tmp_path / "w.pth",
                                            workdir=str(tmp_path)))
  with pytest.raises(ConfigValueError, match="band_rule='zeros'; use one of"):
    _load(config, bands_lib.RGB, _init_from(tmp_path / "w.pth",
                                            band_rule="zeros"))


def test_tiny_run_starts_from_the_converted_weights(tmp_path):
  """A tiny supervised run (tests/tiny.py: 4 synthetic bands at 400-1000 nm)
  with config.init_from.torch_checkpoint: its step-0 state, as the trainer
  builds it, holds the converted, band-adapted weights."""
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (1, 1), width=8, num_classes=3), seed=12)
  path = parity.save(twin, tmp_path / "resnet.pth")
  config = tiny_config(**{
      "model": ml_collections.ConfigDict(dict(name="resnet", stage_sizes=(1, 1),
                                              width=8)),
      "init_from.torch_checkpoint": path})
  run = eo_jax.build_run(config)
  got = flat_params(jax.device_get(run.state.params))
  sd = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
  assert [b.wavelength_nm for b in run.info.bands] == [400, 600, 800, 1000]
  stem, report = band_adaptation.adapt_band_kernel(
      sd["conv1.weight"].transpose(2, 3, 1, 0), bands_lib.RGB, run.info.bands,
      "nearest")
  assert [c.how for c in report.choices] == ["nearest", "copied", "nearest",
                                             "nearest"]  # 600 nm is R's
  np.testing.assert_allclose(got["stem_conv/kernel"], stem, rtol=1e-6)
  np.testing.assert_array_equal(got["stage_2_block_0/conv1/kernel"],
                                sd["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(got["stage_2_block_0/proj_bn/scale"],
                                sd["layer2.0.downsample.1.weight"])
  stats = flat_params(jax.device_get(run.state.model_state))
  np.testing.assert_array_equal(stats["batch_stats/stem_bn/var"],
                                sd["bn1.running_var"])
