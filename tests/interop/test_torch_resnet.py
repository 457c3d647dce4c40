"""torchvision ResNet state dicts give eo_jax ResNets the same outputs.

Each twin (tests/interop/torch_twins.py) has torchvision's real structure and
key names, random weights and BatchNorm statistics, and small widths; its
state dict goes through a file and `eo_jax.interop`, and the eo_jax model
must reproduce its logits (or pooled features) to 1e-5 relative in float32.
"""
import numpy as np
import pytest
import torch

from eo_jax.data import bands as bands_lib
from eo_jax.models import resnet
import parity
import torch_twins

TOL = 1e-5


def _image(size: int, seed: int = 0, bands: int = 3) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(2, size, size, bands)).astype(np.float32)


@pytest.mark.parametrize("name,block,layers,width,size,suffix", [
    ("resnet18", "basic", (2, 2, 2, 2), 8, 32, ".pth"),
    ("resnet34", "basic", (3, 4, 6, 3), 4, 32, ".pth"),
    # The true bottleneck structure (expansion 4, v1.5 strides) at 32 px.
    ("resnet50", "bottleneck", (3, 4, 6, 3), 4, 32, ".safetensors"),
])
def test_logits_match_torchvision(name, block, layers, width, size, suffix,
                                  tmp_path):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      block, layers, width=width, num_classes=7), seed=1)
  path = parity.save(twin, tmp_path / f"{name}{suffix}")
  model = getattr(resnet, name)(bands=bands_lib.RGB, num_classes=7, width=width)
  image = _image(size)
  variables = parity.converted_variables(model, image, path, "resnet")
  logits, _ = parity.apply(model, variables, image)
  with torch.no_grad():
    want = twin(parity.nchw(image)).numpy()
  diff = parity.relative_difference(logits, want)
  print(f"{name}: max relative difference {diff:.2e}")
  assert diff < TOL


def test_truncated_takes_the_first_two_stages_of_resnet18(tmp_path):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (2, 2, 2, 2), width=8, num_classes=1000), seed=2)
  path = parity.save(twin, tmp_path / "resnet18.pth")
  model = resnet.resnet18_truncated(bands=bands_lib.RGB, num_classes=0, width=8)
  image = _image(32, seed=3)
  variables = parity.converted_variables(model, image, path, "resnet")
  pooled, _ = parity.apply(model, variables, image)
  with torch.no_grad():
    want = twin.pooled(parity.nchw(image), stages=2).numpy()
  diff = parity.relative_difference(pooled, want)
  print(f"resnet18_truncated: max relative difference {diff:.2e}")
  assert diff < TOL


def test_batch_norm_statistics_and_layouts_by_hand(tmp_path):
  """Spot checks against the tensors themselves: OIHW -> HWIO, fc transposed,
  running statistics into batch_stats, num_batches_tracked dropped."""
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "bottleneck", (1, 1), width=4, num_classes=5), seed=4)
  path = parity.save(twin, tmp_path / "r.pth")
  model = resnet.resnet(bands=bands_lib.RGB, num_classes=5, width=4,
                        stage_sizes=(1, 1), block="bottleneck")
  v = parity.converted_variables(model, _image(32), path, "resnet")
  sd = {k: t.numpy() for k, t in twin.state_dict().items()}
  w = sd["layer2.0.conv2.weight"]  # (O, I, 3, 3)
  got = np.asarray(v["params"]["stage_2_block_0"]["conv2"]["kernel"])
  assert got[2, 0, 1, 3] == w[3, 1, 2, 0]
  np.testing.assert_array_equal(v["params"]["head"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(
      v["batch_stats"]["stage_1_block_0"]["proj_bn"]["var"],
      sd["layer1.0.downsample.1.running_var"])
  np.testing.assert_array_equal(v["params"]["stage_1_block_0"]["proj_bn"]["scale"],
                                sd["layer1.0.downsample.1.weight"])
  assert "num_batches_tracked" not in str(v)
