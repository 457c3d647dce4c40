"""Data parallelism over every device of every host.

One mesh with a single `data` axis spans all devices. Parameters and
optimiser state are replicated; batches are split along their leading axis.
On several hosts each process feeds its own slice of the global batch, and
`jax.jit` with these shardings runs the same program everywhere: it is the
multi-host form of a pmapped data-parallel step.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from eo_jax.errors import ConfigValueError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  # Auto axes: XLA's sharding propagation places every intermediate, so model
  # code stays free of sharding annotations (explicit axes, jax.make_mesh's
  # default, would demand them for ops like dropout's select).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int) -> int:
  """The batch each process feeds; checks that devices divide the batch."""
  devices, processes = jax.device_count(), jax.process_count()
  if global_batch_size % devices:
    raise ConfigValueError(
        f"Batch size {global_batch_size} is not divisible by the {devices} devices "
        f"in use. Set --config.input.batch_size to a multiple of {devices} "
        f"(e.g. {max(devices, global_batch_size // devices * devices)}).")
  return global_batch_size // processes


def to_global(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles per-process host arrays into one batch sharded over `data`."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def to_host(tree: Any) -> Any:
  """Brings (possibly multi-host) arrays to every host as numpy arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
