"""eo_jax: JAX/Flax deep learning for Earth-observation imagery.

`eo_jax.run(config, workdir)` trains and evaluates the experiment described
by an ml-collections config (see configs/ and eo_jax/config.py);
`eo_jax.restore_run(workdir)` picks a finished or interrupted run up again
(predict, embed, evaluate; see eo_jax/train/restore.py).
"""
from __future__ import annotations

from typing import Any

from eo_jax import backend as _backend

__version__ = "0.1.0"

# Before JAX reads its flags: XLA's own CPU convolutions (eo_jax/backend.py).
_backend.configure_xla_cpu()


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints `config` in `workdir` (resuming)."""
  from eo_jax.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  return train_and_evaluate(config, workdir)


def restore_run(workdir: str, step: int | None = None, *, best: bool = True):
  """The run in `workdir` as a `Run` (see eo_jax/train/restore.py)."""
  from eo_jax.train.restore import restore_run as restore  # pylint: disable=g-import-not-at-top
  return restore(workdir, step, best=best)


def build_run(config):
  """A `Run` with `config`'s step-0 state (see eo_jax/train/restore.py)."""
  from eo_jax.train.restore import build_run as build  # pylint: disable=g-import-not-at-top
  return build(config)
