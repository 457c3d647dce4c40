"""The configuration schema shared by every experiment.

`base_config()` declares every key the trainer, optimiser and objectives
read, with defaults. Experiment files in configs/ start from it, set what
they change, and return it locked: an override that names a key that does
not exist (`--config.optim.lrr=0.1`) fails instead of being ignored.
Dataset-specific and model-specific keys live in `config.data` and
`config.model`, whose fields are passed to the dataset / model factory as
keyword arguments, so an unknown one fails there with the factory's name.

Command-line overrides (`--config.<key>=<value>`) are taken out of argv by
`split_config_overrides` and applied by `load_config` through `set_dotted`,
the one path every caller (main.py, tests, benchmarks, the sweep) shares.
Mistakes raise an `eo_jax.errors.UserError` (ConfigKeyError, ConfigTypeError,
ConfigValueError, ConfigFileError) whose message names the key and the fix.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import importlib.util
import os
import re
import types
from typing import Any, Iterable, Iterator, Mapping, Sequence

import ml_collections

from eo_jax import errors

ConfigDict = ml_collections.ConfigDict


class ConfigKeyError(errors.ConfigError):
  """An unknown config key or config-file argument (a KeyError)."""

  def __str__(self) -> str:
    # KeyError's own __str__ would quote the message and escape its newlines.
    return errors.message(self)


class ConfigFileError(errors.UserError, FileNotFoundError):
  """A config file that does not exist."""


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0
  c.objective = "supervised"
  # How the train state sits on the devices (eo_jax/sharding.py):
  # 'replicated': every device holds all parameters, optimiser and objective
  # state; 'fsdp': arrays of >= 2**14 elements are split over the devices
  # along their largest divisible dimension (fully-sharded data parallelism:
  # ~1/N of the state per device, for models that do not fit replicated).
  # Batches are split over the devices either way; the results are the same
  # to float rounding, and a checkpoint resumes under either value.
  c.sharding = "replicated"

  # Data: `name` picks the dataset factory; the other fields are its kwargs,
  # except the pipeline fields below, which the pipeline reads.
  c.data = ConfigDict()
  c.data.name = "eolearn_sample"

  c.input = ConfigDict()
  c.input.batch_size = 64          # global batch, split over all devices/hosts
  c.input.eval_batch_size = 0      # 0 -> same as batch_size
  c.input.image_size = 0           # 0 -> the dataset's native size
  c.input.worker_count = 0         # Grain worker processes
  c.input.prefetch = 2             # batches buffered ahead of the trainer
  # The only defaults of the training augmentations: the pipeline requires
  # every key below and has none of its own (data/pipeline.py).
  c.input.augment = ConfigDict()
  c.input.augment.random_resized_crop = False
  c.input.augment.crop_scale = (0.5, 1.0)
  c.input.augment.crop_ratio = (0.75, 1.3333333)
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model = ConfigDict()
  c.model.name = "resnet18"

  # Supervised losses.
  c.loss = ConfigDict()
  c.loss.label_smoothing = 0.0
  c.loss.focal_gamma = 0.0          # > 0 switches cross-entropy to focal loss
  c.loss.class_weights = ()         # () -> unweighted
  c.loss.class_weighting = ""       # 'inverse' | 'median': from train counts (segmentation)
  c.loss.dice_weight = 0.0          # segmentation: + weight x soft Dice
  c.loss.aux_weight = 0.4           # segmentation: weight of an auxiliary head's loss

  c.optim = ConfigDict()
  c.optim.name = "adamw"            # sgd | adam | adamw | adadelta
  c.optim.lr = 1e-3
  c.optim.momentum = 0.9            # sgd
  c.optim.nesterov = False          # sgd
  c.optim.b1 = 0.9                  # adam(w)
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.rho = 0.9                 # adadelta
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_end = None   # float -> cosine from weight_decay to it
  c.optim.decay_norms_and_biases = False
  c.optim.schedule = "cosine"       # constant | cosine | polynomial | step
  c.optim.warmup_epochs = 0.0
  c.optim.end_lr_factor = 0.0       # cosine / polynomial end value, x lr
  c.optim.power = 1.0               # polynomial
  c.optim.step_every_epochs = 7.0   # step: lr x step_factor every N epochs
  c.optim.step_factor = 0.1
  c.optim.grad_clip_norm = 0.0      # 0 -> no clipping
  c.optim.layer_decay = 0.0         # 0 -> off; e.g. 0.65 for ViT fine-tuning
  # Parameter groups: tuples of (regex on 'a/b/c' parameter paths, lr multiplier).
  # The first matching group wins; lr multiplier 0 freezes the group.
  c.optim.groups = ()
  c.optim.frozen = ()               # regexes of parameters that never change

  c.train = ConfigDict()
  c.train.epochs = 10.0
  c.train.steps = 0                 # > 0 overrides epochs
  c.train.log_every_steps = 10
  c.train.eval_every_steps = 0      # 0 -> once per epoch
  c.train.checkpoint_every_steps = 0  # 0 -> at every eval
  c.train.keep_checkpoints = 3
  c.train.progress_bar = True
  # Read and check every example of the data before the first step, so that
  # a bad file fails the run at once and not at its final evaluation
  # (eo_jax/data/validate.py). About one extra pass over the data per process.
  c.train.validate_data = True
  c.train.early_stopping = ConfigDict()
  c.train.early_stopping.metric = ""   # '<eval prefix>/<metric>', e.g. 'val/macro_f1'; '' -> off
  c.train.early_stopping.mode = "auto"  # min | max | auto (loss -> min)
  c.train.early_stopping.min_delta = 0.0
  c.train.early_stopping.patience = 5   # evaluations without improvement

  # Evaluators (eo_jax/evaluate/common.py): any number, each with its type
  # ('' -> the objective's own: classification for 'supervised', mean losses
  # for 'mae', ...), data (another dataset; empty -> the training data),
  # split, schedule and metric prefix. Frozen-feature probes are the types
  # 'knn' and 'linear_probe' on a labelled dataset.
  c.evals = ConfigDict()
  c.evals.val = ConfigDict(dict(type="", split="val"))
  c.evals.test = ConfigDict(dict(type="", split="test", every_steps=-1,
                                 final=True))

  c.init_from = ConfigDict()
  c.init_from.workdir = ""          # a run's workdir to take the encoder from
  # Regexes over '/'-joined parameter paths to copy; () -> everything but `head/`.
  c.init_from.params = ()
  # Subtree of the source run's params that holds the encoder, e.g. 'encoder'
  # for MAE runs or 'student/backbone' for DINO runs; '' -> the whole tree.
  c.init_from.source_prefix = ""
  # Subtree of this run's params it goes to, e.g. 'backbone' under a decoder.
  c.init_from.target_prefix = ""
  c.init_from.step = 0              # 0 -> the latest checkpoint
  # Or published PyTorch weights (eo_jax/interop/): a torchvision ResNet or
  # timm / DINOv2 ViT state dict (.pth / .safetensors) for config.model;
  # source_prefix is then a dotted key prefix ('teacher.backbone').
  c.init_from.torch_checkpoint = ""
  # The bands the checkpoint was trained on, in its channel order: a sensor
  # of eo_jax.data.bands.SENSORS, or band names ('B04,B03,B02', 'pan@600').
  c.init_from.checkpoint_bands = "rgb"
  # Input filters for bands the source lacks: 'nearest' (wavelength), 'mean'
  # or 'copy' (zeros); eo_jax/interop/band_adaptation.py.
  c.init_from.band_rule = "nearest"
  return c


def smoke_run(config: ConfigDict, steps: int) -> None:
  """Turns `config` into a few-step `runlocal` run.

  `steps` updates, evaluated halfway and at the end, logged every 2 steps,
  no progress bar; the configs' `runlocal=True` variants use it.
  """
  config.train.epochs = 0
  config.train.steps = steps
  config.train.eval_every_steps = max(steps // 2, 1)
  config.train.log_every_steps = 2
  config.train.progress_bar = False


def probe_evals(config: ConfigDict, data: ConfigDict, *, split: str = "val",
                train_split: str = "train", k: tuple[int, ...] = (10, 20),
                temperature: float = 0.07, epochs: int = 100,
                batch_size: int = 256, image_size: int = 0,
                prefix: str = "probe") -> None:
  """Adds frozen-feature probes of labelled `data` to `config.evals`.

  'knn' (weighted kNN for each k) and 'linear' (a linear probe trained for
  `epochs` full-batch steps), both reported under `prefix`, at every
  evaluation and once more at the end on the reported state.
  """
  common = dict(data=data, split=split, train_split=train_split,
                batch_size=batch_size, image_size=image_size, prefix=prefix,
                final=True)
  config.evals.knn = ConfigDict(dict(type="knn", k=tuple(k),
                                     temperature=temperature, **common))
  config.evals.linear = ConfigDict(dict(type="linear_probe", epochs=epochs,
                                        **common))


def collapse_eval(config: ConfigDict, *, split: str = "val", min_rank: float = 4.0,
                  min_std: float = 0.05, min_prototypes: float = 8,
                  max_uniformity: float = 0.95, batch_size: int = 0) -> None:
  """Adds the 'collapse' diagnostics (eo_jax/evaluate/collapse.py) of the
  training data's `split` to `config.evals`, at every evaluation; a console
  warning when the embeddings' effective rank or normalised std or the
  prototypes in use fall below the thresholds, or DINO's teacher is near
  uniform."""
  config.evals.collapse = ConfigDict(dict(
      type="collapse", split=split, min_rank=float(min_rank),
      min_std=float(min_std), min_prototypes=float(min_prototypes),
      max_uniformity=float(max_uniformity),
      batch_size=int(batch_size)))


def tiny_vit(model: ConfigDict, depth: int = 1) -> None:
  """Makes `config.model` the `runlocal` ViT: patch 4, width 32, 2 heads, MLP 64.

  The MAE, probe and DINO configs share it, so that a tiny MAE run's encoder
  loads into the tiny probe run.
  """
  model.variant = "Ti/4"
  model.width = 32
  model.depth = depth
  model.num_heads = 2
  model.mlp_dim = 64


def _literal(text: str) -> Any:
  """`text` as a Python literal ('3', '1e-3', 'True', 'None', '(1, 2)',
  "'x'"), or the text itself when it is not one ('S/8', '/data/eurosat')."""
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    # literal_eval raises all of these on text that merely is not a literal
    # (TypeError for '{[1]: 2}', the last two for absurdly deep nesting).
    return text


def _close(word: str, candidates: Iterable[str],
           cutoff: float = 0.7) -> list[str]:
  return difflib.get_close_matches(word, sorted(set(candidates)), n=3,
                                   cutoff=cutoff)


def _did_you_mean(matches: Sequence[str]) -> str:
  if not matches:
    return ""
  return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def _typed_argument(default: Any, text: str) -> Any:
  """The value of a config-file argument whose default is `default`.

  A text argument keeps the text as typed ('path=2750' stays '2750' instead
  of becoming an int the config cannot take); a bool one also takes
  'true' / 'false'.
  """
  value = _literal(text)
  if isinstance(default, str) and not isinstance(value, str):
    return text.strip()
  if isinstance(default, bool) and text.strip().lower() in ("true", "false"):
    return text.strip().lower() == "true"
  return value


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses a config-file argument like 'variant=S/8,runlocal=True'.

  Only keys present in `defaults` are accepted; values are Python literals
  where they parse as one and strings otherwise (always strings where the
  default is one); a bare key means True.
  """
  out = ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    if not item.strip():
      continue
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigKeyError(
          f"Unknown config argument {key!r}; this config takes "
          f"{sorted(defaults)}.{_did_you_mean(_close(key, defaults))}")
    value = _typed_argument(defaults[key], text) if has_value else True
    try:
      out[key] = value
    except TypeError:
      raise errors.ConfigTypeError(
          f"Config argument {item.strip()!r} gives {value!r} "
          f"({_a(type(value).__name__)}); {key!r} takes "
          f"{_a(type(defaults[key]).__name__)} like its default "
          f"{defaults[key]!r}.") from None
  return out


def config_module(path: str | os.PathLike) -> types.ModuleType:
  """Imports the experiment file at `path` (e.g. 'configs/mae_s2.py')."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    siblings = ([os.path.join(os.path.dirname(path), f)
                 for f in os.listdir(folder) if f.endswith(".py")]
                if os.path.isdir(folder) else [])
    raise ConfigFileError(
        f"Config file {path!r} does not exist (paths are relative to the "
        f"current folder {os.getcwd()}).{_did_you_mean(_close(path, siblings))}")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --config.<key>=<value>, or --config.<key> followed by the value; absl also
# reads single-dash flags, so '-config.<key>' is an override too.
_OVERRIDE = re.compile(r"^--?config\.(?P<key>[^=]*)(?:=(?P<value>.*))?$",
                       re.DOTALL)


def split_config_overrides(argv: Sequence[str]
                           ) -> tuple[list[str], dict[str, Any]]:
  """Takes the `--config.<key>=<value>` overrides out of a command line.

  Both `--config.a.b=value` and `--config.a.b value` are taken; everything
  else (including `--config=path:args` itself, and anything after a bare
  `--`, where absl stops reading flags) is returned unchanged and in order,
  for absl to parse. Values are Python literals where they parse as one
  ('10', '1e-3', 'True', 'None', '(1, 2)', "'10'") and strings otherwise;
  a key given twice keeps its last value, as absl does for flags.

  Args:
    argv: the command line, e.g. `sys.argv` (the program name is kept).

  Returns:
    (the remaining arguments, {dotted key: value} in command-line order),
    ready for `load_config(spec, overrides)`.

  Raises:
    errors.ConfigValueError: an override without a value or a key.
  """
  remaining: list[str] = []
  overrides: dict[str, Any] = {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--":
      remaining.extend(argv[i:])
      break
    match = _OVERRIDE.match(arg)
    if not match:
      remaining.append(arg)
      i += 1
      continue
    key, text = match["key"].strip(), match["value"]
    if not key or not all(part.strip() for part in key.split(".")):
      raise errors.ConfigValueError(
          f"{arg!r} names no config key; write --config.<key>=<value>, e.g. "
          "--config.optim.lr=0.1.")
    if text is None:
      # The next argument is the value, unless it is another flag: a value
      # starting with '--' must use the '=' form.
      if i + 1 == len(argv) or argv[i + 1].startswith("--"):
        raise errors.ConfigValueError(
            f"{arg} has no value; write {arg}=<value>, e.g. {arg}=True for a "
            "bool field.")
      text = argv[i + 1]
      i += 2
    else:
      i += 1
    overrides.pop(key, None)  # the last value wins, at its own position
    overrides[key] = _literal(text)
  return remaining, overrides


# Nodes whose fields are keyword arguments of a dataset or model factory: a
# new field may be added there; the factory rejects one it does not take.
FACTORY_NODES = ("data", "model")
_FACTORY_KINDS = {"data": "dataset", "model": "model", "evals": "evaluator"}


def _is_factory_node(parents: list[str]) -> bool:
  """`data`, `model` and their nested nodes, and `evals.<name>` (with its
  `data`): their fields are checked by the factory that receives them."""
  if parents and parents[0] in FACTORY_NODES:
    return True
  return len(parents) >= 2 and parents[0] == "evals"


def _fields_under(node: ConfigDict, prefix: str = "") -> Iterator[str]:
  """The dotted key of every field (not group) under `node`."""
  for name in node.keys():
    child = node[name]
    if isinstance(child, ConfigDict):
      yield from _fields_under(child, f"{prefix}{name}.")
    else:
      yield prefix + name


def _suggestions(config: ConfigDict, key: str) -> list[str]:
  """Existing fields close to `key`: the whole key first ('optim.lrr' ->
  'optim.lr'), else its last part anywhere ('train.lr' -> 'optim.lr')."""
  paths = list(_fields_under(config))
  matches = _close(key, paths, cutoff=0.8)[:2]
  if matches:
    return matches
  leaf = key.rsplit(".", 1)[-1]
  names = _close(leaf, [p.rsplit(".", 1)[-1] for p in paths], cutoff=0.8)
  return [p for p in paths if p.rsplit(".", 1)[-1] in names][:2]


def _listing(node: ConfigDict) -> str:
  return ", ".join(sorted(node.keys())) or "nothing"


def _a(type_name: str) -> str:
  return ("an " if type_name[:1] in "aeiou" else "a ") + type_name


def _unknown_key(config: ConfigDict, key: str, found: int
                 ) -> ConfigKeyError:
  """The error for `key`, whose first `found` parts are existing groups."""
  parts = key.split(".")
  parent = ".".join(parts[:found])
  node = config
  for part in parts[:found]:
    node = node[part]
  where = f"config.{parent}" if parent else "the config"
  if found == len(parts) - 1:
    head = f" (config.{parent} has no field {parts[-1]!r})" if parent else ""
  else:
    head = (f" ({where} has no {parts[found]!r})" if parent else
            f" (there is no top-level {parts[0]!r})")
  message = (f"The config has no key {key!r}{head}."
             f"{_did_you_mean(_suggestions(config, key))} "
             f"({where} has: {_listing(node)}.)")
  if _is_factory_node(parts[:found]):
    # Only a group can be missing here: new fields of a factory node pass.
    kind = _FACTORY_KINDS[parts[0]]
    missing = ".".join(parts[:found + 1])
    message += (
        f" The fields of {where} are arguments of the {kind} factory, which "
        f"checks them when it builds the {kind}: a new field may be added, "
        "but not a field of a group that does not exist; set the whole "
        f"value as a dict, e.g. --config.{missing}=\"{{'{parts[found + 1]}'"
        ": <value>}\".")
  return ConfigKeyError(message)


def _type_error(key: str, value: Any, current: Any) -> errors.ConfigTypeError:
  """The error for a value that the field `key`, holding `current`, refuses."""
  want = type(current).__name__
  head = (f"config.{key} cannot be set to {value!r} "
          f"({_a(type(value).__name__)})")
  if current is None:  # a typed placeholder (ml_collections FieldReference)
    return errors.ConfigTypeError(
        f"{head}: the field is empty but typed; give a value of its type.")
  if isinstance(current, ConfigDict):
    return errors.ConfigTypeError(
        f"{head}: it is a group of settings ({_listing(current)}); set one "
        f"of them, e.g. --config.{key}.<field>=<value>, or give a dict.")
  if isinstance(current, bool):
    hint = "Write True or False."
  elif isinstance(current, str):
    hint = (f"Values are read as Python literals; to give {value!r} as text, "
            f"quote it: --config.{key}='\"{value}\"'.")
  elif isinstance(current, (int, float)):
    hint = f"Give a number, e.g. --config.{key}={current!r}."
  elif isinstance(current, (tuple, list)):
    if isinstance(value, str):
      example = tuple(v.strip() for v in value.split(","))
    else:
      example = current or ("a", "b")
    hint = f"Give a tuple, e.g. --config.{key}=\"{tuple(example)!r}\"."
  else:
    hint = f"Give {_a(want)}."
  return errors.ConfigTypeError(
      f"{head}: it takes {_a(want)} (now {current!r}). {hint}")


def set_dotted(config: ConfigDict, key: str, value: Any) -> None:
  """`config['a']['b'] = value` for key 'a.b'; works on a locked config.

  An unknown key fails, except a new field of a factory node (`data.*`,
  `model.*`, `evals.<name>.*`), which the dataset, model or evaluator
  factory checks; a new `evals.<name>` entry may be created this way. A
  field that holds None takes a value of any type; a bool field also takes
  'true' / 'false'.

  Raises:
    ConfigKeyError: the key does not exist (with the closest existing keys).
    errors.ConfigTypeError: the field cannot take a value of this type.
  """
  parts = key.split(".")
  if not all(parts):
    raise ConfigKeyError(f"{key!r} is not a dotted config key like "
                         "'optim.lr'.")
  *parents, leaf = parts
  node = config
  for i, part in enumerate(parents):
    if part not in node and i >= 1 and parents[0] == "evals":
      # A new evaluator (or a node of one): its factory checks the fields.
      with node.unlocked():
        node[part] = ConfigDict()
    elif part not in node:
      raise _unknown_key(config, key, i)
    elif not isinstance(node[part], ConfigDict):
      prefix = ".".join(parts[:i + 1])
      raise ConfigKeyError(
          f"Cannot set config.{key}: config.{prefix} is a value "
          f"({node[part]!r}), not a group of settings. Set it whole, e.g. "
          f"--config.{prefix}=\"{{'{parts[i + 1]}': <value>}}\" where it "
          "takes a dict.")
    node = node[part]
  exists = leaf in node
  if not exists and not _is_factory_node(parents):
    raise _unknown_key(config, key, len(parents))
  current = node[leaf] if exists else None
  if (isinstance(current, bool) and isinstance(value, str)
      and value.strip().lower() in ("true", "false")):
    value = value.strip().lower() == "true"
  # Only a factory node takes new fields, checked above; unlocking it lets
  # them in even after `lock()` (the sweep overrides locked configs).
  adding = contextlib.nullcontext() if exists else node.unlocked()
  try:
    with adding:
      node[leaf] = value
  except TypeError:
    raise _type_error(key, value, current) from None


def load_config(spec: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None, *,
                lock: bool = True) -> ConfigDict:
  """Loads 'path/to/config.py[:key=value,...]' with overrides, as main.py does.

  Args:
    spec: the config file, optionally followed by ':' and its arguments.
    overrides: dotted keys and values applied after `get_config` with
      `set_dotted`, like `--config.train.steps=10` on the command line (see
      `split_config_overrides`); unknown keys fail, all reported at once.
    lock: lock the result (as main.py does) so later unknown keys fail too.

  Raises:
    errors.UserError: a missing config file, an unknown config argument or
      key, or a value of the wrong type; the message says which and the fix.
  """
  path, _, arg = os.fspath(spec).partition(":")
  module = config_module(path)
  try:
    config = module.get_config(arg or None)
  except (ConfigKeyError, errors.ConfigTypeError) as e:  # from parse_arg
    raise type(e)(f"{path}: {errors.message(e)}") from None
  failed = []
  for key, value in (overrides or {}).items():
    try:
      set_dotted(config, key, value)
    except errors.UserError as e:
      failed.append(e)
  if failed:
    # Every mistake at once, rather than one per attempt.
    raise type(failed[0])("\n".join(errors.message(e) for e in failed))
  if lock:
    config.lock()
  return config
