"""eo_jax: JAX/Flax deep learning for Earth-observation imagery.

`eo_jax.run(config, workdir)` trains and evaluates the experiment described
by an ml-collections config (see configs/ and eo_jax/config.py).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def run(config, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and checkpoints `config` in `workdir` (resuming)."""
  from eo_jax.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  return train_and_evaluate(config, workdir)
