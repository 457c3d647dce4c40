"""main.py as a user runs it: config errors, and kill -9 followed by a rerun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "configs/quickstart.py:runlocal=True"


def _cmd(workdir, *overrides, config=QUICK):
  return [sys.executable, "main.py", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def _run(cmd):
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_unknown_override_key_fails_loudly(tmp_path):
  proc = _run(_cmd(tmp_path, "--config.optim.lrr=0.1"))
  assert proc.returncode != 0
  assert "lrr" in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_config_argument_fails_loudly(tmp_path):
  proc = _run(_cmd(tmp_path, config="configs/quickstart.py:runlcal=True"))
  assert proc.returncode != 0
  assert "Unknown config argument 'runlcal'" in proc.stderr


def test_unknown_dataset_field_fails_loudly(tmp_path):
  proc = _run(_cmd(tmp_path, "--config.data.patch_sise=5"))
  assert proc.returncode != 0
  assert "patch_sise" in proc.stderr


def test_missing_dataset_is_one_clear_error(tmp_path):
  # The brief's first command, on a machine without WHU-OHS: the message
  # names the dataset, where to get it and the key to set; no traceback.
  proc = _run(_cmd(tmp_path, config="configs/dino_whu.py"))
  assert proc.returncode == 1
  assert "error: WHU-OHS needs a local copy and config.data.path is not set" in (
      proc.stderr)
  assert "irsip.whu.edu.cn" in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "checkpoints").exists()


def _finished_steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt):
    return []
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def test_kill_9_then_rerun_finishes_like_an_uninterrupted_run(tmp_path):
  longer = ["--config.train.steps=30", "--config.train.checkpoint_every_steps=3",
            "--config.train.eval_every_steps=15"]
  reference = _run(_cmd(tmp_path / "ref", *longer))
  assert reference.returncode == 0, reference.stderr[-3000:]

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(killed, *longer), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not _finished_steps(killed):
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps = _finished_steps(killed)
  assert steps and steps[-1] < 30, steps  # it really died mid-run
  resumed = _run(_cmd(killed, *longer))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {steps[-1]}" in resumed.stderr
  want = json.loads((tmp_path / "ref" / "results.json").read_text())
  got = json.loads((killed / "results.json").read_text())
  assert got["test"] == pytest.approx(want["test"], rel=1e-6)
  assert got["val"] == pytest.approx(want["val"], rel=1e-6)
