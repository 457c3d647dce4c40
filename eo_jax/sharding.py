"""Data parallelism over every device of every host, optionally fully sharded.

One mesh with a single `data` axis spans all devices. Batches are split
along their leading axis. On several hosts each process feeds its own slice
of the global batch, and `jax.jit` with these shardings runs the same
program everywhere: it is the multi-host form of a pmapped data-parallel
step.

The train state (parameters, model state, optimiser state and the
objective's extra state such as an EMA teacher) is laid out by
`config.sharding`, decided for every array in one place, `state_shardings`:

* 'replicated' (the default): every device holds the whole state.
* 'fsdp' (fully-sharded data parallelism, ZeRO-3 style): each array of at
  least `MIN_SHARDED_SIZE` elements is split over the same `data` axis along
  one dimension (`partition_spec`), so a device holds about 1/N of the
  state. Nothing else changes: the step is the same `jax.jit` program with
  other `NamedSharding`s, and XLA's SPMD partitioner inserts the gathers of
  parameters and the reductions of gradients. Small arrays (biases, norms,
  the step) stay replicated, where splitting would cost more than it saves.

Shardings are global: a checkpoint restores into either layout, and
`to_host` / `gather_sharded` bring split arrays whole to every host.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from eo_jax.errors import ConfigValueError

DATA_AXIS = "data"

#: `config.sharding` values.
REPLICATED = "replicated"
FSDP = "fsdp"
MODES = (REPLICATED, FSDP)

#: Arrays with fewer elements stay replicated under 'fsdp': a gather costs a
#: collective's latency whatever its size, and 2**14 float32 values (64 KiB)
#: are nothing against a device's memory.
MIN_SHARDED_SIZE = 2 ** 14


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


def check_mode(mode: str) -> str:
  """`mode` if it is a `config.sharding` value.

  Raises:
    ConfigValueError: another value, with the choices.
  """
  if mode not in MODES:
    raise ConfigValueError(
        f"config.sharding={mode!r} is not a sharding mode; choose one of "
        f"{list(MODES)} ('replicated': every device holds the whole train "
        "state; 'fsdp': large arrays are split over the devices).")
  return mode


def config_mode(config: Any) -> str:
  """The checked `config.sharding` of `config`; 'replicated' for a config
  saved before the key existed (a checkpoint's)."""
  return check_mode(config.get("sharding", REPLICATED))


def partition_spec(shape: Sequence[int], num_devices: int,
                   min_size: int | None = None) -> P:
  """How 'fsdp' splits an array of `shape` over `num_devices` devices.

  Along its largest dimension that `num_devices` divides; of equal ones the
  last (the output features of a Dense or Conv kernel). Replicated (P())
  when the array has fewer than `min_size` elements (default
  `MIN_SHARDED_SIZE`), when no dimension is divisible, or on one device.
  """
  min_size = MIN_SHARDED_SIZE if min_size is None else min_size
  shape = tuple(int(d) for d in shape)
  if num_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  divisible = [(d, axis) for axis, d in enumerate(shape) if d % num_devices == 0]
  if not divisible:
    return P()
  _, axis = max(divisible)  # the largest size, then the last axis
  return P(*([None] * axis + [DATA_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
  """A `NamedSharding` for every leaf of `abstract_state`, as `mode` lays it out.

  Args:
    abstract_state: any tree of arrays, `jax.ShapeDtypeStruct`s or scalars
      (a `TrainState`, the initial variables, an optimiser state); only the
      shapes are read.
    mesh: the device mesh (`make_mesh`).
    mode: 'replicated' or 'fsdp' (`config.sharding`).

  Returns:
    A tree of the same structure: replicated everywhere for 'replicated';
    `partition_spec` of each leaf's shape over the `data` axis for 'fsdp'.
  """
  check_mode(mode)
  size = mesh.shape[DATA_AXIS]
  if mode == REPLICATED:
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, partition_spec(np.shape(x), size)),
      abstract_state)


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
  """Brings (possibly multi-host, possibly split) arrays to every host as
  numpy arrays, whole. Every process must call it on several hosts."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  # A global array is gathered whole (resharded to replicated) on each host.
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_sharded(tree: Any) -> Any:
  """`tree` with its split arrays brought whole to every host (numpy).

  Replicated arrays and other leaves are returned as they are, so code that
  reads one device's copy (`addressable_data(0)`) or runs on one process
  sees whole arrays under either `config.sharding`. Every process must call
  it: on several hosts the gather is a collective.
  """
  leaves, treedef = jax.tree.flatten(tree)
  split = [i for i, x in enumerate(leaves)
           if isinstance(x, jax.Array) and not x.is_fully_replicated]
  if split:
    gathered = to_host([leaves[i] for i in split])
    for i, value in zip(split, gathered):
      leaves[i] = value
  return jax.tree.unflatten(treedef, leaves)
