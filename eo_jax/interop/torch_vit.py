"""timm and DINOv2 ViT state dicts -> eo_jax ViT parameters.

Both name the pieces alike; eo_jax's paths are those of eo_jax/models/vit.py:

  patch_embed.proj.weight (D, C, p, p)  embedding/kernel (p, p, C, D)
  cls_token (1, 1, D)                   cls
  pos_embed (1, P + N, D)               cls_pos_embedding (1, 1, D) and
                                        pos_embedding (1, gh, gw, D)
  register_tokens / reg_token (1, R, D) registers
  mask_token (1, D) (DINOv2)            mask_token (1, 1, D)
  blocks.i.norm1 / norm2                block_i/norm1 / norm2
  blocks.i.attn.qkv (3D, D)             block_i/attn/{query,key,value}
                                        kernels (D, H, hd), biases (H, hd)
  blocks.i.attn.proj (D, D)             block_i/attn/out (H, hd, D)
  blocks.i.ls1.gamma / ls2.gamma        block_i/ls1/scale / ls2/scale
  blocks.i.mlp.fc1 / fc2                block_i/mlp/fc1 / fc2
  blocks.i.mlp.w12 / w3 (SwiGLU)        block_i/mlp/w12 / w3
  norm                                  encoder_norm
  head (K, D) (timm)                    head/kernel (D, K)

The fused qkv projection's output rows are [q; k; v], and within each the
heads are contiguous (timm and DINOv2 reshape to (3, heads, head_dim)), so
q's rows [0, D) become (D, H, hd) by a transpose and a reshape; the output
projection's input columns are (heads, head_dim) likewise. DINOv2's w12
computes silu(first half) * second half, eo_jax's SwiGLU the same.

Position embeddings: DINOv2's pos_embed holds the class token's entry
first, then the patches; registers get none. timm's holds the patches only
(`no_embed_class=True`; cls and registers then get none: a zero
`cls_pos_embedding`), or one entry per prefix token first (cls, then each
register; a register's entry is added to its token, which is the same). The
split is chosen so that the patch count is this model's, or a square. A
grid other than the model's is resized by `init_from` (the ViT's
`adapt_param`, bilinear); DINOv2 itself interpolates bicubically, so at
another resolution the outputs are close to DINOv2's but not identical.

Not representable, and refused by name: a ViT without class token (timm
`class_token=False`), timm's norm after pooling (`fc_norm`, its
global_pool='avg' default), a norm before the blocks (`norm_pre`), q/k
norms. DINOv2 training checkpoints with chunked blocks ('blocks.c.i.') are
read as 'blocks.i.'. Biases a checkpoint does not have (qkv_bias=False)
are zeros, LayerScale it does not have is ones; both exact.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

from eo_jax.errors import CheckpointError
from eo_jax.interop.torch_weights import (Conversion, KeyReport, conv_kernel,
                                          dense_kernel)

_QKV = {"query": 0, "key": 1, "value": 2}
_NORMS = {"norm1": "norm1", "norm2": "norm2"}
_LN_LEAF = {"scale": "weight", "bias": "bias"}
_UNSUPPORTED = {
    "fc_norm.": "timm's fc_norm (a norm after pooling, the default of "
                "global_pool='avg') has no place in eo_jax's ViT, which "
                "normalises tokens before pooling.",
    "norm_pre.": "timm's norm_pre (a norm before the blocks) has no place in "
                 "eo_jax's ViT.",
    "q_norm.": "q/k norms (qk_norm=True) are not supported.",
    "k_norm.": "q/k norms (qk_norm=True) are not supported.",
}


def _unchunk(state_dict: dict[str, np.ndarray], notes: list[str]) -> dict:
  """'blocks.<chunk>.<i>.' -> 'blocks.<i>.' (DINOv2's block_chunks)."""
  chunked = [k for k in state_dict if re.match(r"blocks\.\d+\.\d+\.", k)]
  if not chunked:
    return state_dict
  notes.append("blocks stored in chunks (blocks.<chunk>.<i>.); read as "
               "blocks.<i>.")
  return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v
          for k, v in state_dict.items()}


def _shape_error(key: str, value: np.ndarray, path: str, shape) -> CheckpointError:
  return CheckpointError(
      f"{key} {tuple(value.shape)} cannot fill {path} {tuple(shape)}: the "
      "checkpoint's width or head count differs from config.model's. Set "
      "config.model.width / num_heads / mlp_dim to the checkpoint's.")


class _Reader:
  """Fetches state-dict entries, recording what was used and what is missing."""

  def __init__(self, state_dict: dict[str, np.ndarray], report: KeyReport):
    self.state_dict = state_dict
    self.report = report

  def get(self, key: str) -> np.ndarray | None:
    if key in self.state_dict:
      self.report.used.add(key)
      return np.asarray(self.state_dict[key])
    return None

  def need(self, key: str) -> np.ndarray | None:
    value = self.get(key)
    if value is None:
      self.report.missing.append(key)
    return value


def _block_param(read: _Reader, i: int, rest: str, shape: tuple, path: str,
                 notes: list[str]) -> np.ndarray | None:
  """The array for `block_<i>/<rest>` of the given target shape."""
  pre = f"blocks.{i}."
  module, _, leaf = rest.rpartition("/")
  if module in _NORMS:
    return read.need(f"{pre}{module}.{_LN_LEAF[leaf]}")
  m = re.fullmatch(r"attn/(query|key|value)", module)
  if m:
    part = _QKV[m.group(1)]
    key = f"{pre}attn.qkv.{'weight' if leaf == 'kernel' else 'bias'}"
    value = read.get(key)
    if value is None:
      if leaf == "bias" and f"{pre}attn.qkv.weight" in read.state_dict:
        return np.zeros(shape, np.float32)  # qkv_bias=False
      read.report.missing.append(key)
      return None
    width = value.shape[0] // 3
    rows = value[part * width:(part + 1) * width]
    array = dense_kernel(rows) if leaf == "kernel" else rows
    if array.size != math.prod(shape):
      raise _shape_error(key, value, path, shape)
    return array.reshape(shape)
  if module == "attn/out":
    key = f"{pre}attn.proj.{'weight' if leaf == 'kernel' else 'bias'}"
    value = read.get(key)
    if value is None:
      if leaf == "bias" and f"{pre}attn.proj.weight" in read.state_dict:
        return np.zeros(shape, np.float32)
      read.report.missing.append(key)
      return None
    array = dense_kernel(value) if leaf == "kernel" else value
    if array.size != math.prod(shape):
      raise _shape_error(key, value, path, shape)
    return array.reshape(shape)
  m = re.fullmatch(r"mlp/(fc1|fc2|w12|w3)", module)
  if m:
    key = f"{pre}mlp.{m.group(1)}.{'weight' if leaf == 'kernel' else 'bias'}"
    value = read.get(key)
    if value is None:
      if leaf == "bias" and key.replace(".bias", ".weight") in read.state_dict:
        return np.zeros(shape, np.float32)  # ffn_bias=False
      read.report.missing.append(key)
      return None
    return dense_kernel(value) if leaf == "kernel" else value
  m = re.fullmatch(r"(ls1|ls2)", module)
  if m and leaf == "scale":
    value = read.get(f"{pre}{m.group(1)}.gamma")
    if value is None:
      if "LayerScale" not in " ".join(notes):
        notes.append("no LayerScale in the checkpoint: scales set to 1")
      return np.ones(shape, np.float32)
    return value
  read.report.missing.append(f"(no torch key for {path})")
  return None


def _split_pos_embed(pos: np.ndarray, grid: tuple[int, int],
                     registers: int, dinov2: bool, notes: list[str]
                     ) -> tuple[int, np.ndarray]:
  """(prefix entries, the patch table as (1, gh, gw, D)) of `pos_embed`."""
  length, width = pos.shape[1], pos.shape[-1]
  choices = [1] if dinov2 else sorted({0, 1 + registers})
  n = grid[0] * grid[1]
  exact = [p for p in choices if length - p == n]
  if exact:
    p = exact[0]
    return p, pos[:, p:].reshape(1, *grid, width)
  square = [p for p in choices if length - p > 0
            and math.isqrt(length - p) ** 2 == length - p]
  if len(square) != 1:
    raise CheckpointError(
        f"pos_embed {tuple(pos.shape)} does not split into {choices} prefix "
        f"entries and a square grid of patches (this model has a "
        f"{grid[0]}x{grid[1]} grid). Set config.model.posemb_grid or the "
        "image size to the checkpoint's.")
  p = square[0]
  side = math.isqrt(length - p)
  notes.append(f"pos_embed: a {side}x{side} grid, resized to {grid[0]}x"
               f"{grid[1]} bilinearly by init_from (DINOv2 interpolates "
               "bicubically: outputs close to, not equal to, DINOv2's)")
  return p, pos[:, p:].reshape(1, side, side, width)


def convert(state_dict: dict[str, np.ndarray], param_shapes: dict,
            stat_shapes: dict) -> tuple[Conversion, KeyReport]:
  """(the converted arrays, what was used, skipped and missing)."""
  notes: list[str] = []
  report = KeyReport()
  state_dict = _unchunk(state_dict, notes)
  report.keys = list(state_dict)
  read = _Reader(state_dict, report)
  params: dict[str, np.ndarray] = {}
  dinov2 = "register_tokens" in state_dict or "mask_token" in state_dict
  reg_key = "register_tokens" if "register_tokens" in state_dict else "reg_token"
  registers = state_dict[reg_key].shape[1] if reg_key in state_dict else 0

  pos_prefix, pos_table = 0, None
  if "pos_embedding" in param_shapes:
    pos = read.need("pos_embed")
    if pos is not None:
      grid = tuple(param_shapes["pos_embedding"][1:3])
      pos_prefix, pos_table = _split_pos_embed(pos, grid, registers, dinov2,
                                               notes)

  simple: dict[str, Callable[[], np.ndarray | None]] = {
      "embedding/kernel": lambda: _conv(read.need("patch_embed.proj.weight")),
      "embedding/bias": lambda: read.get("patch_embed.proj.bias"),
      "cls": lambda: read.need("cls_token"),
      "encoder_norm/scale": lambda: read.need("norm.weight"),
      "encoder_norm/bias": lambda: read.need("norm.bias"),
  }
  for path, shape in param_shapes.items():
    m = re.fullmatch(r"block_(\d+)/(.+)", path)
    if m:
      value = _block_param(read, int(m.group(1)), m.group(2), tuple(shape),
                           path, notes)
    elif path in simple:
      value = simple[path]()
      if value is None and path == "embedding/bias":
        value = np.zeros(shape, np.float32)
    elif path == "pos_embedding":
      value = pos_table
    elif path == "cls_pos_embedding":
      if pos_table is None:
        continue  # pos_embed is missing, and reported as such
      if pos_prefix:
        value = state_dict["pos_embed"][:, :1]
      else:
        value = np.zeros(shape, np.float32)
        notes.append("pos_embed has no class-token entry: cls_pos_embedding "
                     "set to zero")
    elif path == "registers":
      value = read.need(reg_key)
      if value is not None and pos_prefix == 1 + registers and registers:
        value = value + state_dict["pos_embed"][:, 1:1 + registers]
        notes.append("pos_embed entries of the registers added to them")
    elif path == "mask_token":
      value = read.get("mask_token")
      if value is None:
        notes.append("no mask_token in the checkpoint; left at init")
        continue
      value = value.reshape(shape)
    elif path.startswith("head/"):
      continue
    else:
      report.missing.append(f"(no torch key for {path})")
      continue
    if value is not None:
      params[path] = np.asarray(value)

  if "mask_token" in state_dict and "mask_token" not in param_shapes:
    report.skipped["mask_token"] = "this model has no mask token"
  _convert_head(state_dict, param_shapes, stat_shapes, params, notes, report)
  _hints(state_dict, param_shapes, registers, report)
  return Conversion(params, {}, notes), report


def _conv(weight):
  return None if weight is None else conv_kernel(weight)


def _convert_head(state_dict, param_shapes, stat_shapes, params, notes,
                  report) -> None:
  keys = [k for k in ("head.weight", "head.bias") if k in state_dict]
  if not keys:
    if "head/kernel" in param_shapes:
      notes.append("the checkpoint has no classifier; head left at init")
    return
  weight = state_dict["head.weight"]
  wanted = tuple(param_shapes.get("head/kernel", ()))
  if "head/kernel" not in param_shapes:
    why = "this model is headless (num_classes=0)"
  elif any(p.startswith("head/norm/") for p in stat_shapes):
    why = "this model's head has a BatchNorm (head_norm=True)"
  elif wanted != tuple(weight.shape[::-1]):
    why = f"this model has {wanted[-1]} classes"
  else:
    params["head/kernel"] = dense_kernel(weight)
    if "head.bias" in state_dict:
      params["head/bias"] = np.asarray(state_dict["head.bias"])
    report.used.update(keys)
    return
  notes.append(f"head ({weight.shape[0]} classes) left out: {why}; head "
               "left at init")
  for k in keys:
    report.skipped[k] = why


def _hints(state_dict, param_shapes, registers, report) -> None:
  keys = " ".join(state_dict)
  for prefix, why in _UNSUPPORTED.items():
    if prefix in keys:
      report.hints.append(why)
  if "cls_token" not in state_dict:
    report.hints.append("The checkpoint has no class token (timm "
                        "class_token=False); eo_jax's ViT always has one.")
  want_registers = param_shapes.get("registers", (0, 0))[1]
  if registers != want_registers:
    report.hints.append(f"The checkpoint has {registers} register tokens: set "
                        f"config.model.num_registers={registers}.")
  if ".ls1.gamma" in keys and not any("/ls1/" in p for p in param_shapes):
    report.hints.append("The checkpoint has LayerScale (ls1.gamma): set "
                        "config.model.layerscale_init (e.g. 1e-5).")
  if ".mlp.w12." in keys and not any("/mlp/w12/" in p for p in param_shapes):
    report.hints.append("The checkpoint's FFN is SwiGLU (mlp.w12): set "
                        "config.model.ffn='swiglu'.")
  if ".mlp.fc1." in keys and not any("/mlp/fc1/" in p for p in param_shapes):
    report.hints.append("The checkpoint's FFN is a GELU MLP (mlp.fc1): set "
                        "config.model.ffn='mlp'.")
  if "pos_embed" in state_dict and "pos_embedding" not in param_shapes:
    report.hints.append("The checkpoint has a learned pos_embed: set "
                        "config.model.posemb='learn'.")
  depth = len({m.group(1) for k in state_dict
               if (m := re.match(r"blocks\.(\d+)\.", k))})
  want = len({m.group(1) for p in param_shapes
              if (m := re.match(r"block_(\d+)/", p))})
  if depth != want:
    report.hints.append(f"The checkpoint has {depth} blocks: set "
                        f"config.model.depth={depth}.")
