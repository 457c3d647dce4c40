"""Orbax checkpoints of a run: train state, input iterator state and metadata.

Everything needed to continue a run lives in `workdir/checkpoints/<step>/`:
the `TrainState` (params, model state, optimiser state, objective state), the
Grain iterator state (so a resumed run reads the same next batches) and a
JSON `meta` item (config, dataset info with band statistics, metric history,
early-stopping record). Orbax writes each step into a temporary directory and
renames it when complete, so an interrupted save never replaces a good
checkpoint; an incomplete one is ignored on restore.

A checkpoint damaged after it was written (a truncated or deleted file) is
handled by `restore_newest_good`: it is moved aside to
`<workdir>/checkpoints_unreadable/` (never deleted) with a one-line warning,
and the previous one is restored. `shape_mismatches` compares a checkpoint's
arrays with the state a config builds, so a changed model is reported by
parameter name before Orbax fails.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import serialization, traverse_util

from eo_jax.errors import CheckpointError


class Checkpointer:
  """Saves and restores whole runs in `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False,
        cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, meta: dict) -> None:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": _jsonable(data_state)}),
        meta=ocp.args.JsonSave(meta))
    self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None,
              shardings: Any = None) -> tuple[Any, Any, dict]:
    """Restores `step` (default: latest) into the structure of `abstract_state`.

    Each array is read straight into its place in `shardings` (a tree like
    the state's, e.g. `sharding.state_shardings`; None: the shardings of
    `abstract_state`'s arrays), whatever layout wrote it: a checkpoint of an
    'fsdp' run restores into a replicated one and back.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if shardings is None:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    else:
      target = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          abstract_state, shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["iterator"], restored["meta"]

  def delete(self, step: int) -> None:
    self._manager.delete(step)

  def stored_shapes(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'params/a/b': (shape, dtype)} of checkpoint `step`'s train state."""
    stored = self._manager.item_metadata(step)["state"]
    tree = stored.tree if hasattr(stored, "tree") else stored
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in flat.items()
            if hasattr(v, "shape")}

  def move_aside(self, step: int) -> str:
    """Moves checkpoint `step` out of the run (renamed, kept); returns where."""
    parent = os.path.join(os.path.dirname(self.directory),
                          os.path.basename(self.directory) + "_unreadable")
    os.makedirs(parent, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = os.path.join(parent, f"{step}-{stamp}")
    shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    restored = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def restore_params(self, step: int | None = None) -> tuple[Any, Any, dict]:
    """(params, model state, meta) of `step` without a train state to match.

    For `init_from` and inspection: the arrays are restored whole onto this
    process's first device, whatever device count wrote them.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    stored = self._manager.item_metadata(step)["state"]
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        stored.tree if hasattr(stored, "tree") else stored)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        meta=ocp.args.JsonRestore()))
    state = restored["state"]
    return state["params"], state["model_state"], restored["meta"]

  def close(self) -> None:
    self._manager.close()


#: The parts of a train state a model defines (the optimiser state follows).
_MODEL_PARTS = ("params/", "model_state/", "extra/")


def shape_mismatches(stored: dict[str, tuple[tuple[int, ...], str]],
                     abstract_state: Any) -> list[str]:
  """Differences between a checkpoint's model arrays and a state's, by path."""
  flat = traverse_util.flatten_dict(serialization.to_state_dict(abstract_state),
                                    sep="/")
  wanted = {k: tuple(v.shape) for k, v in flat.items()
            if hasattr(v, "shape") and k.startswith(_MODEL_PARTS)}
  stored = {k: v for k, v in stored.items() if k.startswith(_MODEL_PARTS)}
  out = []
  # Parameters first: their names tell which layer changed.
  for path in sorted(set(stored) | set(wanted),
                     key=lambda p: (not p.startswith("params/"), p)):
    if path not in wanted:
      out.append(f"{path} is in the checkpoint but not in this config's model")
    elif path not in stored:
      out.append(f"{path} is not in the checkpoint")
    elif stored[path][0] != wanted[path]:
      out.append(f"{path} has shape {stored[path][0]} in the checkpoint, "
                 f"{wanted[path]} here")
  return out


def restore_newest_good(checkpointer: Checkpointer, abstract_state: Any,
                        check: Callable[[int, dict], None],
                        config: Any = None, shardings: Any = None
                        ) -> tuple[Any, Any, dict] | None:
  """Restores the newest readable checkpoint, or None when there is none.

  The arrays are placed as `shardings` says (see `Checkpointer.restore`).

  Each candidate's metadata is read and handed to `check(step, meta)`, which
  raises for a checkpoint of other data (a user error, never silently
  skipped); arrays whose shapes differ from `abstract_state`'s are reported
  by name, with the keys in which `config` differs from the saved one. A
  checkpoint that cannot be read is moved aside with a warning and the
  previous one is tried.

  Raises:
    CheckpointError: every checkpoint was unreadable (they were moved aside).
  """
  moved = []
  while (step := checkpointer.latest_step()) is not None:
    try:
      meta = checkpointer.restore_meta(step)
      stored = checkpointer.stored_shapes(step)
    except Exception as e:  # pylint: disable=broad-except; any damage
      moved.append(_set_aside(checkpointer, step, e))
      continue
    check(step, meta)
    mismatches = shape_mismatches(stored, abstract_state)
    if mismatches:
      raise CheckpointError(
          f"The checkpoint of step {step} in {checkpointer.directory} does not "
          f"fit this config's model: {'; '.join(mismatches[:4])}"
          f"{' (and more)' if len(mismatches) > 4 else ''}."
          f"{_config_hint(meta, config)}")
    try:
      return checkpointer.restore(abstract_state, step, shardings)
    except Exception as e:  # pylint: disable=broad-except; any damage
      moved.append(_set_aside(checkpointer, step, e))
  if moved:
    raise CheckpointError(
        f"No checkpoint in {checkpointer.directory} could be read; they were "
        f"moved to {os.path.dirname(moved[-1])}. Start again with a new "
        "--workdir, or move a good checkpoint back.")
  return None


def _set_aside(checkpointer: Checkpointer, step: int, error: Exception) -> str:
  where = checkpointer.move_aside(step)
  first_line = (str(error).strip().splitlines() or [""])[0][:200]
  logging.warning("Checkpoint %d is unreadable (%s: %s); moved it to %s and "
                  "resuming from the previous one.", step, type(error).__name__,
                  first_line, where)
  return where


def config_differences(saved: str | dict, config: Any) -> list[str]:
  """'key: saved -> now' for every config key that differs from the saved
  config (a checkpoint's meta['config'], JSON)."""
  saved = json.loads(saved) if isinstance(saved, str) else saved
  now = json.loads(config.to_json_best_effort())
  flat_saved = traverse_util.flatten_dict(saved, sep=".") if saved else {}
  flat_now = traverse_util.flatten_dict(now, sep=".") if now else {}
  out = []
  for key in sorted(set(flat_saved) | set(flat_now)):
    a, b = flat_saved.get(key, "(absent)"), flat_now.get(key, "(absent)")
    if a != b:
      out.append(f"{key}: {a!r} -> {b!r}")
  return out


def _config_hint(meta: dict, config: Any) -> str:
  diffs = config_differences(meta.get("config", {}), config) if config else []
  if not diffs:
    return (" The model changed since the checkpoint was written; use a new "
            "--workdir, or the config the run was started with.")
  return (" The config differs from the one the run was started with in: "
          f"{'; '.join(diffs[:8])}. Use a new --workdir, or put these back.")


def _jsonable(data_state: Any) -> Any:
  if isinstance(data_state, bytes):
    return {"bytes": data_state.decode("utf-8")}
  return data_state


def iterator_state_from_json(saved: Any) -> Any:
  if isinstance(saved, dict) and set(saved) == {"bytes"}:
    return saved["bytes"].encode("utf-8")
  return saved
