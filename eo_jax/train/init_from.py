"""Starting a run from another run's checkpoint (`config.init_from`).

Typical use: pretrain an encoder (MAE, DINO, supervised on another dataset),
then fine-tune it with a new head or decoder. The source run's parameters
under `source_prefix` ('encoder' for MAE, 'student/backbone' for DINO, ''
for the whole tree) are matched by path with this run's parameters under
`target_prefix` ('' for the whole tree, 'backbone' for a decoder model's
encoder). By default everything but the target's `head/` subtree is wanted;
`params` (regexes over the paths below the target prefix) narrows that.

The source is a run's workdir (`workdir`), or published PyTorch weights
(`torch_checkpoint`: a torchvision ResNet or timm / DINOv2 ViT state dict,
converted by eo_jax/interop/ for the model `config.model` names; its
`source_prefix` is then a dotted key prefix such as 'teacher.backbone', and
`checkpoint_bands` names the bands it was trained on).

A wanted parameter the source has is copied; one it does not have (a new
decoder, a new head) keeps its initial value, and the log says which were
copied and which were left. A shape that differs is handed to the backbone
that owns the parameter (`adapt_param` of the backbone contract, e.g. a ViT
resizes its position embedding to another grid); anything else is an error
that names the parameter.

Bands: a source trained on other bands loads when every backbone is
`band_agnostic` (unchanged), or declares its `input_kernels`: those are
rebuilt for this run's bands by wavelength (`band_rule`, see
eo_jax/interop/band_adaptation.py), band by band in the log. Otherwise the
band lists must agree exactly.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from flax import traverse_util

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.errors import ConfigValueError
from eo_jax.interop import band_adaptation, torch_weights
from eo_jax.train.checkpoint import Checkpointer

_HEAD = re.compile(r"^head/")


def _flat(tree: Any) -> dict[str, Any]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()} if tree else {}


def _unflat(flat: dict[str, Any]) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _subtree(flat: dict[str, Any], prefix: str) -> dict[str, Any]:
  """The entries under `prefix`, with the prefix removed ('' = all)."""
  if not prefix:
    return dict(flat)
  prefix = prefix.strip("/") + "/"
  return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}


def _owner(backbones: Mapping[str, Any], path: str) -> tuple[Any, str]:
  """(backbone, path inside it) of the parameter at absolute `path`."""
  for prefix, model in backbones.items():
    if not prefix:
      return model, path
    if path.startswith(prefix + "/"):
      return model, path[len(prefix) + 1:]
  return None, path


def _copy(target: dict[str, Any], source: dict[str, Any], *, target_prefix: str,
          patterns: list[re.Pattern], backbones: Mapping[str, Any], what: str
          ) -> tuple[dict[str, Any], list[str], list[str]]:
  """Copies wanted entries of `source` into `target` (paths below the
  target prefix); returns (new target, copied paths, paths left as they were)."""
  out, copied, left = dict(target), [], []
  for path, value in target.items():
    wanted = any(p.search(path) for p in patterns) if patterns else not _HEAD.search(path)
    if not wanted:
      continue
    if path not in source:
      left.append(path)
      continue
    src = np.asarray(source[path])
    shape = tuple(np.shape(value))
    if src.shape != shape:
      full = f"{target_prefix}/{path}" if target_prefix else path
      model, inner = _owner(backbones, full)
      if model is None or not hasattr(model, "adapt_param"):
        raise ValueError(
            f"{what} {full!r} has shape {src.shape} in the source but "
            f"{shape} here. The architectures differ; match config.model to "
            "the source's, or exclude the parameter with "
            "config.init_from.params.")
      logging.info("init_from: %s adapted from %s to %s.", full, src.shape, shape)
      src = np.asarray(model.adapt_param(inner, src, shape))
    out[path] = src.astype(np.asarray(value).dtype)
    copied.append(path)
  return out, copied, left


def _workdir_source(cfg) -> tuple[dict, dict, tuple, str]:
  """(flat params, flat model state, bands, description) of a run's checkpoint."""
  directory = os.path.join(cfg.workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.init_from.workdir={cfg.workdir!r} has no "
                            "checkpoints/ folder; point it at a finished run's workdir.")
  source = Checkpointer(directory)
  src_params, src_state, meta = source.restore_params(cfg.step or None)
  source.close()
  bands = DatasetInfo.from_dict(meta["info"]).bands
  return (_flat(src_params), _flat(src_state or {}), bands,
          f"config.init_from.workdir={cfg.workdir!r}")


def _torch_source(cfg, model_config: Any, target: dict[str, Any],
                  flat_state: dict[str, Any], dst_prefix: str
                  ) -> tuple[dict, dict, tuple, str]:
  """(flat params, flat model state, bands, description) of PyTorch weights,
  converted for the parameters `target` (below the target prefix)."""
  what = f"config.init_from.torch_checkpoint={cfg.torch_checkpoint!r}"
  if model_config is None:
    raise ConfigValueError(f"{what} needs config.model to pick a converter; "
                           "pass model_config to load_init_from.")
  kind, nested = torch_weights.converter_kind(model_config)
  if nested and dst_prefix.split("/")[-1:] != [nested]:
    raise ConfigValueError(
        f"{what} holds a {kind} for config.model.{nested}, whose parameters "
        f"sit under '{nested}/'; set config.init_from.target_prefix="
        f"{nested!r} (now {dst_prefix!r}).")
  state_dict = torch_weights.select_prefix(
      torch_weights.load_state_dict(cfg.torch_checkpoint), cfg.source_prefix)
  stats = _subtree(flat_state, "/".join(p for p in ("batch_stats", dst_prefix) if p))
  converted = torch_weights.convert_state_dict(
      state_dict, kind, {k: np.shape(v) for k, v in target.items()},
      {k: np.shape(v) for k, v in stats.items()},
      model=f"name={model_config.get('name')!r}")
  for note in converted.notes:
    logging.info("init_from: %s: %s.", os.path.basename(cfg.torch_checkpoint), note)
  bands = band_adaptation.bands_from_spec(cfg.get("checkpoint_bands", "rgb"))
  # Paths come relative to the target prefix, as the source's subtree would.
  state = {f"batch_stats/{k}": v for k, v in converted.batch_stats.items()}
  return converted.params, state, bands, what


def _input_kernels(backbones: Mapping[str, Any], dst_prefix: str
                   ) -> list[str] | None:
  """Paths below `dst_prefix` of every backbone's input kernels; None when a
  backbone that depends on the bands does not declare them."""
  out = []
  for prefix, model in backbones.items():
    if getattr(model, "band_agnostic", False):
      continue
    declare = getattr(model, "input_kernels", None)
    paths = declare() if declare is not None else None
    if paths is None:
      return None
    for path in paths:
      full = f"{prefix}/{path}" if prefix else path
      if not dst_prefix:
        out.append(full)
      elif full.startswith(dst_prefix + "/"):
        out.append(full[len(dst_prefix) + 1:])
  return out


def _fit_bands(source: dict[str, Any], source_bands, info: DatasetInfo,
               backbones: Mapping[str, Any], dst_prefix: str, rule: str,
               what: str) -> dict[str, Any]:
  """`source` with its input kernels made for this run's bands, or unchanged
  when the bands agree; raises the band mismatch when they cannot be."""
  try:
    bands_lib.check_same(source_bands, info.bands, what)
  except ConfigValueError as e:
    mismatch = e
  else:
    return source
  names = (list(bands_lib.names(source_bands)), list(bands_lib.names(info.bands)))
  if backbones and all(getattr(b, "band_agnostic", False)
                       for b in backbones.values()):
    logging.info("config.init_from: the source saw bands %s, this run %s; "
                 "its backbone builds its input weights from wavelengths, so "
                 "they load unchanged.", *names)
    return source
  kernels = _input_kernels(backbones, dst_prefix) if backbones else None
  if kernels is None:
    raise mismatch
  out = dict(source)
  for path in kernels:
    if path not in out:
      continue
    out[path], report = band_adaptation.adapt_band_kernel(
        np.asarray(out[path]), source_bands, info.bands, rule, axis=-2)
    logging.info("init_from: %s fitted from the source's bands %s to this "
                 "run's %s by wavelength (band_rule=%r: %s):\n  %s", path,
                 names[0], names[1], rule, report.summary(),
                 "\n  ".join(report.lines()))
  return out


def load_init_from(cfg, info: DatasetInfo, params: Any, model_state: Any,
                   backbones: Mapping[str, Any] | None = None,
                   model_config: Any = None) -> tuple[Any, Any]:
  """`params` / `model_state` with the source's values copied in.

  Args:
    cfg: `config.init_from` (workdir or torch_checkpoint, step,
      source_prefix, target_prefix, params, checkpoint_bands, band_rule).
    info: this run's training data (its bands must equal the source's,
      unless every backbone is `band_agnostic` or declares its
      `input_kernels`).
    params, model_state: this run's initial variables.
    backbones: the objective's {prefix: backbone} (`Objective.backbones()`),
      whose `adapt_param` fits parameters of another shape.
    model_config: `config.model`, which picks the converter of a
      `torch_checkpoint`.
  """
  torch_checkpoint = cfg.get("torch_checkpoint", "")
  rule = cfg.get("band_rule", "nearest")
  if rule not in band_adaptation.BAND_RULES:
    raise ConfigValueError(f"config.init_from.band_rule={rule!r}; use one of "
                           f"{band_adaptation.BAND_RULES}.")
  if torch_checkpoint and cfg.workdir:
    raise ConfigValueError(
        f"config.init_from sets both workdir={cfg.workdir!r} and "
        f"torch_checkpoint={torch_checkpoint!r}; keep one.")
  patterns = [re.compile(p) for p in cfg.params if p]
  src_prefix, dst_prefix = cfg.source_prefix.strip("/"), cfg.target_prefix.strip("/")
  flat_params = _flat(jax.device_get(params))
  target = _subtree(flat_params, dst_prefix)
  if not target:
    tops = sorted({k.split("/")[0] for k in flat_params})
    raise KeyError(f"config.init_from.target_prefix={dst_prefix!r} matches no "
                   f"parameter of this run; its top-level names are {tops}.")
  flat_state = _flat(jax.device_get(model_state)) if model_state else {}
  if torch_checkpoint:
    source_params, src_flat, source_bands, what = _torch_source(
        cfg, model_config, target, flat_state, dst_prefix)
    src_prefix = ""  # the converted tree is already relative to the target
  else:
    all_params, src_flat, source_bands, what = _workdir_source(cfg)
    source_params = _subtree(all_params, src_prefix)
    if not source_params:
      tops = sorted({k.split("/")[0] for k in all_params})
      raise KeyError(f"config.init_from.source_prefix={src_prefix!r} matches no "
                     f"parameter of the source run; its top-level names are {tops}.")
  source_params = _fit_bands(source_params, source_bands, info, backbones or {},
                             dst_prefix, rule, what)
  new_target, copied, left = _copy(target, source_params, target_prefix=dst_prefix,
                                   patterns=patterns, backbones=backbones or {},
                                   what="Parameter")
  if not copied:
    raise KeyError(
        f"config.init_from copied nothing from {what}: none of this "
        f"run's parameters under {dst_prefix or 'the root'!r} (e.g. "
        f"{sorted(target)[:3]}) is in the source under "
        f"{src_prefix or 'its root'!r} (e.g. {sorted(source_params)[:3]}). Set "
        "config.init_from.source_prefix / target_prefix to the subtrees that "
        "hold the encoder.")
  flat_params.update({(f"{dst_prefix}/{k}" if dst_prefix else k): v
                      for k, v in new_target.items()})
  new_state = model_state
  if model_state:
    # Collections (batch_stats, ...) are the top level; the prefixes sit below.
    for collection in {k.split("/")[0] for k in flat_state}:
      full = lambda p, c=collection: "/".join(x for x in (c, p) if x)
      state_target = _subtree(flat_state, full(dst_prefix))
      state_source = _subtree(src_flat, full(src_prefix))
      done, _, _ = _copy(state_target, state_source, target_prefix=dst_prefix,
                         patterns=patterns, backbones={}, what=f"{collection} entry")
      flat_state.update({full(dst_prefix) + "/" + k: v for k, v in done.items()})
    new_state = _unflat(flat_state)
  logging.info("init_from: copied %d parameter arrays from %s (%s -> %s); left "
               "%d at their initial values%s.", len(copied), what,
               src_prefix or "root", dst_prefix or "root", len(left),
               f" ({', '.join(left[:8])}{', ...' if len(left) > 8 else ''})"
               if left else "")
  return _unflat(flat_params), new_state


def pretrained_encoder(workdir: str) -> tuple[Any, str]:
  """(model config of the encoder, its source prefix) of the run in `workdir`.

  For configs that put a decoder or a new head on another run's encoder:
  the encoder must be built exactly as it was trained (its `config.model`,
  read from the run's newest checkpoint), and its parameters sit under the
  objective's `encoder_prefix` ('encoder' for MAE, 'student/backbone' for
  DINO, '' for a supervised run).
  """
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from eo_jax.errors import ConfigValueError  # pylint: disable=g-import-not-at-top
  from eo_jax.objectives import OBJECTIVES  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  checkpointer = Checkpointer(directory) if os.path.isdir(directory) else None
  if checkpointer is None or checkpointer.latest_step() is None:
    raise ConfigValueError(
        f"init={workdir!r} holds no checkpoint; train the encoder first (e.g. "
        "python main.py --config=configs/mae_s2.py:path=... --workdir=...) or "
        "leave init empty to start from scratch.")
  saved = json.loads(checkpointer.restore_meta()["config"])
  checkpointer.close()
  objective = OBJECTIVES.get(saved["objective"])
  model = objective.encoder_model_config(ml_collections.ConfigDict(saved["model"]))
  return model, objective.encoder_prefix
