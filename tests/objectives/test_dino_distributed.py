"""DINO's batch statistics are over the GLOBAL batch: 4 devices reproduce 1.

Sinkhorn-Knopp's sums, the softmax centre's batch mean, KoLeo's nearest
neighbours and the loss means are written as plain array code. This test
runs them, and a whole DINO loss and gradient, under `jax.jit` with the
batch sharded over 4 CPU devices and parameters replicated (the trainer's
layout), and compares with the same computation on one device. Code that
reduced per device (e.g. inside `shard_map` without a `psum`) would give
other values: each device would see a quarter of the batch.

Run as a script (in a subprocess with 4 forced host devices), it prints
the largest differences as JSON.
"""
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _max_diff(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                         - np.asarray(y, np.float64)))),
                       a, b)
  return max(jax.tree.leaves(diffs))


def _max_abs(a):
  import jax  # pylint: disable=g-import-not-at-top
  return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def main() -> None:
  from eo_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from eo_jax.data.datasets import build_dataset  # pylint: disable=g-import-not-at-top
  from eo_jax.objectives import OBJECTIVES, centering, koleo  # pylint: disable=g-import-not-at-top
  from eo_jax.objectives.base import TrainState  # pylint: disable=g-import-not-at-top
  from eo_jax import sharding  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 4, jax.devices()
  mesh = sharding.make_mesh()
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  rng = np.random.default_rng(0)
  out = {}

  # The building blocks, rows sharded over the devices.
  logits = rng.uniform(-1, 1, (16, 12)).astype(np.float32)
  weights = (rng.uniform(size=16) < 0.6).astype(np.float32)
  features = rng.normal(size=(16, 8)).astype(np.float32)
  fns = {
      "sinkhorn": lambda x, w, f: centering.sinkhorn_knopp(x, 0.05, 3, w),
      "center": lambda x, w, f: centering.update_center(
          jnp.zeros(12), x, 0.9, w),
      "koleo": lambda x, w, f: koleo.koleo_loss(f),
  }
  for name, fn in fns.items():
    one = jax.jit(fn)(logits, weights, features)
    four = jax.jit(fn, in_shardings=(data, data, data), out_shardings=repl)(
        logits, weights, features)
    out[name] = _max_diff(one, four)

  # A whole DINO loss and its gradient (Sinkhorn-Knopp, iBOT, KoLeo).
  config = config_lib.load_config(
      os.path.join(REPO, "configs", "dino_whu.py:runlocal=True"))
  objective = OBJECTIVES.get("dino")(config, build_dataset(config.data).info)
  batch = {"global_crops": rng.normal(size=(8, 2, 16, 16, 32)).astype(np.float32),
           "local_crops": rng.normal(size=(8, 2, 8, 8, 32)).astype(np.float32)}
  v = objective.init(jax.random.key(0), batch)
  state = TrainState(step=jnp.asarray(5, jnp.int32), params=v.params,
                     model_state=v.model_state, opt_state=None, extra=v.extra)
  grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
  args = (v.params, state, batch, jax.random.key(1))
  (loss1, aux1), grads1 = jax.jit(grad_fn)(*args)
  (loss4, aux4), grads4 = jax.jit(
      grad_fn, in_shardings=(repl, repl, data, repl),
      out_shardings=repl)(*args)
  out["loss"] = abs(float(loss1) - float(loss4))
  out["metrics"] = _max_diff(aux1.metrics, aux4.metrics)
  out["grads"] = _max_diff(grads1, grads4)
  out["grad_scale"] = _max_abs(grads1)
  out["loss_value"] = float(loss1)
  print("RESULT " + json.dumps(out))


def test_four_devices_compute_the_one_device_loss_and_gradients():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  r = json.loads(line[len("RESULT "):])
  assert r["sinkhorn"] < 1e-6 and r["center"] < 1e-6 and r["koleo"] < 1e-5, r
  assert np.isfinite(r["loss_value"]) and r["loss"] < 1e-4, r
  assert r["metrics"] < 1e-4, r
  assert r["grad_scale"] > 1e-3 and r["grads"] < 1e-4 * r["grad_scale"], r


if __name__ == "__main__":
  main()
