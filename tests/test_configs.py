"""Every config in configs/ builds, documents its command, and shrinks for tests."""
import glob
import os

import numpy as np
import pytest
import tifffile

from eo_jax import config as config_lib
from eo_jax.data.datasets import eurosat
from eo_jax.train import trainer

CONFIGS = sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "*.py")))


def _load(path):
  return config_lib.config_module(path)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_documents_its_command_and_has_a_runlocal_variant(path):
  module = _load(path)
  name = os.path.basename(path)
  first_command = module.__doc__.strip().splitlines()
  assert any(f"python main.py --config=configs/{name}" in line for line in first_command[:4]), \
      f"{name}: the docstring must start with the command that runs it"
  config = module.get_config()
  tiny = module.get_config("runlocal=True")
  assert tiny.train.steps > 0 and tiny.train.steps <= 50, "runlocal must be a few steps"
  assert config.model.name and config.data.name
  with pytest.raises(KeyError, match="Unknown config argument"):
    module.get_config("no_such_option=1")


def _write_eurosat_ms(root, per_class=6, size=16):
  rng = np.random.default_rng(0)
  for label, cls in enumerate(eurosat.CLASSES):
    (root / cls).mkdir(parents=True)
    for n in range(1, per_class + 1):
      image = (1000 + 300 * label + rng.integers(0, 200, (size, size, 13))).astype(np.uint16)
      tifffile.imwrite(root / cls / f"{cls}_{n}.tif", image, photometric="minisblack")


def test_eurosat_config_trains_on_the_published_13_band_layout(tmp_path):
  root = tmp_path / "EuroSAT_MS"
  _write_eurosat_ms(root)
  module = _load([p for p in CONFIGS if p.endswith("eurosat.py")][0])
  config = module.get_config(f"runlocal=True,variant=all,path={root}")
  results = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["step"] == 4
  assert 0.0 <= results["test"]["accuracy"] <= 1.0
  assert (tmp_path / "run" / "confusion_test.png").exists()


def test_eurosat_config_without_data_says_where_to_get_it(tmp_path):
  module = _load([p for p in CONFIGS if p.endswith("eurosat.py")][0])
  config = module.get_config(f"runlocal=True,path={tmp_path / 'nowhere'}")
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
