"""configs/transfer.py: probe, partial and full fine-tuning do what they say."""
import os

import jax
import numpy as np
import pytest

import eo_jax
from eo_jax import config as config_lib
from eo_jax.train import trainer

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "configs", "transfer.py")


def _config(arg):
  return config_lib.config_module(_PATH).get_config(arg)


def _flat(tree):
  return {"/".join(str(k.key) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
  """The step-0 state every stage starts from (same seed, same init)."""
  run = eo_jax.build_run(_config("runlocal=True,stage=full"))
  return _flat(run.state.params), _flat(run.state.model_state)


@pytest.mark.parametrize("stage, trained", [
    ("probe", ("head/",)),
    ("partial", ("head/", "stage_4_")),
    pytest.param("full", ("head/", "stage_", "stem_"),
                 marks=pytest.mark.slow)])  # the suite's time budget
def test_each_stage_trains_exactly_its_parts(stage, trained, start, tmp_path):
  config = _config(f"runlocal=True,stage={stage}")
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["test"]["loss"])
  assert (tmp_path / "knn_pca.png").exists()        # the features' PCA picture
  assert 0 <= results["knn"]["knn10/accuracy"] <= 1
  run = eo_jax.restore_run(str(tmp_path), best=False)
  params, stats = _flat(run.state.params), _flat(run.state.model_state)
  start_params, start_stats = start
  for path, value in params.items():
    moved = not np.array_equal(value, start_params[path])
    should = any(path.startswith(t) for t in trained)
    if should and path.endswith("kernel"):
      assert moved, f"{stage}: {path} should train"
    if not should:
      assert not moved, f"{stage}: {path} should be frozen"
  # A frozen part keeps its BatchNorm running statistics too.
  for path, value in stats.items():
    part = path.split("/")[1]
    if not any(part.startswith(t.rstrip("/")) for t in trained):
      np.testing.assert_array_equal(value, start_stats[path], err_msg=path)


def test_stage_partial_has_per_group_learning_rates():
  config = _config("stage=partial,lr=2e-4")
  assert config.optim.lr == 2e-4
  assert tuple(config.optim.groups) == (("^head/", 10.0),)
  assert config.model.frozen_stages == 3
  with pytest.raises(ValueError, match="stage must be one of"):
    _config("stage=everything")
  with pytest.raises(ValueError, match="not both"):
    _config("weights=a.pth,init=runs/x")
