"""configs/mae_s2.py and configs/vit_eolearn.py end to end (runlocal variants).

One MAE run (synthetic 13-band data) is shared by the module: its resume
after a crash must reproduce it exactly, and the downstream linear probe on
the embedded eo-learn sample starts from its encoder through
config.init_from (frozen encoder weights copied, position embedding resized
from a 4x4 to a 2x2 grid, fresh head).
"""
import json
import os

import jax
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.models import vit as vit_lib
from eo_jax.objectives import OBJECTIVES
from eo_jax.train import optim, trainer
from eo_jax.train.init_from import load_init_from
from tiny import Crash, crash_at, final_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None, **overrides):
  path = os.path.join(ROOT, "configs", name)
  config = config_lib.load_config(f"{path}:{arg or ''}", overrides)
  return config, config_lib.config_module(path)


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("mae_s2")
  config, _ = load_config("mae_s2.py", "runlocal=True")
  results = trainer.train_and_evaluate(config, str(workdir))
  return workdir, results


# ------------------------------------------------------------------ configs


def test_docstrings_start_with_the_run_command():
  for name in ("mae_s2.py", "vit_eolearn.py"):
    _, module = load_config(name)
    first = module.__doc__.strip().splitlines()
    assert any(line.strip().startswith(f"python main.py --config=configs/{name}")
               for line in first[:5]), name


def test_mae_defaults_follow_the_paper():
  config, _ = load_config("mae_s2.py")
  assert config.objective == "mae" and config.data.name == "s2_scene"
  assert config.mae.mask_ratio == 0.75 and config.mae.norm_pix_loss
  assert (config.optim.name, config.optim.b1, config.optim.b2) == ("adamw", 0.9, 0.95)
  assert config.optim.weight_decay == 0.05
  assert config.optim.lr == pytest.approx(1.5e-4 * config.input.batch_size / 256)
  paper, _ = load_config("mae_s2.py", "decoder=mae")
  assert (paper.mae.decoder_width, paper.mae.decoder_depth,
          paper.mae.decoder_heads) == (512, 8, 16)
  with pytest.raises(KeyError, match="Unknown config argument"):
    load_config("mae_s2.py", "decoder_size=3")
  with pytest.raises(ValueError, match="mode"):
    load_config("vit_eolearn.py", "mode=knn")


@pytest.mark.parametrize("arg", ["", "runlocal=True"])
@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_downstream_model_matches_the_pretrained_encoder(arg, mode):
  pre, _ = load_config("mae_s2.py", arg)
  down, _ = load_config("vit_eolearn.py", f"mode={mode},{arg}")
  downstream_only = {"pool", "head_norm", "drop_path"}
  assert {k: v for k, v in down.model.items() if k not in downstream_only} == \
      dict(pre.model)
  assert down.init_from.source_prefix == "encoder"
  assert down.model.head_norm == (mode == "probe")
  assert tuple(down.optim.frozen) == (("^(?!head/)",) if mode == "probe" else ())


def test_finetune_uses_layerwise_decay_by_vit_depth():
  config, _ = load_config("vit_eolearn.py", "mode=finetune,runlocal=True")
  info = build_dataset(config.data).info
  objective = OBJECTIVES.get("supervised")(config, info)
  params = jax.eval_shape(lambda: objective.init(
      jax.random.key(0), {"image": np.zeros((2, 8, 8, 13), np.float32)}).params)
  mult = optim.describe_multipliers(config.optim, params, objective.layer_id)
  decay = config.optim.layer_decay
  assert mult["head/kernel"] == 1.0
  assert mult["encoder_norm/scale"] == 1.0
  assert mult["block_0/attn/query/kernel"] == pytest.approx(decay)
  assert mult["embedding/kernel"] == pytest.approx(decay**2)


# --------------------------------------------------------------- end to end


def test_mae_runlocal_trains_and_writes_its_pictures(mae_run):
  workdir, results = mae_run
  assert results["step"] == 6
  assert np.isfinite(results["val"]["loss"]) and results["val"]["loss"] > 0
  for name in ("results.json", "curves.png", "reconstruction.png"):
    assert (workdir / name).exists(), name
  params = final_params(str(workdir))
  assert any(k.startswith("encoder/block_0/") for k in params)
  assert any(k.startswith("decoder/block_0/") for k in params)


def test_mae_resume_after_crash_equals_uninterrupted_run(mae_run, tmp_path):
  reference, first = mae_run
  config, _ = load_config("mae_s2.py", "runlocal=True")
  with pytest.raises(Crash):
    trainer.train_and_evaluate(config, str(tmp_path), hooks=[crash_at(5)])
  resumed = trainer.train_and_evaluate(config, str(tmp_path))
  a, b = final_params(str(reference)), final_params(str(tmp_path))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert resumed["val"] == first["val"]


def test_linear_probe_starts_from_the_frozen_mae_encoder(mae_run, tmp_path):
  source, _ = mae_run
  config, _ = load_config("vit_eolearn.py", "mode=probe,runlocal=True",
                          **{"init_from.workdir": str(source)})
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 4
  assert set(results["test"]) >= {"accuracy", "macro_f1"}
  src = final_params(str(source))
  got = final_params(str(tmp_path))
  encoder = {k[len("encoder/"):]: v for k, v in src.items()
             if k.startswith("encoder/")}
  head = [k for k in got if k.startswith("head/")]
  assert sorted(head) == ["head/bias", "head/kernel"]
  assert set(got) - set(head) == set(encoder)
  for k in encoder:
    if k == "pos_embedding":
      # Pretrained on a 4x4 grid (16 px / 4), probed on 2x2 (8 px / 4).
      assert encoder[k].shape == (1, 4, 4, 32) and got[k].shape == (1, 2, 2, 32)
      np.testing.assert_allclose(
          got[k], vit_lib.resize_posemb(encoder[k], (2, 2)), atol=1e-6)
    else:
      np.testing.assert_array_equal(got[k], encoder[k], err_msg=k)  # frozen
  assert np.abs(got["head/kernel"]).max() > 0  # zero-initialised, then trained
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["test"]["accuracy"] == results["test"]["accuracy"]


def test_init_from_fits_the_patch_embedding_to_other_bands(mae_run):
  """A 3-band probe of the 13-band encoder: the ViT declares its input kernel
  (`input_kernels`), so init_from copies the source's B04, B03, B02 filters
  and drops the others instead of refusing the bands."""
  source, _ = mae_run
  config, _ = load_config("vit_eolearn.py", "mode=probe,runlocal=True",
                          **{"init_from.workdir": str(source),
                             "data.bands": ("B04", "B03", "B02")})
  info = build_dataset(config.data).info
  objective = OBJECTIVES.get("supervised")(config, info)
  def init():
    variables = objective.init(jax.random.key(0),
                               {"image": np.zeros((2, 8, 8, 3), np.float32)})
    return variables.params, variables.model_state

  shapes = jax.eval_shape(init)
  zeros, state = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  params, _ = load_init_from(config.init_from, info, zeros, state,
                             objective.backbones(), model_config=config.model)
  kernel = final_params(str(source))["encoder/embedding/kernel"]
  np.testing.assert_array_equal(params["embedding"]["kernel"],
                                kernel[:, :, [3, 2, 1], :])  # S2 band order
