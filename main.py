"""Trains and evaluates one eo_jax experiment.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
  python main.py --config=configs/eurosat.py:variant=all --config.input.batch_size=128

Rerunning the same command resumes from the newest checkpoint in --workdir.
Multi-host: start one process per host with --coordinator_address,
--num_processes and --process_id (or let jax.distributed auto-detect a
SLURM / TPU cluster with --distributed).
"""
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

import eo_jax
from eo_jax.data.datasets.base import MissingDataError
from eo_jax.train.trainer import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, optionally with ':key=value,...'.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and plots go (default: "
    "runs/<config file name>). An existing run there is resumed.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.mark_flags_as_required(["config"])


class _QuietLibraries:
  """Drops INFO chatter from Orbax and JAX internals; warnings still pass."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/jax/_src/", "/absl/")
    return record.levelno > 20 or not any(p in record.pathname for p in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  config_path = flags.FLAGS["config"].config_filename.split(":")[0]
  workdir = _WORKDIR.value or os.path.join(
      "runs", os.path.splitext(os.path.basename(config_path))[0])
  logging.info("Process %d/%d, %d local / %d global devices, workdir %s.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), workdir)
  try:
    eo_jax.run(_CONFIG.value, workdir)
  except (MissingDataError, NonFiniteLossError) as e:
    # The message says what is wrong and what to do; a traceback through
    # the trainer would only bury it.
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
