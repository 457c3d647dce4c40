"""Ctrl-C that stops a run cleanly.

While training, the first SIGINT only raises a flag: the trainer finishes
the step (or evaluation) in flight, saves a checkpoint and stops with
`TrainingInterrupted`, which main.py turns into a message and exit status
130. A second SIGINT interrupts at once (KeyboardInterrupt), for a run that
is stuck. Outside the main thread, where signal handlers cannot be
installed, nothing changes.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from absl import logging


class InterruptGuard:
  """Context manager: `requested` becomes True on the first Ctrl-C."""

  def __init__(self):
    self.requested = False
    self._previous: Any = None

  def _handle(self, signum, frame) -> None:
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    logging.warning("Ctrl-C: stopping after the current step and saving a "
                    "checkpoint (press Ctrl-C again to stop at once, without "
                    "saving).")

  def __enter__(self) -> "InterruptGuard":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None
