"""Trains and evaluates one eo_jax experiment.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
  python main.py --config=configs/eurosat.py:variant=all --config.input.batch_size=128

Rerunning the same command resumes from the newest checkpoint in --workdir.
Ctrl-C saves a checkpoint and stops (exit status 130); a mistake in the
config or the data ends with one `error: ...` line (exit status 1; add
--verbose for the traceback). Multi-host: start one process per host with
--coordinator_address, --num_processes and --process_id (or let
jax.distributed auto-detect a SLURM / TPU cluster with --distributed).
"""
import glob
import os
import sys

from absl import app
from absl import flags
from absl import logging


def _configs_help() -> str:
  """The experiment files next to this script, with their first lines."""
  lines = []
  here = os.path.dirname(os.path.abspath(__file__))
  for path in sorted(glob.glob(os.path.join(here, "configs", "*.py"))):
    with open(path) as f:
      text = f.read()
    start = text.find('"""')
    first = text[start + 3:].strip().splitlines()[0] if start >= 0 else ""
    lines.append(f"  configs/{os.path.basename(path)}: {first}")
  return "\n".join(lines)


_CONFIG = flags.DEFINE_string(
    "config", None,
    "Experiment config file, optionally with ':key=value,...' variants; any "
    "field can then be set with --config.<key>=<value>. The configs:\n"
    + _configs_help())
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where checkpoints, metrics and plots go (default: "
    "runs/<config file name>). An existing run there is resumed.")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of every error, not one line.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.mark_flags_as_required(["config"])

#: The --config.<key>=<value> overrides, taken off the command line before
#: absl reads it (they are checked against the config, not by absl).
_OVERRIDES: dict = {}


class _QuietLibraries:
  """Drops INFO chatter from Orbax and JAX internals; warnings still pass."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/jax/_src/", "/absl/")
    return record.levelno > 20 or not any(p in record.pathname for p in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Imported here so that --help answers at once.
  import jax  # pylint: disable=g-import-not-at-top
  import eo_jax  # pylint: disable=g-import-not-at-top
  from eo_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from eo_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    if _COORDINATOR.value:
      jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                 _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
      jax.distributed.initialize()
    config = config_lib.load_config(_CONFIG.value, _OVERRIDES)
    config_path = _CONFIG.value.split(":")[0]
    workdir = _WORKDIR.value or os.path.join(
        "runs", os.path.splitext(os.path.basename(config_path))[0])
    logging.info("Process %d/%d, %d local / %d global devices, workdir %s.",
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count(), workdir)
    eo_jax.run(config, workdir)
  except errors.TrainingInterrupted as e:
    print(errors.message(e), file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:
    # Before training started (or a second Ctrl-C): nothing to save.
    print("Interrupted.", file=sys.stderr)
    sys.exit(130)
  except errors.UserError as e:
    if _VERBOSE.value:
      raise
    # The message says what is wrong and what to do; a traceback through
    # the trainer would only bury it.
    sys.exit(f"error: {errors.message(e)}")


if __name__ == "__main__":
  argv = sys.argv
  if "--help" not in argv and "-h" not in argv and "--helpfull" not in argv:
    from eo_jax.config import split_config_overrides  # pylint: disable=g-import-not-at-top
    from eo_jax.errors import UserError, message  # pylint: disable=g-import-not-at-top
    try:
      argv, _OVERRIDES = split_config_overrides(argv)
    except UserError as e:
      sys.exit(f"error: {message(e)}")
  app.run(main, argv=argv)
