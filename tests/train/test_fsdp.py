"""config.sharding='fsdp': the train state split over the devices.

The rule (`sharding.partition_spec`) is checked by hand on shapes. The
runs need several devices, so they happen in one subprocess with 4 forced
CPU devices (this file run as a script, writing what it saw to a folder):

* the tiny supervised run trained 'replicated' and 'fsdp' ends with the same
  parameters, BatchNorm statistics and logged metrics (train loss, gradient
  norm, validation metrics, the padded sharded evaluation included), and
  under 'fsdp' its arrays really are split, the optimiser state like its
  parameters;
* a DINO step (student, optimiser and EMA teacher in the split state) gives
  the 'replicated' step's state and metrics;
* a run stopped under one layout and resumed under the other (the
  checkpoint restored into the other shardings) ends as the uninterrupted
  run of the second layout.

The tiny models' arrays are all below `MIN_SHARDED_SIZE` (2**14 elements);
the script lowers it to 16 so that nearly every array is split: kernels,
16-wide biases and norms, BatchNorm statistics, Adam's moments.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from eo_jax import config as config_lib
from eo_jax import sharding
from eo_jax.config import base_config
from eo_jax.data.datasets import build_dataset
from eo_jax.errors import ConfigValueError
from eo_jax.objectives import OBJECTIVES
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer
from eo_jax.train.restore import restore_run
from eo_jax.train.state import create_train_state
from eo_jax.train.steps import make_train_step
from tiny import checkpoint_variables, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
STEPS, RESUME_FROM = 6, 3  # checkpoints (and evaluations) at steps 3 and 6
LOW_THRESHOLD = 16
# Logged values that are timings, not results.
TIMINGS = ("steps_per_second", "images_per_second", "tflops_per_second", "mfu")


# ------------------------------------------------------------ The rule
@pytest.mark.parametrize("shape, devices, expected", [
    ((3, 3, 64, 128), 4, P(None, None, None, "data")),  # the largest divisible
    ((1024, 256), 4, P("data")),                         # ... wherever it is
    ((512, 512), 4, P(None, "data")),                    # a tie: the last
    ((4096, 10), 4, P("data")),                          # 10 does not divide
    ((10, 4096), 8, P(None, "data")),
    ((100, 1000, 6), 4, P(None, "data")),
    ((6, 8192, 9), 3, P(None, None, "data")),            # 3 divides 6 and 9 only
    ((7, 9999), 4, P()),                                 # nothing divides
    ((2 ** 14,), 4, P("data")),                          # at the threshold
    ((2 ** 14 - 4,), 4, P()),                            # just below it
    ((128,), 4, P()),
    ((), 4, P()),                                        # the step
    ((1024, 1024), 1, P()),                              # one device
])
def test_partition_spec_by_hand(shape, devices, expected):
  assert sharding.MIN_SHARDED_SIZE == 2 ** 14
  assert sharding.partition_spec(shape, devices) == expected


def test_partition_spec_threshold_is_a_parameter():
  assert sharding.partition_spec((8, 4), 4) == P()
  assert sharding.partition_spec((8, 4), 4, min_size=32) == P("data")
  assert sharding.partition_spec((8, 4), 4, min_size=33) == P()


def test_state_shardings_on_one_device_replicate_everything():
  mesh = sharding.make_mesh()
  tree = {"kernel": np.zeros((256, 256), np.float32), "step": 0}
  for mode in sharding.MODES:
    out = sharding.state_shardings(tree, mesh, mode)
    assert set(out) == set(tree)
    assert all(s.spec == P() and s.mesh == mesh for s in out.values())


def test_the_config_key_and_its_errors(tmp_path, monkeypatch):
  assert base_config().sharding == "replicated"
  assert sharding.config_mode(tiny_config(sharding="fsdp")) == "fsdp"
  # A config saved before the key existed (an old checkpoint's).
  old = base_config()
  del old["sharding"]
  assert sharding.config_mode(old) == "replicated"
  with pytest.raises(ConfigValueError, match=r"'fdsp'.*\['replicated', 'fsdp'\]"):
    sharding.state_shardings({}, sharding.make_mesh(), "fdsp")
  # The trainer refuses it before it writes logs or reads any data.
  def too_late(*args, **kwargs):
    raise AssertionError("the run started before its config was checked")
  monkeypatch.setattr(trainer, "make_writer", too_late)
  monkeypatch.setattr(trainer, "build_dataset", too_late)
  with pytest.raises(ConfigValueError, match="config.sharding='fdsp'"):
    trainer.train_and_evaluate(tiny_config(sharding="fdsp"), str(tmp_path))


# ---------------------------------------------------- Runs on 4 devices
def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(path): x
          for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _flat(tree) -> dict[str, np.ndarray]:
  return {k: np.asarray(x) for k, x in _leaves(tree).items()}


def _specs(tree) -> dict[str, str]:
  return {k: str(tuple(x.sharding.spec)) for k, x in _leaves(tree).items()}


def _train(out, name, mode, workdir):
  """A tiny supervised run; saves its final variables, history and layout."""
  config = tiny_config(**{"sharding": mode, "train.steps": STEPS,
                          "train.eval_every_steps": RESUME_FROM, "train.log_every_steps": 1,
                          "data.num_val": 10, "data.num_test": 6})
  seen = {}

  def record(step, state):
    seen.setdefault("first_step", step)
    seen["specs"] = _specs(state)  # the layout the jitted step returned

  trainer.train_and_evaluate(config, workdir, hooks=[record])
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  meta = checkpointer.restore_meta()
  checkpointer.close()
  params, model_state = checkpoint_variables(workdir)
  np.savez(os.path.join(out, f"{name}.npz"),
           **{f"params{k}": v for k, v in _flat(params).items()},
           **{f"model_state{k}": v for k, v in _flat(model_state).items()})
  history = {k: v for k, v in meta["history"]["history"].items()
             if not k.endswith(TIMINGS)}
  unreadable = os.path.isdir(os.path.join(workdir, "checkpoints_unreadable"))
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump({"history": history, "unreadable": unreadable, **seen}, f)


def _restore(out):
  """`restore_run` of the 'fsdp' run: its layout, evaluation and gathers."""
  run = restore_run(os.path.join(out, "fsdp"))
  val = run.evaluate("val")
  gathered = _leaves(sharding.gather_sharded(run.state.params))
  whole = _flat(run.state.params)
  kinds = {k: type(v).__name__ for k, v in gathered.items()}
  same = all(np.array_equal(np.asarray(v), whole[k]) for k, v in gathered.items())
  with open(os.path.join(out, "restored.json"), "w") as f:
    json.dump({"specs": _specs(run.state), "val": {
        k: float(v) for k, v in val.items() if np.ndim(v) == 0},
               "gathered_kinds": kinds, "gathered_equal": same}, f)


def _dino(out):
  """Two DINO steps under each layout from the same state and batches."""
  mesh = sharding.make_mesh()
  results = {}
  for mode in sharding.MODES:
    config = config_lib.load_config(
        os.path.join(REPO, "configs", "dino_whu.py:runlocal=True"), lock=False)
    config.sharding = mode
    # One block and no iBOT: less to compile, and still the student, its
    # optimiser state, the EMA teacher and (softmax centring) the centre.
    # KoLeo's gradient, through -log of the ~e^-8 distances between the
    # near-equal embeddings of an untrained network, turns float rounding
    # into differences of 1e-2 under any change of reduction order.
    config.model.depth = 1
    config.dino.ibot_weight = 0.0
    config.dino.koleo_weight = 0.0
    config.dino.centering = "softmax"
    info = build_dataset(config.data).info
    objective = OBJECTIVES.get("dino")(config, info, run_length=(10, 10))
    s = objective.settings
    rng = np.random.default_rng(0)  # the same batches under both layouts
    crops = lambda size, n: rng.normal(size=(8, n, size, size, info.num_bands))
    batches = [sharding.to_global(
        {"global_crops": crops(s["global_size"], 2).astype(np.float32),
         "local_crops": crops(s["local_size"], s["num_local"]).astype(np.float32)},
        mesh) for _ in range(2)]
    state, tx, schedule = create_train_state(config, objective, info, batches[0],
                                             mesh, steps_per_epoch=10, total_steps=10)
    step_fn = make_train_step(objective, tx, schedule, config.seed, mesh,
                              sharding.state_shardings(state, mesh, mode))
    metrics = []
    for batch in batches:
      state, (m, _) = step_fn(state, batch)
      metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    results[mode] = {"specs": _specs(state), "metrics": metrics}
    np.savez(os.path.join(out, f"dino_{mode}.npz"),
             **_flat({"params": state.params, "extra": state.extra,
                      "opt_state": state.opt_state}))
  with open(os.path.join(out, "dino.json"), "w") as f:
    json.dump(results, f)


class _DroppedScalars:
  """A metric writer that keeps nothing: TensorBoard's writer would import
  TensorFlow (~10 s) into this process for files no test reads."""

  def write_scalars(self, step, scalars):
    del step, scalars

  def flush(self):
    pass


def main(out: str) -> None:
  assert jax.device_count() == 4, jax.devices()
  sharding.MIN_SHARDED_SIZE = LOW_THRESHOLD
  trainer.make_writer = lambda workdir, is_main: _DroppedScalars()
  timings = {}
  for mode in sharding.MODES:
    start = time.perf_counter()
    _train(out, mode, mode, os.path.join(out, mode))
    timings[mode] = time.perf_counter() - start
  _restore(out)
  # A run stopped after its first checkpoint (a copy of the straight run
  # without the later one: what a crash leaves), resumed under the other
  # layout.
  for first, then in (("fsdp", "replicated"), ("replicated", "fsdp")):
    start = time.perf_counter()
    workdir = os.path.join(out, f"{first}_then_{then}")
    shutil.copytree(os.path.join(out, first), workdir)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
    assert checkpointer.all_steps() == [RESUME_FROM, STEPS], checkpointer.all_steps()
    checkpointer.delete(STEPS)
    checkpointer.close()
    _train(out, f"{first}_then_{then}", then, workdir)
    timings[f"{first}_then_{then}"] = time.perf_counter() - start
  start = time.perf_counter()
  _dino(out)
  timings["dino"] = time.perf_counter() - start
  timings["tensorflow_imported"] = "tensorflow" in sys.modules
  with open(os.path.join(out, "timings.json"), "w") as f:
    json.dump(timings, f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("fsdp")
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.dirname(HERE),
                                       env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(out)],
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return out


def _load(out, name):
  with np.load(os.path.join(out, f"{name}.npz")) as f:
    arrays = {k: f[k] for k in f.files}
  info = {}
  if os.path.exists(os.path.join(out, f"{name}.json")):
    with open(os.path.join(out, f"{name}.json")) as f:
      info = json.load(f)
  return arrays, info


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


def _assert_same_history(a, b):
  assert a.keys() == b.keys() and "train/loss" in a and "val/accuracy" in a
  for name in a:
    steps_a, values_a = zip(*a[name])
    steps_b, values_b = zip(*b[name])
    assert steps_a == steps_b, name
    np.testing.assert_allclose(values_a, values_b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_fsdp_trains_the_replicated_run_with_split_arrays(runs):
  rep, rep_info = _load(runs, "replicated")
  fsdp, fsdp_info = _load(runs, "fsdp")
  _assert_close(rep, fsdp)  # parameters and BatchNorm statistics
  _assert_same_history(rep_info["history"], fsdp_info["history"])
  assert len(rep_info["history"]["train/loss"]) == STEPS
  specs = fsdp_info["specs"]
  split = "(None, None, None, 'data')"
  expected = {
      # 3x3 kernels along their output channels: the largest dimension
      # (3, 3, 8, 16), or the last of a tie (3, 3, 8, 8) ...
      ".params['stage_2_block_0']['conv1']['kernel']": split,
      ".params['stage_1_block_0']['conv1']['kernel']": split,
      # ... the (16, 3) head along its 16 inputs, as 3 does not divide;
      ".params['head']['fc']['kernel']": "('data',)",
      # 16-wide norms and BatchNorm statistics; 8-wide ones are too small;
      ".params['stage_2_block_0']['bn1']['scale']": "('data',)",
      ".model_state['batch_stats']['stage_2_block_0']['bn1']['var']": "('data',)",
      ".params['stem_bn']['scale']": "()",
      ".params['head']['fc']['bias']": "()",  # 3 divides by nothing
      ".step": "()",
  }
  assert {k: specs[k] for k in expected} == expected
  # Adam's two moments are laid out as their parameters, whatever the axis.
  for name, spec in specs.items():
    if name.startswith(".params"):
      moments = [m for m in specs if m.startswith(".opt_state")
                 and m.endswith(name[len(".params"):])]
      assert len(moments) == 2 and {specs[m] for m in moments} == {spec}, name
  assert set(rep_info["specs"].values()) == {"()"}  # 'replicated' splits nothing


def test_restore_run_keeps_the_layout_and_evaluates_the_same(runs):
  with open(os.path.join(runs, "restored.json")) as f:
    restored = json.load(f)
  _, trained = _load(runs, "fsdp")
  assert restored["specs"] == trained["specs"]
  with open(os.path.join(runs, "fsdp", "results.json")) as f:
    results = json.load(f)
  assert results["val"].keys() <= restored["val"].keys()
  for k, v in results["val"].items():
    np.testing.assert_allclose(restored["val"][k], v, rtol=1e-6, err_msg=k)
  # Split arrays come back whole as numpy, replicated ones untouched.
  assert restored["gathered_equal"]
  kinds = restored["gathered_kinds"]
  assert kinds["['head']['fc']['kernel']"] == "ndarray"  # split
  assert kinds["['head']['fc']['bias']"] == "ArrayImpl"  # replicated


@pytest.mark.parametrize("first, then", [("fsdp", "replicated"),
                                         ("replicated", "fsdp")])
def test_a_checkpoint_resumes_under_the_other_layout(runs, first, then):
  resumed, info = _load(runs, f"{first}_then_{then}")
  straight, straight_info = _load(runs, then)
  assert info["first_step"] == RESUME_FROM + 1  # resumed from its checkpoint
  assert not info["unreadable"]  # it was read, not moved aside
  assert info["specs"] == straight_info["specs"]  # the layout of the resumed run
  _assert_close(straight, resumed)
  _assert_same_history(straight_info["history"], info["history"])


def test_dino_state_and_teacher_split_and_train_as_replicated(runs):
  with open(os.path.join(runs, "dino.json")) as f:
    dino = json.load(f)
  rep, _ = _load(runs, "dino_replicated")
  fsdp, _ = _load(runs, "dino_fsdp")
  _assert_close(rep, fsdp)  # student, Adam's moments, teacher, centre
  for a, b in zip(dino["replicated"]["metrics"], dino["fsdp"]["metrics"]):
    assert a.keys() == b.keys() and "dino_loss" in a and "grad_norm" in a
    # KoLeo's value (logged, weight 0 here) moves by ~1% (see `_dino`).
    np.testing.assert_allclose(a.pop("koleo_loss"), b.pop("koleo_loss"), rtol=0.05)
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  specs = dino["fsdp"]["specs"]
  teacher = {k: v for k, v in specs.items() if k.startswith(".extra['teacher']")}
  student = {k: v for k, v in specs.items() if k.startswith(".params['student']")}
  assert teacher and "data" in "".join(teacher.values())
  # The teacher is laid out as the student it follows.
  for k, v in student.items():
    assert teacher[k.replace(".params['student']", ".extra['teacher']")] == v, k
  assert all("data" not in v for v in dino["replicated"]["specs"].values())


if __name__ == "__main__":
  main(sys.argv[1])
