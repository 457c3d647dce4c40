"""`python -m eo_jax.convert`: the checkpoint it writes is one that
`config.init_from.workdir` and `pretrained_encoder` read, and the model it
describes reproduces the PyTorch outputs."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch

from eo_jax import convert
from eo_jax.config import base_config
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.interop import band_adaptation
from eo_jax.models import build_model
from eo_jax.train.checkpoint import Checkpointer
from eo_jax.train.init_from import load_init_from, pretrained_encoder
import parity
import torch_twins


def _restore(workdir):
  checkpointer = Checkpointer(str(workdir / "checkpoints"))
  params, state, meta = checkpointer.restore_params()
  checkpointer.close()
  return jax.device_get(params), jax.device_get(state), meta


def test_resnet_round_trip_through_init_from_workdir(tmp_path, capsys):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (2, 2, 2, 2), width=4, num_classes=5), seed=13)
  pth = parity.save(twin, tmp_path / "resnet18.pth")
  out = tmp_path / "converted"
  assert convert.main(["--arch=resnet18", f"--input={pth}", f"--output={out}"]) == 0
  assert "init_from.workdir=" in capsys.readouterr().out

  model_config, prefix = pretrained_encoder(str(out))
  assert (model_config.name, model_config.width, prefix) == ("resnet18", 4, "")
  saved, saved_state, meta = _restore(out)
  assert [b["name"] for b in meta["info"]["bands"]] == ["R", "G", "B"]

  # The saved model reproduces torchvision's logits.
  model = build_model(model_config, bands=bands_lib.RGB, num_classes=5)
  image = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  logits, _ = parity.apply(model, {"params": saved, **saved_state}, image)
  with torch.no_grad():
    want = twin(parity.nchw(image)).numpy()
  assert parity.relative_difference(logits, want) < 1e-5

  # init_from.workdir onto 13 Sentinel-2 bands: adapted stem, the rest copied.
  cfg = base_config().init_from
  cfg.workdir = str(out)
  s2 = bands_lib.SENTINEL2
  target = build_model(model_config, bands=s2, num_classes=5)
  variables = dict(jax.eval_shape(target.init, jax.random.key(0),
                                  jnp.zeros((1, 32, 32, 13))))
  zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), variables)
  params, state = load_init_from(cfg, DatasetInfo(name="s2", bands=s2),
                                 zeros.pop("params"), zeros, {"": target})
  stem, _ = band_adaptation.adapt_band_kernel(
      saved["stem_conv"]["kernel"], bands_lib.RGB, s2, "nearest")
  np.testing.assert_allclose(params["stem_conv"]["kernel"], stem, rtol=1e-6)
  np.testing.assert_array_equal(params["stage_4_block_1"]["conv2"]["kernel"],
                                saved["stage_4_block_1"]["conv2"]["kernel"])
  np.testing.assert_array_equal(state["batch_stats"]["stage_3_block_0"]["bn2"]["mean"],
                                saved_state["batch_stats"]["stage_3_block_0"]["bn2"]["mean"])
  assert not np.asarray(params["head"]["fc"]["kernel"]).any()  # not wanted: left


def test_vit_round_trip_needs_the_head_count_of_an_odd_width(tmp_path, capsys):
  twin = torch_twins.randomize(torch_twins.DinoV2ViT(
      image=16, patch=4, dim=32, depth=2, num_heads=4, hidden=64,
      num_register_tokens=2), seed=14)
  pth = parity.save(twin, tmp_path / "dinov2.safetensors")
  out = tmp_path / "dinov2"
  args = ["--arch=vit", f"--input={pth}", f"--output={out}"]
  assert convert.main(args) == 1
  assert "num_heads" in capsys.readouterr().err
  assert convert.main(args + ['--model={"num_heads": 4}']) == 0

  model_config, _ = pretrained_encoder(str(out))
  assert (model_config.depth, model_config.num_registers,
          tuple(model_config.posemb_grid)) == (2, 2, (4, 4))
  saved, _, meta = _restore(out)
  assert meta["info"]["class_names"] == []  # DINOv2 has no head
  model = build_model(model_config, bands=bands_lib.RGB, num_classes=0)
  image = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
  pooled, _ = parity.apply(model, {"params": saved}, image)
  with torch.no_grad():
    want = twin(parity.nchw(image)).numpy()
  assert parity.relative_difference(pooled, want) < 1e-5


def test_cli_errors(tmp_path, capsys):
  twin = torch_twins.randomize(torch_twins.TorchvisionResNet(
      "basic", (1,), width=4, num_classes=2))
  pth = parity.save(twin, tmp_path / "w.pth")
  base = ["--arch=resnet", f"--input={pth}"]
  assert convert.main(base + [f"--output={tmp_path / 'a'}", "--bands=sentinel2"]) == 1
  assert "conv1.weight takes 3 bands but --bands='sentinel2' names 13" in \
      capsys.readouterr().err
  assert convert.main(base + [f"--output={tmp_path / 'b'}", "--model=[1]"]) == 1
  assert "JSON object" in capsys.readouterr().err
  assert convert.main(base + [f"--output={tmp_path / 'c'}",
                              "--bands=B04,B03,B02", "--num_classes=3"]) == 0
  assert convert.main(base + [f"--output={tmp_path / 'c'}"]) == 1
  assert "already holds checkpoints" in capsys.readouterr().err
  _, _, meta = _restore(tmp_path / "c")
  assert [b["wavelength_nm"] for b in meta["info"]["bands"]] == [664.6, 559.8, 492.4]
  config = ml_collections.ConfigDict(json.loads(meta["config"]))
  assert (config.model.stage_sizes, config.model.block) == ([1], "basic")
  assert len(meta["info"]["class_names"]) == 3
  saved, _, _ = _restore(tmp_path / "c")
  # fc has 2 classes: the 3-class head is left at its initial value.
  assert saved["head"]["fc"]["kernel"].shape == (4, 3)
  np.testing.assert_array_equal(saved["stage_1_block_0"]["bn1"]["bias"],
                                twin.layer1[0].bn1.bias.detach().numpy())
