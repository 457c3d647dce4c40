"""Reading published PyTorch weights and converting them to eo_jax parameters.

  state_dict = load_state_dict("resnet50.pth")         # or .safetensors
  kind, _ = converter_kind(config.model)              # 'resnet' or 'vit'
  converted = convert_state_dict(state_dict, kind, param_shapes, stat_shapes)

`load_state_dict` reads a `.pth`/`.pt`/`.bin` file with `torch.load(path,
map_location='cpu', weights_only=True)` (PyTorch is imported only then) or
a `.safetensors` file (the `safetensors` package, likewise), and returns
{torch key: numpy array}. A training checkpoint that nests its state dict
under one entry ('model', 'state_dict', ...) is unwrapped, and a prefix every
key shares ('module.' of DistributedDataParallel, 'model.', '_orig_mod.' of
torch.compile) is stripped, both with a log line; a pickled model, or a dict
with several candidate state dicts, is refused with what to save instead.

`convert_state_dict` maps the keys of a torchvision ResNet
(`torch_resnet.py`) or a timm / DINOv2 ViT (`torch_vit.py`) onto the
parameters of the eo_jax model `config.model.name` builds, given the shapes
of that model's parameters and BatchNorm statistics ('/'-joined paths). It
checks the keys both ways: a key the model has no place for, or a parameter
the state dict does not provide, is an error that lists the first few of
each and what to change. A classifier whose class count differs from the
model's, and the stages a truncated ResNet does not have, are left out and
logged. Shapes are compared only where a layout needs them (splitting a
ViT's fused qkv into heads); `init_from` compares the rest, adapting the
band axis of input kernels and position embeddings of another grid.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import numpy as np
from absl import logging

from eo_jax.errors import CheckpointError, ConfigValueError, MissingPackageError

INSTALL_TORCH = ("pip install torch==2.13.0 --index-url "
                 "https://download.pytorch.org/whl/cpu (the CPU build; or pip "
                 "install 'eo_jax[interop]')")
INSTALL_SAFETENSORS = ("pip install safetensors (or pip install "
                       "'eo_jax[interop]')")

# Entries under which training scripts nest the state dict.
_NESTED = ("state_dict", "model", "model_state_dict", "model_state", "module",
           "net", "network", "teacher", "student", "ema", "model_ema")
# Prefixes wrappers put in front of every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# config.model.name -> the converter family.
KINDS = {"resnet": "resnet", "resnet18": "resnet", "resnet34": "resnet",
         "resnet50": "resnet", "resnet18_truncated": "resnet", "vit": "vit"}


@dataclasses.dataclass
class Conversion:
  """A state dict mapped onto an eo_jax model.

  Attributes:
    params: {eo_jax parameter path: array}, '/'-joined, the model's layouts.
    batch_stats: {path: array} of the BatchNorm running statistics.
    notes: what was left out, filled in or worked around, for the log.
  """
  params: dict[str, np.ndarray]
  batch_stats: dict[str, np.ndarray]
  notes: list[str]


@dataclasses.dataclass
class KeyReport:
  """What a converter found, for `check_keys`.

  Attributes:
    used: state-dict keys that went into parameters.
    skipped: {key: why} of keys knowingly left out (a truncated stage, a
      head of another class count).
    missing: torch keys of parameters the model needs and the state dict
      lacks.
    hints: arch-specific advice for the error message.
    keys: the state dict's keys as the converter read them (renamed, e.g.
      DINOv2's chunked blocks); None: as given.
  """
  used: set[str] = dataclasses.field(default_factory=set)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  missing: list[str] = dataclasses.field(default_factory=list)
  hints: list[str] = dataclasses.field(default_factory=list)
  keys: list[str] | None = None


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingPackageError(
        f"Reading the PyTorch checkpoint {path!r} needs PyTorch, which is not "
        f"installed: {INSTALL_TORCH}. Or convert the file to .safetensors "
        "where PyTorch is installed.") from None
  return torch


def _import_safetensors(path: str):
  try:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise MissingPackageError(
        f"Reading {path!r} needs the safetensors package, which is not "
        f"installed: {INSTALL_SAFETENSORS}.") from None
  return safetensors_numpy


def _is_array(value: Any) -> bool:
  return hasattr(value, "shape") and hasattr(value, "dtype")


def _is_state_dict(value: Any) -> bool:
  return (isinstance(value, Mapping) and bool(value)
          and all(isinstance(k, str) and _is_array(v) for k, v in value.items()))


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    # bfloat16 / float16 weights: eo_jax's parameters are float32.
    if value.dtype.name in ("bfloat16", "float16"):
      return value.astype(np.float32)
    return value
  tensor = value.detach().cpu()
  if tensor.is_floating_point() and str(tensor.dtype) not in (
      "torch.float32", "torch.float64"):
    tensor = tensor.float()  # bfloat16 / float16 have no exact numpy twin here
  return tensor.numpy()


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
  """The state dict inside what torch.load / safetensors returned."""
  if _is_state_dict(obj):
    return dict(obj)
  if not isinstance(obj, Mapping):
    raise CheckpointError(
        f"{path!r} holds a {type(obj).__name__}, not a state dict. Save "
        "model.state_dict() with torch.save (or safetensors) and convert that.")
  nested = [k for k in obj if isinstance(k, str) and _is_state_dict(obj[k])]
  if len(nested) == 1:
    logging.info("%s: a checkpoint dict with entries %s; using its %r entry "
                 "as the state dict.", path, sorted(map(str, obj))[:8], nested[0])
    return dict(obj[nested[0]])
  top = sorted(map(str, obj))[:10]
  if len(nested) > 1:
    raise CheckpointError(
        f"{path!r} holds several state dicts ({nested}); it is not clear "
        "which one to load. Save the one you want on its own, e.g. "
        f"torch.save(checkpoint[{nested[0]!r}], 'weights.pth'), or point "
        "config.init_from.source_prefix at it if it is a key prefix.")
  known = [k for k in _NESTED if k in obj]
  raise CheckpointError(
      f"{path!r} is not a state dict: its top-level entries are {top}"
      f"{' (' + repr(known[0]) + ' is not a tensor mapping)' if known else ''}. "
      "Save model.state_dict() with torch.save and convert that.")


def _strip_wrapper_prefixes(state: dict[str, Any], path: str) -> dict[str, Any]:
  changed = True
  while changed and state:
    changed = False
    for prefix in _WRAPPER_PREFIXES:
      if all(k.startswith(prefix) for k in state):
        logging.info("%s: every key starts with %r; stripped it.", path, prefix)
        state = {k[len(prefix):]: v for k, v in state.items()}
        changed = True
  return state


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """{torch key: numpy array} of a .pth/.pt/.bin or .safetensors file.

  Raises:
    CheckpointError: the file is missing, unreadable or not a state dict.
    MissingPackageError: PyTorch (.pth) or safetensors is not installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"The PyTorch checkpoint {path!r} does not exist; "
                          "check config.init_from.torch_checkpoint / --input.")
  if path.endswith(".safetensors"):
    reader = _import_safetensors(path)
    try:
      obj = reader.load_file(path)
    except Exception as e:  # pylint: disable=broad-except; any damage
      raise CheckpointError(f"{path!r} cannot be read as safetensors: "
                            f"{str(e).splitlines()[0][:200]}") from None
  else:
    torch = _import_torch(path)
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pylint: disable=broad-except; see below
      text = str(e)
      # torch names the Python object it refused to unpickle.
      refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
      if refused:
        raise CheckpointError(
            f"{path!r} is not a plain state dict: it holds a pickled "
            f"{refused.group(1)}, which torch.load(weights_only=True) does "
            "not run. Load it where that class is defined and save "
            "model.state_dict() with torch.save.") from None
      why = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
      detail = why.group(1) if why else (text.strip().splitlines() or [""])[0]
      raise CheckpointError(f"{path!r} cannot be read by torch.load (not a "
                            f"PyTorch file, or damaged): {detail[:200]}") from None
  state = _strip_wrapper_prefixes(_unwrap(obj, path), path)
  return {k: _to_numpy(v) for k, v in state.items()}


def select_prefix(state_dict: Mapping[str, np.ndarray], prefix: str
                  ) -> dict[str, np.ndarray]:
  """The keys under a dotted `prefix` ('teacher.backbone'), prefix removed.

  `config.init_from.source_prefix` for a PyTorch checkpoint; '/' works as
  the separator too. '' returns everything.
  """
  prefix = prefix.strip("./").replace("/", ".")
  if not prefix:
    return dict(state_dict)
  head = prefix + "."
  out = {k[len(head):]: v for k, v in state_dict.items() if k.startswith(head)}
  if not out:
    tops = sorted({k.split(".")[0] for k in state_dict})[:12]
    raise CheckpointError(
        f"config.init_from.source_prefix={prefix!r} matches no key of the "
        f"PyTorch checkpoint; its top-level names are {tops}.")
  return out


def converter_kind(model_config: Any) -> tuple[str, str]:
  """(converter family, nested field or '') for `config.model`.

  The model's own name decides ('resnet50' -> 'resnet', 'vit' -> 'vit');
  a model that nests one (a segmentation model's `backbone`) gives that
  one and the field it sits in, whose parameters live under the same name.

  Raises:
    ConfigValueError: neither the model nor a nested model is convertible.
  """
  name = str(model_config.get("name", "") if hasattr(model_config, "get") else "")
  if name in KINDS:
    return KINDS[name], ""
  for key in (model_config.keys() if hasattr(model_config, "keys") else ()):
    value = model_config[key]
    if hasattr(value, "keys") and value.get("name") in KINDS:
      return KINDS[value["name"]], key
  raise ConfigValueError(
      f"config.init_from.torch_checkpoint converts torchvision ResNets and "
      f"timm / DINOv2 ViTs, into config.model.name in {sorted(KINDS)} (or a "
      f"model nesting one, such as a segmentation model's backbone); "
      f"config.model.name={name!r} is none of these.")


def check_keys(state_dict: Mapping[str, Any], report: KeyReport, model: str
               ) -> None:
  """Raises a CheckpointError listing missing and unexpected keys, if any."""
  keys = report.keys if report.keys is not None else list(state_dict)
  unexpected = [k for k in keys if k not in report.used
                and k not in report.skipped
                and not k.endswith("num_batches_tracked")]
  missing = report.missing
  if not unexpected and not missing:
    return
  def few(keys):
    return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)"
                                  if len(keys) > 6 else "")
  parts = []
  if missing:
    parts.append(f"{len(missing)} missing key(s) ({few(missing)})")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected key(s) ({few(unexpected)})")
  hints = " ".join(dict.fromkeys(report.hints))
  raise CheckpointError(
      f"The PyTorch state dict does not fit config.model ({model}): "
      f"{'; '.join(parts)}. Build the model the checkpoint was trained as "
      f"(config.model's name and size fields).{' ' + hints if hints else ''} "
      "If the keys carry a prefix (e.g. 'backbone.'), set "
      "config.init_from.source_prefix to it.")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], kind: str,
                       param_shapes: Mapping[str, tuple[int, ...]],
                       stat_shapes: Mapping[str, tuple[int, ...]], *,
                       model: str = "") -> Conversion:
  """Maps `state_dict` onto the eo_jax model whose shapes are given.

  Args:
    state_dict: {torch key: array}, e.g. from `load_state_dict`.
    kind: 'resnet' or 'vit' (`converter_kind`).
    param_shapes: {'/'-joined path: shape} of the model's parameters.
    stat_shapes: {path: shape} of its BatchNorm statistics ('.../mean',
      '.../var'); empty for a ViT.
    model: the model's name, for messages.

  Raises:
    CheckpointError: keys missing or unexpected (the first few of each are
      listed), or a tensor whose size cannot fit the model's layout.
  """
  from eo_jax.interop import torch_resnet, torch_vit  # pylint: disable=g-import-not-at-top
  converters: dict[str, Callable[..., tuple[Conversion, KeyReport]]] = {
      "resnet": torch_resnet.convert, "vit": torch_vit.convert}
  if kind not in converters:
    raise ConfigValueError(f"No converter {kind!r}; known: {sorted(converters)}.")
  conversion, report = converters[kind](dict(state_dict), dict(param_shapes),
                                        dict(stat_shapes))
  check_keys(state_dict, report, model or kind)
  return conversion


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.ascontiguousarray(np.transpose(weight))
