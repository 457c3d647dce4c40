"""Every config in configs/ builds, documents its command, and shrinks for tests."""
import glob
import os

import jax
import numpy as np
import pytest
import scipy.special
import tifffile

from eo_jax import config as config_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset, eurosat
from eo_jax.models import build_model
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer

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
  assert (tmp_path / "run" / "confusion_test.png").exists()
  # Recompute the test metrics outside the trainer: the early-stopping
  # checkpoint (the state the trainer evaluated), the whole test split in
  # one unpadded batch, argmax accuracy and mean cross-entropy in numpy.
  checkpointer = Checkpointer(str(tmp_path / "run" / "checkpoints_best"))
  assert checkpointer.latest_step() == results["evaluated_step"]
  params, model_state, _ = checkpointer.restore_params()
  checkpointer.close()
  dataset = build_dataset(config.data)
  n = len(dataset.split("test"))
  batch = next(iter(pipeline.eval_loader(dataset, "test", config.input,
                                         batch_size=n,
                                         image_size=config.input.image_size)))
  assert len(batch["label"]) == n == 10  # 20% of 6 per class, rounded down
  model = build_model(config.model, bands=dataset.info.bands,
                      num_classes=dataset.info.num_classes)
  logits, _ = jax.jit(model.apply)({"params": params, **model_state},
                                   batch["image"])
  logits = np.asarray(logits, np.float64)
  accuracy = np.mean(logits.argmax(-1) == batch["label"])
  loss = -np.mean(scipy.special.log_softmax(logits, -1)[np.arange(n), batch["label"]])
  assert results["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
  assert results["test"]["loss"] == pytest.approx(loss, rel=1e-5)


def test_eurosat_config_without_data_says_where_to_get_it(tmp_path):
  module = _load([p for p in CONFIGS if p.endswith("eurosat.py")][0])
  config = module.get_config(f"runlocal=True,path={tmp_path / 'nowhere'}")
  with pytest.raises(FileNotFoundError, match="config.data.path"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
