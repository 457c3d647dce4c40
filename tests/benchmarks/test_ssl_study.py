"""benchmarks/ssl_study.py: each setting changes what it says, and the table
repeats the runs' numbers."""
import os

import pytest

from benchmarks import dino_s2, ssl_study
from eo_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tiny_pretrain_config(monkeypatch):
  """The study's base config without the scene: configs/dino_s2.py:runlocal."""
  def pretrain_config(args):
    config = config_lib.load_config(
        os.path.join(ROOT, "configs", "dino_s2.py:runlocal=True"), lock=False)
    config.model.layerscale_init = args.layerscale or None  # as dino_s2's
    return config
  monkeypatch.setattr(dino_s2, "pretrain_config", pretrain_config)


@pytest.mark.parametrize("setting", sorted(ssl_study.SETTINGS))
def test_each_setting_changes_its_keys_only(tiny_pretrain_config, setting):
  del tiny_pretrain_config
  base = ssl_study.study_config("unused", 10, "base", seed=0).to_dict()
  changed = ssl_study.study_config("unused", 10, setting, seed=3).to_dict()
  assert changed.pop("seed") == 3 and base.pop("seed") == 0
  diff = {f"{section}.{key}" for section in base if isinstance(base[section], dict)
          for key in set(base[section]) | set(changed[section])
          if base[section].get(key) != changed[section].get(key)}
  expected = set(ssl_study.SETTINGS[setting][1])
  if setting == "lr_3x":  # the schedule still ends at 1e-6
    expected.add("optim.end_lr_factor")
    assert changed["optim"]["lr"] * changed["optim"]["end_lr_factor"] == pytest.approx(1e-6)
  assert diff == expected
  for key, value in ssl_study.SETTINGS[setting][1].items():
    section, name = key.split(".")
    assert changed[section][name] == value


def test_table_rows_and_seed_spread():
  def row(setting, seed, f1, random_f1):
    return {"setting": setting, "seed": seed, "minutes": 1.0,
            "train": {"dino_loss": 8.0},
            "collapse": {"cls_rank": 20.0, "patch_rank": 40.0, "prototypes_used": 30.0,
                         "teacher_uniformity": 0.9},
            "probe": {"knn10/accuracy": 0.8, "knn10/macro_f1": f1,
                      "linear/accuracy": 0.8, "linear/macro_f1": f1},
            "random_probe": {"knn10/macro_f1": random_f1, "linear/macro_f1": random_f1}}
  text = ssl_study.table([row("base", 0, 0.40, 0.30), row("base", 1, 0.44, 0.32),
                          row("no_koleo", 0, 0.35, 0.30)])
  assert text.count("\n| base |") == 2 and "| no_koleo | 0 |" in text
  # Two seeds: mean 0.42 +- 0.028 (sample std), random 0.31, difference 0.11 +- 0.014.
  assert "base, 2 seeds, knn10/macro_f1: trained 0.420 +- 0.028, random 0.310" in text
  assert "difference +0.110 +- 0.014" in text
  assert "no_koleo, " not in text.split("|---")[-1].split("\n", 1)[1]


def test_mae_settings_name_keys_of_the_mae_config():
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", "mae_s2.py:runlocal=True"), lock=False)
  for setting, (_, overrides) in ssl_study.MAE_SETTINGS.items():
    for key, value in overrides.items():
      section, name = key.split(".")
      assert name in config[section], (setting, key)
      assert config[section][name] != value, (setting, key)  # a real change
