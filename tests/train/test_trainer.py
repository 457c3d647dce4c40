"""The trainer end to end on tiny synthetic data: outputs, resume, bad input."""
import json
import os

import numpy as np
import pytest

from eo_jax.config import probe_evals
from eo_jax.train import trainer
from tiny import (Crash, assert_metrics_equal, checkpoint_variables, crash_at,
                  direct_outputs, final_params, reference_metrics, tiny_config)


def _knn_votes(train_x, train_y, query_x, k, temperature, num_classes):
  """Cosine-similarity kNN: the k nearest (earliest on ties) vote with
  exp(similarity / T)."""
  train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  query = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
  sim = query @ train.T
  votes = np.zeros((len(query), num_classes))
  for i, row in enumerate(sim):
    for j in np.argsort(-row, kind="stable")[:k]:
      votes[i, train_y[j]] += np.exp(row[j] / temperature)
  return votes


def test_run_writes_metrics_plots_and_checkpoints(tmp_path):
  config = tiny_config(**{"train.steps": 24})
  # Frozen-feature probes on noisier images of the same classes: on the
  # training data itself any features, even random ones, score 1.0, which
  # no wrong wire could change.
  probe_view = tiny_config(**{"data.noise": 5.0})
  config.unlock()
  probe_evals(config, probe_view.data, k=(5,))
  config.lock()
  results = trainer.train_and_evaluate(config, str(tmp_path))
  # Features of a network that classifies well separate its classes.
  assert results["probe"]["linear/accuracy"] > 0.6, results["probe"]
  # The final kNN probe, recomputed from the final state's features of the
  # probe's train and val splits (the model applied directly, no loader).
  variables = checkpoint_variables(str(tmp_path))
  train = direct_outputs(probe_view, *variables, "train")
  val = direct_outputs(probe_view, *variables, "val")
  knn = reference_metrics(_knn_votes(train["features"], train["labels"], val["features"],
                                     5, config.evals.knn.temperature, 3), val["labels"], 3)
  assert 0.4 < knn["accuracy"] < 1, knn  # errors that a wrong wire would move
  assert results["probe"]["knn5/accuracy"] == knn["accuracy"], (results["probe"], knn)
  np.testing.assert_allclose(results["probe"]["knn5/macro_f1"], knn["macro_f1"], rtol=1e-12)
  for name in ("results.json", "curves.png", "confusion_val.png", "confusion_test.png"):
    assert (tmp_path / name).exists(), name
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")
                if s.isdigit())[-1] == 24
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["step"] == 24
  assert saved["test"] == results["test"] and saved["probe"] == results["probe"]
  # 12 test images, 3 well-separated classes: far above chance (1/3).
  assert results["test"]["accuracy"] > 0.6, results
  assert set(results["test"]) >= {"accuracy", "macro_f1", "map", "loss"}


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
  straight = tiny_config(**{"train.checkpoint_every_steps": 4})
  trainer.train_and_evaluate(straight, str(tmp_path / "a"))
  with pytest.raises(Crash):
    trainer.train_and_evaluate(straight, str(tmp_path / "b"), hooks=[crash_at(7)])
  resumed = trainer.train_and_evaluate(straight, str(tmp_path / "b"))
  a, b = final_params(str(tmp_path / "a")), final_params(str(tmp_path / "b"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  first = json.loads((tmp_path / "a" / "results.json").read_text())
  assert first["test"] == resumed["test"]


def test_rerunning_a_finished_run_does_not_train_again(tmp_path):
  config = tiny_config(**{"train.steps": 4})
  first = trainer.train_and_evaluate(config, str(tmp_path))
  trained_again = []
  again = trainer.train_and_evaluate(
      config, str(tmp_path), hooks=[lambda step, state: trained_again.append(step)])
  assert not trained_again
  assert again["test"] == first["test"]


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config(**{"optim.name": "sgd", "optim.lr": 1e12, "optim.momentum": 0.0,
                          "optim.schedule": "constant", "train.steps": 40,
                          "train.log_every_steps": 1, "train.checkpoint_every_steps": 1,
                          "train.eval_every_steps": 1000})
  with pytest.raises(trainer.NonFiniteLossError, match=r"at step \d+"):
    trainer.train_and_evaluate(config, str(tmp_path))
  params = final_params(str(tmp_path))
  assert params and all(np.all(np.isfinite(v)) for v in params.values())


def test_checkpoint_with_other_bands_is_refused(tmp_path):
  trainer.train_and_evaluate(tiny_config(**{"train.steps": 2}), str(tmp_path))
  other = tiny_config(**{"train.steps": 4})
  other.unlock()
  other.data.bands = ("S000", "S001", "S002")
  other.lock()
  with pytest.raises(ValueError, match="band mismatch"):
    trainer.train_and_evaluate(other, str(tmp_path))
  # The refused run left the checkpoint untouched.
  assert sorted(os.listdir(tmp_path / "checkpoints"))[-1].startswith("2")


def test_early_stopping_stops_and_evaluates_best_state(tmp_path):
  config = tiny_config(**{"train.steps": 40, "train.eval_every_steps": 2,
                          "train.early_stopping.metric": "val/accuracy",
                          "train.early_stopping.min_delta": 2.0,  # nothing improves by 2
                          "train.early_stopping.patience": 2})
  results = trainer.train_and_evaluate(config, str(tmp_path))
  assert results["step"] == 6  # first eval sets the best, two more fail to beat it
  assert results["evaluated_step"] == 2
  # The test metrics are those of the best (step 2) state, not the last one.
  best = direct_outputs(
      config, *checkpoint_variables(str(tmp_path), "checkpoints_best"), "test")
  last = direct_outputs(config, *checkpoint_variables(str(tmp_path)), "test")
  expected = reference_metrics(best["logits"], best["labels"], 3)
  assert_metrics_equal(results["test"], expected, [f"class_{k}" for k in range(3)])
  # ...which the check above can tell apart.
  assert reference_metrics(last["logits"], last["labels"], 3)["loss"] != pytest.approx(
      expected["loss"], rel=1e-4)
