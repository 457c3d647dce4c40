"""What a user gets from a PyTorch file that does not fit: errors that name
the keys and the fix, unwrapped training checkpoints, missing packages."""
import logging
import sys

import numpy as np
import pytest
import torch

from eo_jax.data import bands as bands_lib
from eo_jax.errors import CheckpointError, ConfigValueError, MissingPackageError
from eo_jax.interop import torch_weights
from eo_jax.models import resnet, vit as vit_lib
import parity
import torch_twins


def _resnet18_twin(layers=(2, 2, 2, 2), block="basic"):
  return torch_twins.randomize(torch_twins.TorchvisionResNet(
      block, layers, width=4, num_classes=3))


def _resnet18_shapes():
  model = resnet.resnet18(bands=bands_lib.RGB, num_classes=3, width=4)
  return parity.shapes(model, np.zeros((1, 32, 32, 3), np.float32))


def _convert(sd, kind="resnet", shapes=None):
  param_shapes, stat_shapes = shapes or _resnet18_shapes()
  return torch_weights.convert_state_dict(sd, kind, param_shapes, stat_shapes,
                                          model="name='resnet18'")


def _sd(twin):
  return {k: v.numpy() for k, v in twin.state_dict().items()}


def test_missing_keys_are_listed_first_few_and_counted():
  sd = _sd(_resnet18_twin())
  gone = sorted(k for k in sd if k.startswith("layer4.") and "num_batches" not in k)
  for k in gone:
    del sd[k]
  with pytest.raises(CheckpointError) as e:
    _convert(sd)
  message = str(e.value)
  assert f"{len(gone)} missing key(s) (layer4." in message
  assert f"({len(gone)} in all)" in message
  assert "unexpected" not in message


def test_unexpected_keys_are_listed():
  sd = _sd(_resnet18_twin())
  sd.update({f"layer1.0.se.fc{i}.weight": np.zeros(2, np.float32) for i in range(8)})
  with pytest.raises(CheckpointError, match=r"8 unexpected key\(s\) "
                     r"\(layer1\.0\.se\.fc0\.weight, .*\(8 in all\)"):
    _convert(sd)


def test_another_architecture_is_named():
  with pytest.raises(CheckpointError, match=r"unexpected key\(s\) \(layer1\.2\..*"
                     r"stages have \(3, 4, 6, 3\) blocks"):
    _convert(_sd(_resnet18_twin((3, 4, 6, 3))))
  with pytest.raises(CheckpointError, match="bottleneck blocks.*use resnet50"):
    _convert(_sd(_resnet18_twin((2, 2, 2, 2), "bottleneck")))


def test_vit_mismatches_say_which_field_to_set():
  twin = torch_twins.randomize(torch_twins.DinoV2ViT(
      image=8, patch=4, dim=16, depth=1, num_heads=2, hidden=32,
      num_register_tokens=2, layerscale=True))
  model = vit_lib.vit(bands=bands_lib.RGB, num_classes=0, patch_size=4,
                      width=16, depth=1, num_heads=2, mlp_dim=32)
  shapes = parity.shapes(model, np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(CheckpointError) as e:
    _convert(_sd(twin), "vit", shapes)
  message = str(e.value)
  assert "register_tokens" in message and "num_registers=2" in message
  assert "ls1.gamma" in message and "layerscale_init" in message
  sd = _sd(twin)
  sd["fc_norm.weight"] = np.ones(16, np.float32)
  with pytest.raises(CheckpointError, match="fc_norm"):
    _convert(sd, "vit", shapes)


def test_a_pickled_model_is_not_a_state_dict(tmp_path):
  path = tmp_path / "model.pth"
  torch.save(_resnet18_twin(), path)
  with pytest.raises(CheckpointError, match="not a plain state dict: it holds a "
                     "pickled torch_twins.TorchvisionResNet.*model.state_dict"):
    torch_weights.load_state_dict(str(path))
  torch.save(torch.zeros(3), tmp_path / "tensor.pth")
  with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
    torch_weights.load_state_dict(str(tmp_path / "tensor.pth"))
  torch.save({"epoch": 3, "best": 0.5}, tmp_path / "meta.pth")
  with pytest.raises(CheckpointError, match=r"not a state dict: its top-level "
                     r"entries are \['best', 'epoch'\]"):
    torch_weights.load_state_dict(str(tmp_path / "meta.pth"))
  (tmp_path / "junk.pth").write_bytes(b"not a zip file")
  with pytest.raises(CheckpointError, match="cannot be read by torch.load"):
    torch_weights.load_state_dict(str(tmp_path / "junk.pth"))
  with pytest.raises(CheckpointError, match="does not exist"):
    torch_weights.load_state_dict(str(tmp_path / "nothing.pth"))


def test_training_checkpoints_are_unwrapped_when_unambiguous(tmp_path, caplog):
  twin = _resnet18_twin()
  optimizer = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
  wrapped = {f"module.{k}": v for k, v in twin.state_dict().items()}
  torch.save({"model": wrapped, "optimizer": optimizer.state_dict(),
              "epoch": 90}, tmp_path / "train.pth")
  caplog.set_level(logging.INFO)
  sd = torch_weights.load_state_dict(str(tmp_path / "train.pth"))
  assert set(sd) == set(twin.state_dict())
  np.testing.assert_array_equal(sd["conv1.weight"], twin.conv1.weight.detach().numpy())
  assert "using its 'model' entry" in caplog.text
  assert "stripped it" in caplog.text and "'module.'" in caplog.text
  _convert(sd)  # converts cleanly

  torch.save({"teacher": twin.state_dict(), "student": twin.state_dict()},
             tmp_path / "dino.pth")
  with pytest.raises(CheckpointError, match=r"several state dicts "
                     r"\(\['teacher', 'student'\]\).*checkpoint\['teacher'\]"):
    torch_weights.load_state_dict(str(tmp_path / "dino.pth"))


def test_source_prefix_selects_a_sub_dict():
  sd = {"backbone.conv1.weight": np.zeros(1), "head.fc.weight": np.zeros(1)}
  assert list(torch_weights.select_prefix(sd, "backbone")) == ["conv1.weight"]
  assert list(torch_weights.select_prefix(sd, "backbone/")) == ["conv1.weight"]
  with pytest.raises(CheckpointError, match=r"top-level names are \['backbone', "
                     r"'head'\]"):
    torch_weights.select_prefix(sd, "teacher")


def test_converter_is_picked_from_the_model_config():
  assert torch_weights.converter_kind({"name": "resnet50"}) == ("resnet", "")
  assert torch_weights.converter_kind({"name": "vit"}) == ("vit", "")
  nested = {"name": "segmentation", "decoder": "linear",
            "backbone": {"name": "resnet18"}}
  assert torch_weights.converter_kind(nested) == ("resnet", "backbone")
  with pytest.raises(ConfigValueError, match="config.model.name='lenet'"):
    torch_weights.converter_kind({"name": "lenet"})


def test_missing_packages_name_the_pip_command(tmp_path, monkeypatch):
  twin = _resnet18_twin((1,))
  pth = parity.save(twin, tmp_path / "w.pth")
  safe = parity.save(twin, tmp_path / "w.safetensors")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(MissingPackageError, match=r"needs PyTorch.*pip install "
                     r"torch==2\.13\.0 --index-url"):
    torch_weights.load_state_dict(pth)
  monkeypatch.setitem(sys.modules, "safetensors", None)
  monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
  with pytest.raises(MissingPackageError, match="pip install safetensors"):
    torch_weights.load_state_dict(safe)
  assert isinstance(MissingPackageError("x"), ImportError)


def test_half_precision_weights_are_read_as_float32(tmp_path):
  twin = _resnet18_twin((1,)).to(torch.bfloat16)
  for suffix in (".pth", ".safetensors"):
    sd = torch_weights.load_state_dict(parity.save(twin, tmp_path / f"w{suffix}"))
    assert sd["conv1.weight"].dtype == np.float32, suffix
    np.testing.assert_array_equal(sd["conv1.weight"],
                                  twin.conv1.weight.float().detach().numpy())
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
