"""A run that is killed, interrupted, damaged or doubled up never loses work:
rerunning the same command finishes and equals an uninterrupted run.

Kill points are driven deterministically: trainer hooks after a step, a
Checkpointer.save that dies right after writing a given checkpoint, SIGINT
sent to the process from a hook, files truncated or deleted on disk.
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from eo_jax.errors import CheckpointError, TrainingInterrupted, WorkdirBusyError
from eo_jax.train import checkpoint as checkpoint_lib
from eo_jax.train import throughput
from eo_jax.train import trainer
from eo_jax.train.workdir_lock import WorkdirLock
from tiny import Crash, crash_at, final_params, tiny_config

STEPS = 12


def _config(**overrides):
  values = {"train.steps": STEPS, "train.eval_every_steps": 2,
            "train.checkpoint_every_steps": 4, "train.log_every_steps": 3,
            "train.early_stopping.metric": "val/loss",
            "train.early_stopping.patience": 100}
  values.update(overrides)
  return tiny_config(**values)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run every recovery must reproduce."""
  workdir = tmp_path_factory.mktemp("straight")
  results = trainer.train_and_evaluate(_config(), str(workdir))
  return workdir, results


def _history(workdir):
  checkpointer = checkpoint_lib.Checkpointer(str(workdir / "checkpoints"))
  history = checkpointer.restore_meta(checkpointer.latest_step())["history"]["history"]
  checkpointer.close()
  # Wall-clock rates differ between any two runs.
  return {k: v for k, v in history.items() if k not in throughput.TIMING_METRICS}


def _assert_same_run(workdir, straight):
  reference, results = straight
  a, b = final_params(str(reference)), final_params(str(workdir))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  saved = json.loads((workdir / "results.json").read_text())
  assert saved == json.loads((reference / "results.json").read_text())
  assert saved["test"] == results["test"]
  assert _history(workdir) == _history(reference)


class _DieAfterSaving:
  """Replaces Checkpointer.save: dies right after `directory`/`step` is written."""

  def __init__(self, monkeypatch, directory: str, step: int):
    original = checkpoint_lib.Checkpointer.save
    self.fired = False

    def save(checkpointer, at_step, *args, **kwargs):
      original(checkpointer, at_step, *args, **kwargs)
      if (not self.fired and at_step == step
          and os.path.basename(checkpointer.directory) == directory):
        self.fired = True
        raise Crash(f"killed after writing {directory}/{at_step}")

    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", save)


@pytest.mark.parametrize("directory,step", [
    ("checkpoints", 4),        # the regular checkpoint of a new best, best not yet saved
    ("checkpoints_best", 2),   # a best state newer than any regular checkpoint
    ("checkpoints_best", 6),   # the same after a first regular checkpoint
])
def test_a_kill_between_checkpoint_writes_resumes_to_the_same_run(
    tmp_path, monkeypatch, straight, directory, step):
  killer = _DieAfterSaving(monkeypatch, directory, step)
  with pytest.raises(Crash):
    trainer.train_and_evaluate(_config(), str(tmp_path))
  assert killer.fired
  monkeypatch.undo()
  trainer.train_and_evaluate(_config(), str(tmp_path))
  _assert_same_run(tmp_path, straight)


def test_curves_after_a_crash_equal_an_uninterrupted_runs(tmp_path, straight):
  # Step 7: the checkpoint of step 4 holds step 4's metrics, not yet logged
  # (logs at 3 and 6); the resumed run's log at step 6 must average 4-6.
  with pytest.raises(Crash):
    trainer.train_and_evaluate(_config(), str(tmp_path), hooks=[crash_at(7)])
  trainer.train_and_evaluate(_config(), str(tmp_path))
  _assert_same_run(tmp_path, straight)
  # TensorBoard: the steps the crashed run logged after its checkpoint (5, 6)
  # are not written again by the resumed one.
  written = _tensorboard_points(tmp_path)
  assert len(written) == len(set(written)), sorted(
      p for p in set(written) if written.count(p) > 1)
  assert set(written) == set(_tensorboard_points(straight[0]))


def _tensorboard_points(workdir):
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  points = []
  for name in os.listdir(workdir):
    if name.startswith("events.out.tfevents"):
      for event in event_file_loader.EventFileLoader(str(workdir / name)).Load():
        points += [(v.tag, event.step) for v in event.summary.value]
  return points


def _state_chunk(step_dir):
  chunks = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return max((os.path.join(chunks, f) for f in os.listdir(chunks)),
             key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(max(os.path.getsize(path) // 3, 1))


DAMAGE = {
    "truncated_state_file": lambda d: _truncate(_state_chunk(d)),
    "deleted_meta": lambda d: os.remove(os.path.join(d, "meta", "metadata")),
    "truncated_data": lambda d: _truncate(os.path.join(d, "data", "metadata")),
    "truncated_state_metadata": lambda d: _truncate(os.path.join(d, "state", "_METADATA")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_used(
    tmp_path, straight, damage, caplog):
  with pytest.raises(Crash):
    trainer.train_and_evaluate(_config(), str(tmp_path), hooks=[crash_at(9)])
  newest = tmp_path / "checkpoints" / "8"
  DAMAGE[damage](str(newest))
  trainer.train_and_evaluate(_config(), str(tmp_path))
  _assert_same_run(tmp_path, straight)
  aside = os.listdir(tmp_path / "checkpoints_unreadable")
  assert len(aside) == 1 and aside[0].startswith("8-")   # kept, not deleted
  warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(warnings) == 1 and "Checkpoint 8 is unreadable" in warnings[0]


def test_when_no_checkpoint_is_readable_the_error_names_the_folder(tmp_path):
  with pytest.raises(Crash):
    trainer.train_and_evaluate(_config(), str(tmp_path), hooks=[crash_at(9)])
  for step in ("4", "8"):
    os.remove(tmp_path / "checkpoints" / step / "meta" / "metadata")
  with pytest.raises(CheckpointError, match="checkpoints_unreadable") as error:
    trainer.train_and_evaluate(_config(), str(tmp_path))
  assert str(tmp_path / "checkpoints") in error.value.message()
  assert sorted(s.split("-")[0] for s in os.listdir(tmp_path / "checkpoints_unreadable")) == ["4", "8"]


def test_resuming_with_another_model_names_the_parameter_and_the_config_keys(tmp_path):
  trainer.train_and_evaluate(_config(**{"train.steps": 4}), str(tmp_path))
  with pytest.raises(CheckpointError) as error:
    trainer.train_and_evaluate(_config(**{"model.width": 16}), str(tmp_path))
  text = error.value.message()
  assert "params/stage_1_block_0/bn1/bias has shape (8,) in the checkpoint, (16,) here" in text
  assert "model.width: 8 -> 16" in text
  assert "train.steps: 4 -> 12" in text


def test_a_second_run_on_a_busy_workdir_stops_at_once(tmp_path):
  with WorkdirLock(str(tmp_path)):
    with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}"):
      trainer.train_and_evaluate(_config(), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()  # it touched nothing


def test_the_lock_dies_with_its_process(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time; from eo_jax.train.workdir_lock import WorkdirLock; "
       f"lock = WorkdirLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
       "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "locked"
  with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
    WorkdirLock(str(tmp_path)).acquire()
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  WorkdirLock(str(tmp_path)).acquire().release()  # free again


def _sigint_at(step_to_stop):
  def hook(step, state):
    del state
    if step == step_to_stop:
      os.kill(os.getpid(), signal.SIGINT)
  return hook


# Step 4 is also a periodic checkpoint step: Ctrl-C right after its save
# must not try to write step 4 a second time.
@pytest.mark.parametrize("stop_at", [5, 4])
def test_ctrl_c_saves_a_checkpoint_and_the_rerun_finishes_the_same(tmp_path, straight,
                                                                   stop_at):
  with pytest.raises(TrainingInterrupted, match="Run the same command to resume"):
    trainer.train_and_evaluate(_config(), str(tmp_path), hooks=[_sigint_at(stop_at)])
  assert str(stop_at) in os.listdir(tmp_path / "checkpoints")
  trainer.train_and_evaluate(_config(), str(tmp_path))
  _assert_same_run(tmp_path, straight)


def test_nan_before_any_checkpoint_does_not_promise_one(tmp_path):
  config = _config(**{"optim.name": "sgd", "optim.lr": 1e12, "optim.momentum": 0.0,
                      "optim.schedule": "constant", "train.log_every_steps": 1})
  with pytest.raises(trainer.NonFiniteLossError, match="no checkpoint had been written"):
    trainer.train_and_evaluate(config, str(tmp_path))
