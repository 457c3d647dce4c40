"""Orbax checkpoints of a run: train state, input iterator state and metadata.

Everything needed to continue a run lives in `workdir/checkpoints/<step>/`:
the `TrainState` (params, model state, optimiser state, objective state), the
Grain iterator state (so a resumed run reads the same next batches) and a
JSON `meta` item (config, dataset info with band statistics, metric history,
early-stopping record). Orbax writes each step into a temporary directory and
renames it when complete, so an interrupted save never replaces a good
checkpoint; an incomplete one is ignored on restore.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, Any, dict]:
    """Restores `step` (default: latest) into the structure of `abstract_state`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]["iterator"], restored["meta"]

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


def _jsonable(data_state: Any) -> Any:
  if isinstance(data_state, bytes):
    return {"bytes": data_state.decode("utf-8")}
  return data_state


def iterator_state_from_json(saved: Any) -> Any:
  if isinstance(saved, dict) and set(saved) == {"bytes"}:
    return saved["bytes"].encode("utf-8")
  return saved
