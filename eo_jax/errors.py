"""Errors caused by the user's input, as opposed to bugs in eo_jax.

`main.py` prints a `UserError` as one line, `error: <message>`, and exits
with status 1; anything else is a bug and keeps its traceback (`--verbose`
shows tracebacks for every error). A user error's message names what is
wrong and how to fix it.

Each class also derives from the builtin exception a caller would expect
(KeyError for an unknown config key, ValueError for a bad value, ...), so
code that catches those keeps working.
"""
from __future__ import annotations


class UserError(Exception):
  """Wrong input: a config key or value, the data, a checkpoint, the workdir."""

  def message(self) -> str:
    # KeyError's str() quotes its argument; the message reads better bare.
    return str(self.args[0]) if self.args else type(self).__name__


class ConfigError(UserError, KeyError):
  """An unknown config key, variant, name or field."""


class ConfigValueError(UserError, ValueError):
  """A config value that cannot work (a batch size, a ratio, a shape)."""


class ConfigTypeError(UserError, TypeError):
  """A config field a factory does not take."""


class InputShapeError(UserError, ValueError):
  """Data whose shape or band count does not fit the model or the config."""


class CheckpointError(UserError, ValueError):
  """A workdir's checkpoints cannot be resumed with this config."""


class MissingPackageError(UserError, ImportError):
  """An optional package a feature needs is not installed (the message says
  which pip command installs it)."""


class WorkdirBusyError(UserError, RuntimeError):
  """Another run holds the workdir."""


class TrainingInterrupted(Exception):
  """The user stopped the run (Ctrl-C); a checkpoint was saved."""


def message(error: BaseException) -> str:
  """The text to show for `error` (without KeyError's quotes)."""
  if isinstance(error, UserError):
    return error.message()
  return str(error)
