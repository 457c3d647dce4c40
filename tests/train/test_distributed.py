"""Data parallelism: 4 CPU devices and 2 jax.distributed processes reproduce
a 1-device run with the same global batch."""
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tiny.py")
REPO = os.path.dirname(os.path.dirname(TINY))


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _run(workdir, devices=1, *args):
  proc = subprocess.run([sys.executable, TINY, str(workdir), *args], env=_env(devices),
                        capture_output=True, text=True, timeout=600)
  return proc


def _params(workdir):
  with np.load(os.path.join(workdir, "params.npz")) as f:
    return {k: f[k] for k in f.files}


def _assert_close(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("one")
  proc = _run(workdir, 1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _params(workdir)


def test_four_devices_equal_one_device(tmp_path, one_device_run):
  proc = _run(tmp_path, 4)
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_close(one_device_run, _params(tmp_path))


@pytest.mark.multiprocess
def test_two_processes_equal_one_process(tmp_path, one_device_run):
  port = portpicker.pick_unused_port()
  procs = [subprocess.Popen(
      [sys.executable, TINY, str(tmp_path), "--coordinator", f"127.0.0.1:{port}",
       "--num_processes", "2", "--process_id", str(i)],
      env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  _assert_close(one_device_run, _params(tmp_path))


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
  proc = _run(tmp_path, 4, "--batch_size", "6")
  assert proc.returncode != 0
  assert "not divisible by the 4 devices" in proc.stderr
  assert "--config.input.batch_size" in proc.stderr
