"""The spatial-spectral ViT under every objective, end to end.

configs/mae_spectral.py and configs/dino_spectral.py (runlocal: synthetic
16-band data, a tiny factorized spectral ViT) and a supervised tiny run
with a 'joint' spectral ViT each train through the trainer. The `slow`
variants also interrupt each run by a simulated crash after its step-2
checkpoint and resume it: the resumed run must end with exactly the
parameters (and DINO's teacher) of an uninterrupted one. The default run
checks bit-exact resumption once per objective elsewhere
(tests/train/test_trainer.py, tests/test_configs_mae.py,
tests/test_configs_dino.py); here two more runs would only repeat it.
"""
import os

import jax
import ml_collections
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import TrainState
from eo_jax.train import trainer
from eo_jax.train.init_from import load_init_from
from tiny import Crash, final_params, flat_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str = ""):
  path = os.path.join(ROOT, "configs", name)
  return config_lib.load_config(f"{path}:{arg}", lock=False)


def _final_state(box, last_step, crash_at=None):
  """A trainer hook: raises `Crash` at `crash_at`; keeps the state of
  `last_step` in `box`."""
  def hook(step, state):
    if step == crash_at:
      raise Crash(f"simulated crash at step {step}")
    if step == last_step:
      box["params"], box["extra"] = jax.device_get((state.params, state.extra))
  return hook


def _train(config, workdir, steps):
  """Trains `config` straight in `workdir`; returns its results and final
  state."""
  state = {}
  results = trainer.train_and_evaluate(config, str(workdir),
                                       hooks=[_final_state(state, steps)])
  assert results["step"] == steps
  return results, state


def _assert_resumes_exactly(config, tmp_path, steps, crash_at=3):
  """Trains `config` straight and with a crash at `crash_at` then a resume;
  returns the straight run's results and final state."""
  config.train.checkpoint_every_steps = 2
  results, straight = _train(config, tmp_path / "a", steps)
  resumed = {}
  with pytest.raises(Crash):
    trainer.train_and_evaluate(config, str(tmp_path / "b"),
                               hooks=[_final_state({}, steps, crash_at)])
  again = trainer.train_and_evaluate(config, str(tmp_path / "b"),
                                     hooks=[_final_state(resumed, steps)])
  jax.tree.map(np.testing.assert_array_equal, straight["params"],
               resumed["params"])
  jax.tree.map(np.testing.assert_array_equal, straight["extra"],
               resumed["extra"])
  assert again["val"] == results["val"]
  return results, straight


# ------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", ["mae_spectral.py", "dino_spectral.py"])
def test_configs_pretrain_the_spectral_vit_on_a_cube(name):
  module = config_lib.config_module(os.path.join(ROOT, "configs", name))
  first = module.__doc__.strip().splitlines()
  assert any(line.strip().startswith(f"python main.py --config=configs/{name}")
             for line in first[:4])
  config = load_config(name, "path=/data/cube.hdr")
  assert config.data.name == "cube" and config.data.path == "/data/cube.hdr"
  assert config.data.task == "unlabelled"
  assert config.model.name == "spectral_vit"
  assert config.model.mode == "factorized" and config.model.group_size == 8
  tiny = load_config(name, "runlocal=True")
  assert tiny.data.name == "synthetic" and tiny.data.num_bands == 16
  assert 0 < tiny.train.steps <= 50
  with pytest.raises(ValueError, match="mode must be one of"):
    load_config(name, "mode=spectral")


def test_mae_spectral_arguments_reach_the_objective():
  config = load_config("mae_spectral.py", "mode=joint,masking=tokens,"
                       "group_size=5,mask_ratio=0.6,window=48")
  assert (config.model.mode, config.model.group_size) == ("joint", 5)
  assert (config.mae.masking, config.mae.mask_ratio) == ("tokens", 0.6)
  assert config.data.patch_size == 48
  with pytest.raises(ValueError, match="masking must be one of"):
    load_config("mae_spectral.py", "masking=bands")
  tiny = load_config("mae_spectral.py", "runlocal=True")
  obj = OBJECTIVES.get("mae")(tiny, build_dataset(tiny.data).info)
  # 16 bands in groups of 3: five of 3 and one of 1 (padded to 3).
  assert [len(g) for g in obj.groups] == [3, 3, 3, 3, 3, 1]


def test_dino_spectral_masks_groups_and_probes_a_label_map():
  config = load_config("dino_spectral.py", "path=/c.npy,label_path=/gt.npy")
  assert config.dino.spectral_mask_ratio == 0.25
  assert config.evals.knn.data.path == "/c.npy"
  assert config.evals.knn.data.label_path == "/gt.npy"
  assert config.evals.knn.image_size == 16
  assert "knn" not in load_config("dino_spectral.py", "path=/c.npy").evals
  off = load_config("dino_spectral.py", "spectral_mask=0")
  assert off.dino.spectral_mask_ratio == 0.0


def test_dino_whu_model_variant():
  vit = load_config("dino_whu.py")
  spectral = load_config("dino_whu.py", "model=spectral_vit")
  assert vit.model.name == "vit" and vit.dino.spectral_mask_ratio == 0.0
  assert spectral.model.name == "spectral_vit"
  assert spectral.model.group_size == 4
  assert spectral.dino.spectral_mask_ratio == 0.25
  # Everything else is the ViT recipe.
  for key in ("variant", "layerscale_init", "drop_path"):
    assert spectral.model[key] == vit.model[key], key
  assert spectral.optim == vit.optim
  with pytest.raises(ValueError, match="model must be one of"):
    load_config("dino_whu.py", "model=resnet")


# ------------------------------------------------- training and resuming


def _joint_spectral_config():
  config = tiny_config(**{"train.steps": 6, "train.eval_every_steps": 3})
  config.unlock()
  config.model = ml_collections.ConfigDict(dict(
      name="spectral_vit", variant="Ti/4", width=32, depth=1, num_heads=2,
      mlp_dim=64, mode="joint", group_size=2))
  return config


def test_supervised_joint_spectral_vit_trains(tmp_path):
  results, state = _train(_joint_spectral_config(), tmp_path, 6)
  assert np.isfinite(results["test"]["loss"])
  assert "head" in state["params"]


@pytest.mark.slow
def test_supervised_joint_spectral_vit_resumes_exactly(tmp_path):
  results, _ = _assert_resumes_exactly(_joint_spectral_config(), tmp_path, 6)
  assert np.isfinite(results["test"]["loss"])


def _mae_spectral_config():
  # Factorized with whole band groups hidden: the encoder's mask token route.
  return load_config("mae_spectral.py", "runlocal=True,masking=groups")


@pytest.fixture(scope="module")
def mae_spectral_run(tmp_path_factory):
  """A straight runlocal MAE run on 16 bands: (workdir, results, final state)."""
  workdir = tmp_path_factory.mktemp("mae_spectral")
  return (workdir, *_train(_mae_spectral_config(), workdir, 6))


def test_mae_spectral_runlocal_trains(mae_spectral_run):
  workdir, results, state = mae_spectral_run
  assert "mask_token" in state["params"]["encoder"]
  assert np.isfinite(results["val"]["loss"])
  assert (workdir / "reconstruction.png").stat().st_size > 0


@pytest.mark.slow
def test_mae_spectral_runlocal_resumes_exactly(tmp_path):
  results, state = _assert_resumes_exactly(_mae_spectral_config(), tmp_path, 6)
  assert "mask_token" in state["params"]["encoder"]
  assert np.isfinite(results["val"]["loss"])


def _assert_dino_spectral_run(workdir, results, state):
  assert set(results) >= {"val", "probe"}
  for name in ("attention.png", "patch_pca.png"):
    assert (workdir / name).stat().st_size > 0, name
  student, teacher = state["params"]["student"], state["extra"]["teacher"]
  kernel = lambda t: t["backbone"]["spatial_0"]["mlp"]["fc1"]["kernel"]
  assert not np.array_equal(kernel(student), kernel(teacher))


def test_dino_spectral_runlocal_trains(tmp_path):
  config = load_config("dino_spectral.py", "runlocal=True")
  _assert_dino_spectral_run(tmp_path, *_train(config, tmp_path, 6))


@pytest.mark.slow
def test_dino_spectral_runlocal_resumes_exactly(tmp_path):
  config = load_config("dino_spectral.py", "runlocal=True")
  _assert_dino_spectral_run(tmp_path / "a",
                            *_assert_resumes_exactly(config, tmp_path, 6))


def _zero_variables(objective, image):
  """The objective's (params, model_state), all zeros: load_init_from needs
  only their shapes, an eager init compiles a ViT op by op, and a parameter
  left unloaded stays visibly zero."""
  shapes = jax.eval_shape(lambda: (lambda v: (v.params, v.model_state))(
      objective.init(jax.random.key(0), {"image": image})))
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def test_wavelength_embedding_loads_onto_another_sensors_bands(mae_spectral_run):
  """An MAE encoder trained on 16 bands initialises a run on 7 other bands
  (config.init_from skips the band check for a band-agnostic backbone),
  every encoder parameter unchanged; a plain ViT is refused."""
  source_dir = mae_spectral_run[0]
  source = _mae_spectral_config()
  trained = final_params(str(source_dir))

  config = load_config("mae_spectral.py", "runlocal=True")
  config.data.num_bands = 7
  config.init_from.workdir = str(source_dir)
  config.init_from.source_prefix = config.init_from.target_prefix = "encoder"
  info = build_dataset(config.data).info
  assert [b.wavelength_nm for b in info.bands] != [
      b.wavelength_nm for b in build_dataset(source.data).info.bands][:7]
  objective = OBJECTIVES.get("mae")(config, info, run_length=(4, 6))
  image = np.zeros((2, 16, 16, 7), np.float32)
  params, _ = load_init_from(config.init_from, info,
                             *_zero_variables(objective, image),
                             objective.backbones())
  loaded = {f"encoder/{k}": v for k, v in flat_params(params["encoder"]).items()}
  assert loaded and set(loaded) <= set(trained)
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, trained[key], err_msg=key)
  # The 7-band model runs with the 16-band weights.
  pooled = jax.jit(objective.embed)(
      TrainState(step=0, params=params, model_state={}, opt_state=None,
                 extra={}), image + 1.0)
  assert pooled.shape == (2, 32) and np.isfinite(np.asarray(pooled)).all()

  # Group embeddings ('group') depend on the bands: the check stays.
  config.model.embed = "group"
  objective = OBJECTIVES.get("mae")(config, info, run_length=(4, 6))
  with pytest.raises(ValueError, match="band mismatch"):
    load_init_from(config.init_from, info, *_zero_variables(objective, image),
                   objective.backbones())
