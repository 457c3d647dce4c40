"""A tiny experiment (synthetic 4-band data, 2-stage ResNet) used by many tests.

Also a script, so that tests can run it in other processes (several CPU
devices, several jax.distributed processes, kill -9):

  python tests/tiny.py WORKDIR [--steps N] [--coordinator ADDR --num_processes P --process_id I]

It writes the final parameters to WORKDIR/params.npz.
"""
from __future__ import annotations

import argparse
import os

import ml_collections
import numpy as np

from eo_jax.config import base_config, set_dotted


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  c = base_config()
  c.data = ml_collections.ConfigDict(dict(
      name="synthetic", num_bands=4, num_classes=3, image_size=16, num_train=64,
      num_val=20, num_test=12, noise=0.3))
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", stage_sizes=(1, 1), block="basic", width=8, low_res_stem=True))
  c.input.batch_size = 8
  c.input.augment.flips = True
  c.input.augment.rot90 = True
  c.optim.name = "adam"
  c.optim.lr = 3e-3
  c.optim.schedule = "cosine"
  c.train.epochs = 0
  c.train.steps = 12
  c.train.log_every_steps = 4
  c.train.eval_every_steps = 4
  c.train.progress_bar = False
  for key, value in overrides.items():
    set_dotted(c, key, value)
  c.lock()
  return c


class Crash(Exception):
  """A simulated crash raised from a trainer hook."""


def crash_at(step_to_crash: int):
  """A trainer hook that raises `Crash` once training reaches `step_to_crash`."""
  def hook(step, state):
    del state
    if step == step_to_crash:
      raise Crash(f"simulated crash at step {step}")
  return hook


def flat_params(state_params) -> dict[str, np.ndarray]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(state_params)
  return {"/".join(k): np.asarray(v) for k, v in flat.items()}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from eo_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"train.steps": args.steps, "input.batch_size": args.batch_size})
  results = trainer.train_and_evaluate(config, args.workdir)
  params = final_params(args.workdir)  # every process joins Orbax's restore
  if jax.process_index() == 0:
    np.savez(os.path.join(args.workdir, "params.npz"), **params)
    print("RESULTS", results)


def final_params(workdir: str) -> dict[str, np.ndarray]:
  """The parameters of the newest checkpoint in `workdir`, flattened."""
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  params, _, _ = checkpointer.restore_params()
  checkpointer.close()
  return flat_params(params)


if __name__ == "__main__":
  main()
