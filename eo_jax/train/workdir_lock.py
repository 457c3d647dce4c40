"""One run per workdir: an advisory lock the operating system releases when
the process dies (kill -9 included), so a crashed run never leaves a stale
lock behind, and a second run on a busy workdir stops at once.

The lock is `fcntl.flock` on `<workdir>/.lock`; the file also records who
holds it (pid, host, start time, command) for the second run's message.
In a multi-process run only process 0 takes it.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys

from eo_jax.errors import WorkdirBusyError

LOCK_NAME = ".lock"


class WorkdirLock:
  """Holds `<workdir>/.lock` from `acquire()` to `release()` (or exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._file = None

  def acquire(self) -> "WorkdirLock":
    f = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip()
      f.close()
      raise WorkdirBusyError(
          f"Another run is using {os.path.dirname(self.path)} ({_describe(holder)}). "
          "Wait for it to finish, stop it, or pass another --workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "started": datetime.datetime.now().isoformat(timespec="seconds"),
                        "command": " ".join(sys.argv)}))
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _describe(holder: str) -> str:
  try:
    info = json.loads(holder)
  except ValueError:
    return "a process that did not say who it is"
  return (f"pid {info.get('pid')} on {info.get('host')}, started "
          f"{info.get('started')}: {info.get('command')}")
