"""`eo_jax.restore_run`: a finished or interrupted run, picked up from Python,
gives the numbers the trainer wrote."""
import json

import numpy as np
import pytest

import eo_jax
from eo_jax.train import trainer
from tiny import Crash, checkpoint_variables, crash_at, direct_outputs, tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A tiny run with early stopping whose best state is its first evaluated
  one (no later evaluation improves accuracy by 2), not its last."""
  workdir = tmp_path_factory.mktemp("finished")
  config = tiny_config(**{"train.steps": 12, "train.eval_every_steps": 4,
                          "train.early_stopping.metric": "val/accuracy",
                          "train.early_stopping.min_delta": 2.0,
                          "train.early_stopping.patience": 10})
  results = trainer.train_and_evaluate(config, str(workdir))
  return workdir, config, results


def test_evaluate_equals_results_json_of_a_finished_run(finished):
  workdir, _, results = finished
  saved = json.loads((workdir / "results.json").read_text())
  run = eo_jax.restore_run(str(workdir))
  assert run.step == saved["evaluated_step"] == 4 and saved["step"] == 12
  for name in ("test", "val"):
    got = run.evaluate(name)
    for key, value in saved[name].items():
      np.testing.assert_allclose(got[key], value, rtol=1e-6, err_msg=f"{name}/{key}")
  assert run.splits == ["test", "train", "val"]
  assert results["test"] == saved["test"]


def test_predict_and_embed_are_the_models_outputs(finished):
  workdir, config, _ = finished
  run = eo_jax.restore_run(str(workdir))
  batch = next(run.batches("val"))
  logits = run.predict(batch["image"])
  params, model_state = checkpoint_variables(str(workdir), "checkpoints_best")
  direct = direct_outputs(config, params, model_state, "val")
  n = len(batch["image"])
  np.testing.assert_allclose(logits, direct["logits"][:n], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(run.embed(batch["image"]), direct["features"][:n],
                             rtol=1e-5, atol=1e-5)
  # Raw pixels go through the stored band statistics first.
  source = run.dataset.split("val")
  raw = np.stack([source[i]["image"] for i in range(n)])
  np.testing.assert_allclose(run.normalize(raw), batch["image"], rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="normalised images"):
    run.predict(raw[..., :2])


def test_the_latest_state_when_asked_and_an_interrupted_run(tmp_path, finished):
  workdir, _, _ = finished
  latest = eo_jax.restore_run(str(workdir), best=False)
  assert latest.step == 12
  config = tiny_config(**{"train.steps": 12, "train.eval_every_steps": 4})
  with pytest.raises(Crash):
    trainer.train_and_evaluate(config, str(tmp_path), hooks=[crash_at(7)])
  run = eo_jax.restore_run(str(tmp_path))
  assert run.step == 4
  # The trainer evaluated 'val' at step 4 and checkpointed its history.
  history = run_history(tmp_path)
  got = run.evaluate("val")
  for key in ("accuracy", "macro_f1", "loss"):
    logged = [v for s, v in history[f"val/{key}"] if s == 4]
    np.testing.assert_allclose(got[key], logged, rtol=1e-6, err_msg=key)
  assert int(np.sum(got["confusion_matrix"])) == len(run.dataset.split("val"))


def run_history(workdir):
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(str(workdir / "checkpoints"))
  history = checkpointer.restore_meta()["history"]["history"]
  checkpointer.close()
  return history


def test_a_workdir_without_checkpoints_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    eo_jax.restore_run(str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()  # looking created nothing
