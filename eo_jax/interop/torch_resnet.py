"""torchvision ResNet state dicts -> eo_jax ResNet parameters.

torchvision's keys and eo_jax's paths (eo_jax/models/resnet.py), which
follows torchvision's layout block for block:

  conv1.weight (O, I, 7, 7)             stem_conv/kernel (7, 7, I, O)
  bn1.weight / bias                     stem_bn/scale / bias
  bn1.running_mean / running_var        batch_stats stem_bn/mean / var
  layer{i}.{j}.conv{k}.weight           stage_{i}_block_{j}/conv{k}/kernel
  layer{i}.{j}.bn{k}.*                  stage_{i}_block_{j}/bn{k}/*
  layer{i}.{j}.downsample.0.weight      stage_{i}_block_{j}/proj_conv/kernel
  layer{i}.{j}.downsample.1.*           stage_{i}_block_{j}/proj_bn/*
  fc.weight (K, F) / bias               head/fc/kernel (F, K) / bias

`num_batches_tracked` has no counterpart (eo_jax's BatchNorm momentum is
fixed). A truncated model (`num_stages`, resnet18_truncated) takes the
stages it has; the others are skipped. `fc` goes to a linear head of the
same class count; any other head (an MLP head, another class count, none)
is left at its initial value, and the notes say so.
"""
from __future__ import annotations

import re

import numpy as np

from eo_jax.interop.torch_weights import (Conversion, KeyReport, conv_kernel,
                                          dense_kernel)

_BLOCK = re.compile(r"stage_(\d+)_block_(\d+)/(conv\d|bn\d|proj_conv|proj_bn)/"
                    r"(kernel|scale|bias|mean|var)")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
         "mean": "running_mean", "var": "running_var"}
_STEM = {"stem_conv": "conv1", "stem_bn": "bn1"}


def torch_key(path: str) -> str | None:
  """The torchvision key of eo_jax ResNet parameter or statistic `path`."""
  module, _, leaf = path.rpartition("/")
  if module in _STEM and leaf in _LEAF:
    return f"{_STEM[module]}.{_LEAF[leaf]}"
  m = _BLOCK.fullmatch(path)
  if m:
    stage, block, layer, leaf = m.groups()
    layer = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(
        layer, layer)
    return f"layer{stage}.{block}.{layer}.{_LEAF[leaf]}"
  return None


def _stages(paths) -> int:
  found = [int(m.group(1)) for p in paths if (m := re.match(r"stage_(\d+)_", p))]
  return max(found, default=0)


def convert(state_dict: dict[str, np.ndarray], param_shapes: dict,
            stat_shapes: dict) -> tuple[Conversion, KeyReport]:
  """(the converted arrays, what was used, skipped and missing)."""
  params, stats, notes, report = {}, {}, [], KeyReport()
  for shapes, out in ((param_shapes, params), (stat_shapes, stats)):
    for path in shapes:
      if path.startswith("head/"):
        continue
      key = torch_key(path)
      if key is None or key not in state_dict:
        report.missing.append(key or path)
        continue
      value = state_dict[key]
      out[path] = conv_kernel(value) if value.ndim == 4 else np.asarray(value)
      report.used.add(key)

  kept = _stages(param_shapes)
  truncated = sorted({m.group(1) for k in state_dict
                      if (m := re.match(r"layer(\d+)\.", k)) and int(m.group(1)) > kept})
  for key in state_dict:
    m = re.match(r"layer(\d+)\.", key)
    if m and int(m.group(1)) > kept:
      report.skipped[key] = "stage not in this model"
  if truncated:
    notes.append(f"layer{', layer'.join(truncated)}: not in this model (it "
                 f"keeps {kept} stages); skipped")

  _convert_head(state_dict, param_shapes, params, notes, report)
  _hints(state_dict, param_shapes, report)
  return Conversion(params, stats, notes), report


def _convert_head(state_dict, param_shapes, params, notes, report) -> None:
  if "fc.weight" not in state_dict:
    if "head/fc/kernel" in param_shapes:
      notes.append("the checkpoint has no classifier (fc); head left at init")
    return
  weight = state_dict["fc.weight"]
  fc_keys = [k for k in ("fc.weight", "fc.bias") if k in state_dict]
  linear = ("head/fc/kernel" in param_shapes
            and not any(p.startswith("head/hidden/") for p in param_shapes))
  wanted = tuple(param_shapes.get("head/fc/kernel", ()))
  if linear and wanted == tuple(weight.shape[::-1]):
    params["head/fc/kernel"] = dense_kernel(weight)
    if "fc.bias" in state_dict:
      params["head/fc/bias"] = np.asarray(state_dict["fc.bias"])
    report.used.update(fc_keys)
    return
  if not param_shapes.keys() & {"head/fc/kernel"}:
    why = "this model is headless (num_classes=0)"
  elif not linear:
    why = "this model's head is an MLP"
  else:
    why = f"this model has {wanted[-1]} classes"
  notes.append(f"fc ({weight.shape[0]} classes) left out: {why}; head left at init")
  for k in fc_keys:
    report.skipped[k] = why


def _hints(state_dict, param_shapes, report) -> None:
  has_conv3 = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in state_dict)
  wants_conv3 = any("/conv3/" in p for p in param_shapes)
  if has_conv3 and not wants_conv3:
    report.hints.append("The checkpoint has bottleneck blocks (conv3): use "
                        "resnet50 (or block='bottleneck').")
  elif wants_conv3 and not has_conv3:
    report.hints.append("The checkpoint has basic blocks: use resnet18 or "
                        "resnet34 (or block='basic').")
  blocks = {}
  for k in state_dict:
    m = re.match(r"layer(\d+)\.(\d+)\.", k)
    if m:
      stage = int(m.group(1))
      blocks[stage] = max(blocks.get(stage, 0), int(m.group(2)) + 1)
  sizes = tuple(blocks[s] for s in sorted(blocks))
  if sizes:
    report.hints.append(f"The checkpoint's stages have {sizes} blocks "
                        "(ResNet-18 (2, 2, 2, 2), ResNet-34 and -50 "
                        "(3, 4, 6, 3)).")
