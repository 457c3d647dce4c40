"""Starting a run from another run's checkpoint (`config.init_from`).

Typical use: pretrain an encoder (MAE, DINO, supervised on another dataset),
then fine-tune with a new head. Parameters are matched by path; by default
everything except the `head/` subtree is copied. Band lists must agree
exactly. A ViT position embedding whose grid differs (another input
resolution) is resized; any other shape mismatch is an error that names the
parameter.
"""
from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.train.checkpoint import Checkpointer

_HEAD = re.compile(r"^head/")


def _flat(tree: Any) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()} if tree else {}


def _unflat(flat: dict[str, Any]) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _subtree(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
  if not prefix:
    return flat
  prefix = prefix.strip("/") + "/"
  sub = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
  if not sub:
    tops = sorted({k.split("/")[0] for k in flat})
    raise KeyError(f"config.init_from.source_prefix={prefix[:-1]!r} matches no "
                   f"parameters of the source run; its top-level names are {tops}.")
  return sub


def _resize_if_posemb(path: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if "pos_embedding" not in path or value.ndim != len(shape) or value.ndim not in (3, 4) \
      or shape[0] != value.shape[0] or shape[-1] != value.shape[-1]:
    raise ValueError(
        f"Parameter {path!r} has shape {value.shape} in the source run but "
        f"{shape} here. The architectures differ; match config.model to the "
        "source run, or exclude the parameter with config.init_from.params.")
  from eo_jax.models.vit import resize_posemb  # pylint: disable=g-import-not-at-top
  if value.ndim == 4:
    # The ViT stores its table as a (1, gh, gw, D) grid.
    old, new = value.shape[1:3], shape[1:3]
    grid = value
  else:
    side_old = int(round(np.sqrt(value.shape[1])))
    side_new = int(round(np.sqrt(shape[1])))
    if side_old * side_old != value.shape[1] or side_new * side_new != shape[1]:
      raise ValueError(f"Cannot resize non-square position embedding {path!r}: "
                       f"{value.shape} -> {shape}.")
    old, new = (side_old, side_old), (side_new, side_new)
    grid = value.reshape(value.shape[0], *old, value.shape[-1])
  logging.info("Resizing %s from a %dx%d to a %dx%d grid.", path, *old, *new)
  return np.asarray(resize_posemb(grid, new)).reshape(shape)


def _copy(target: dict[str, Any], source: dict[str, Any], patterns: list[re.Pattern],
          what: str) -> tuple[dict[str, Any], int]:
  out, copied = dict(target), 0
  for path, value in target.items():
    wanted = any(p.search(path) for p in patterns) if patterns else not _HEAD.search(path)
    if not wanted:
      continue
    if path not in source:
      raise KeyError(
          f"{what} {path!r} is not in the source run (it has e.g. "
          f"{sorted(source)[:5]}). Set config.init_from.source_prefix to the "
          "subtree that holds the encoder, or restrict config.init_from.params.")
    src = np.asarray(source[path])
    if src.shape != tuple(value.shape):
      src = _resize_if_posemb(path, src, tuple(value.shape))
    out[path] = src.astype(np.asarray(value).dtype)
    copied += 1
  return out, copied


def load_init_from(config, info: DatasetInfo, params: Any, model_state: Any
                   ) -> tuple[Any, Any]:
  """Returns `params`/`model_state` with the source run's values copied in."""
  cfg = config.init_from
  directory = os.path.join(cfg.workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.init_from.workdir={cfg.workdir!r} has no "
                            "checkpoints/ folder; point it at a finished run's workdir.")
  source = Checkpointer(directory)
  src_params, src_state, meta = source.restore_params(cfg.step or None)
  source.close()
  bands_lib.check_same(DatasetInfo.from_dict(meta["info"]).bands, info.bands,
                       f"config.init_from.workdir={cfg.workdir!r}")
  patterns = [re.compile(p) for p in cfg.params if p]
  prefix = cfg.source_prefix
  new_params, n_params = _copy(_flat(jax.device_get(params)),
                               _subtree(_flat(src_params), prefix), patterns, "Parameter")
  new_state = {}
  if model_state:
    flat_state = _flat(jax.device_get(model_state))
    src_flat = _flat(src_state or {})
    # Collections (batch_stats, ...) are the top level; the prefix sits below.
    for collection in {k.split("/")[0] for k in flat_state}:
      target = {k.split("/", 1)[1]: v for k, v in flat_state.items()
                if k.startswith(collection + "/")}
      src_coll = {k.split("/", 1)[1]: v for k, v in src_flat.items()
                  if k.startswith(collection + "/")}
      copied, _ = _copy(target, _subtree(src_coll, prefix) if src_coll else {},
                        patterns, f"{collection} entry")
      new_state.update({f"{collection}/{k}": v for k, v in copied.items()})
  logging.info("init_from: copied %d parameter arrays from %s.", n_params, cfg.workdir)
  return _unflat(new_params), (_unflat(new_state) if model_state else model_state)
