"""main.py as a user runs it: config errors, and kill -9 followed by a rerun."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

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


# ------------------------------------------- what a user sees on errors


def _one_error_line(proc, *fragments):
  """Exit status 1, no traceback, and stderr ends with one `error: ...` line
  naming the problem (a data report may list its examples below it)."""
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  start = max(i for i, line in enumerate(lines) if line.startswith("error: "))
  assert all(line.startswith("  ") for line in lines[start + 1:]), lines[start:]
  text = "\n".join(lines[start:])
  for fragment in fragments:
    assert fragment in text, (fragment, text)
  return text


def test_user_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path):
  proc = _run(_cmd(tmp_path, "--config.optim.lrr=0.1"))
  _one_error_line(proc, "optim.lrr", "optim.lr")  # did you mean
  verbose = _run(_cmd(tmp_path, "--config.optim.lrr=0.1", "--verbose"))
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
  _one_error_line(_run(_cmd(tmp_path, config="configs/quickstart.py:runlcal=True")),
                  "runlcal")


def test_a_dataset_key_and_a_path_can_be_set_from_the_command_line(tmp_path):
  # 'patch_size' is not in the quickstart config: it reaches the dataset
  # factory, whose check of the value (odd sizes only) answers. That a valid
  # one loads is checked in-process (tests/test_overrides.py); main.py runs
  # with overrides in the kill -9 test. A training run here would only add
  # a compilation.
  proc = _run(_cmd(tmp_path / "a", "--config.data.patch_size=4"))
  assert proc.returncode != 0
  assert "config.data.patch_size must be a positive odd number" in proc.stderr
  assert "got 4" in proc.stderr
  assert not (tmp_path / "a" / "checkpoints").exists()
  # The path the missing-data error asks for is accepted (and checked).
  proc = _run(_cmd(tmp_path / "b", f"--config.data.path={tmp_path / 'nowhere'}",
                   config="configs/eurosat.py:runlocal=True"))
  _one_error_line(proc, "nowhere", "config.data.path")


def test_a_batch_that_does_not_divide_over_the_devices_is_one_line(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  proc = subprocess.run(_cmd(tmp_path, "--config.input.batch_size=6"), cwd=REPO,
                        capture_output=True, text=True, timeout=600, env=env)
  _one_error_line(proc, "not divisible by the 4 devices", "--config.input.batch_size")


def test_help_lists_the_configs():
  proc = _run([sys.executable, "main.py", "--help"])
  for name in ("configs/quickstart.py", "configs/dino_whu.py", "configs/mae_s2.py"):
    assert name in proc.stdout


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path):
  longer = ["--config.train.steps=400", "--config.train.checkpoint_every_steps=50",
            "--config.train.eval_every_steps=200"]
  proc = subprocess.Popen(_cmd(tmp_path, *longer), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not _finished_steps(tmp_path):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  assert "Run the same command to resume" in last, last
  step = int(last.split("Interrupted at step ")[1].split()[0])
  assert step in _finished_steps(tmp_path) and step < 400  # saved where it stopped


def test_a_corrupt_data_file_stops_the_run_before_training(tmp_path):
  root = tmp_path / "EuroSAT_MS"
  rng = np.random.default_rng(0)
  classes = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
             "Pasture", "PermanentCrop", "Residential", "River", "SeaLake")
  for cls in classes:
    (root / cls).mkdir(parents=True)
    for n in range(1, 7):
      tifffile.imwrite(root / cls / f"{cls}_{n}.tif",
                       rng.integers(0, 3000, (16, 16, 13)).astype(np.uint16))
  bad = root / "Forest" / "Forest_3.tif"
  bad.write_bytes(bad.read_bytes()[:300])
  proc = _run(_cmd(tmp_path / "run", config=f"configs/eurosat.py:runlocal=True,path={root}"))
  _one_error_line(proc, "Forest_3.tif", "re-download")
  assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
