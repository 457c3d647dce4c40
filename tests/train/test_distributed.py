"""Data parallelism: 4 CPU devices and 2 jax.distributed processes reproduce
a 1-device run with the same global batch, and each run's padded, sharded
evaluation equals a direct unpadded evaluation of the parameters it evaluated."""
import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from tiny import (assert_metrics_equal, direct_outputs, reference_metrics,
                  saved_variables, tiny_config)

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.py")
REPO = os.path.dirname(os.path.dirname(TINY))


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


# Eval splits whose sizes leave remainders everywhere. 21 val: batches of
# 8, 8, 5 (+3 padding rows) on one process, whose four devices get 2, 2, 1 (+1)
# and 0 (+2) rows of the last one; on two processes shards of 11 and 10 in
# local batches of 4, 4, 3 (+1) and 4, 4, 2 (+2). 17 test: 8, 8, 1 (+7); two
# processes 4, 4, 1 (+3) and 4, 4, then an empty batch (+4). The val and test
# splits do not change training.
SPLITS = {"data.num_val": 21, "data.num_test": 17}
SPLIT_ARGS = ("--num_val", "21", "--num_test", "17")


def _run(workdir, devices=1, *args):
  proc = subprocess.run([sys.executable, TINY, str(workdir), *args], env=_env(devices),
                        capture_output=True, text=True, timeout=600)
  return proc


def _params(workdir, name="params.npz"):
  with np.load(os.path.join(workdir, name)) as f:
    return {k: f[k] for k in f.files}


def _json(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def _assert_close(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one")
  proc = _run(workdir, 1, *SPLIT_ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("four")
  proc = _run(workdir, 4, *SPLIT_ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("two")
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, TINY, str(workdir), *SPLIT_ARGS, "--coordinator",
       f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return workdir


def test_four_devices_equal_one_device(one_device_run, four_device_run):
  for name in ("params.npz", "model_state.npz"):  # BatchNorm statistics too
    _assert_close(_params(one_device_run, name), _params(four_device_run, name))


@pytest.mark.multiprocess
def test_two_processes_equal_one_process(one_device_run, two_process_run):
  for name in ("params.npz", "model_state.npz"):  # BatchNorm statistics too
    _assert_close(_params(one_device_run, name), _params(two_process_run, name))
  # Validation and test metrics (process 0's results.json). The parameters
  # agree to 2e-4 relative, so through the network's few layers the logits,
  # and the mean loss, agree to ~1e-3 relative; far from any tie, the
  # predictions, hence every count, are the same.
  one, two = _json(one_device_run, "results.json"), _json(two_process_run, "results.json")
  for split in ("val", "test"):
    assert two[split]["accuracy"] == one[split]["accuracy"], split
    np.testing.assert_allclose(two[split]["macro_f1"], one[split]["macro_f1"], rtol=1e-12)
    np.testing.assert_allclose(two[split]["loss"], one[split]["loss"], rtol=1e-3)
  # Every evaluation on the way too: the same splits, steps and counts.
  one_evals = _json(one_device_run, "evaluations.json")
  two_evals = _json(two_process_run, "evaluations.json")
  assert [(e["split"], e["step"], e["final"]) for e in two_evals] == [
      (e["split"], e["step"], e["final"]) for e in one_evals]
  for a, b in zip(one_evals, two_evals):
    np.testing.assert_array_equal(a["confusion_matrix"], b["confusion_matrix"])
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-3)


@pytest.mark.parametrize("run", [
    "one_device_run", "four_device_run",
    pytest.param("two_process_run", marks=pytest.mark.multiprocess)])
def test_reported_metrics_equal_direct_evaluation(run, request):
  workdir = request.getfixturevalue(run)
  config = tiny_config(**SPLITS)
  results, evals = _json(workdir, "results.json"), _json(workdir, "evaluations.json")
  # Val at steps 4, 8 (the model still errs there) and 12, then the final
  # test; with early stopping off each saw the checkpoint of its step.
  assert [(e["split"], e["step"], e["final"]) for e in evals] == [
      ("val", 4, False), ("val", 8, False), ("val", 12, False), ("test", 12, True)]
  class_names = [f"class_{k}" for k in range(3)]
  expected = {}
  for e in evals:
    size = {"val": 21, "test": 17}[e["split"]]
    out = direct_outputs(config, *saved_variables(workdir, e["step"]), e["split"])
    assert len(out["labels"]) == size
    expected[e["split"]] = reference_metrics(out["logits"], out["labels"], 3)
    cm = np.asarray(e["confusion_matrix"])
    assert cm.sum() == size, e  # every example counted exactly once
    np.testing.assert_array_equal(cm, expected[e["split"]]["confusion_matrix"],
                                  err_msg=str(e))
    assert_metrics_equal(e, expected[e["split"]], class_names)
  # results.json holds the last val and the final test evaluation.
  for split in ("val", "test"):
    assert_metrics_equal(results[split], expected[split], class_names)


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
  proc = _run(tmp_path, 4, "--batch_size", "6")
  assert proc.returncode != 0
  assert "not divisible by the 4 devices" in proc.stderr
  assert "--config.input.batch_size" in proc.stderr
