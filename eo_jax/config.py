"""The configuration schema shared by every experiment.

`base_config()` declares every key the trainer, optimiser and objectives
read, with defaults. Experiment files in configs/ start from it, set what
they change, and return it locked: an override that names a key that does
not exist (`--config.optim.lrr=0.1`) fails instead of being ignored.
Dataset-specific and model-specific keys live in `config.data` and
`config.model`, whose fields are passed to the dataset / model factory as
keyword arguments, so an unknown one fails there with the factory's name.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import types
from typing import Any, Mapping

import ml_collections

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0
  c.objective = "supervised"

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
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses a config-file argument like 'variant=S/8,runlocal=True'.

  Only keys present in `defaults` are accepted; values are Python literals
  where they parse as one and strings otherwise.
  """
  out = ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    if not item.strip():
      continue
    if "=" not in item:
      key, value = item.strip(), True
    else:
      key, text = item.split("=", 1)
      key, value = key.strip(), _literal(text.strip())
    if key not in defaults:
      raise KeyError(f"Unknown config argument {key!r}; this config takes "
                     f"{sorted(defaults)}.")
    out[key] = value
  return out


def config_module(path: str | os.PathLike) -> types.ModuleType:
  """Imports the experiment file at `path` (e.g. 'configs/mae_s2.py')."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Config file {path!r} does not exist (paths are "
                            "relative to the current folder).")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Nodes whose fields are keyword arguments of a dataset or model factory: a
# new field may be added there; the factory rejects one it does not take.
FACTORY_NODES = ("data", "model")


def _is_factory_node(parents: list[str]) -> bool:
  """`data`, `model` and their nested nodes, and `evals.<name>` (with its
  `data`): their fields are checked by the factory that receives them."""
  if parents and parents[0] in FACTORY_NODES:
    return True
  return len(parents) >= 2 and parents[0] == "evals"


def set_dotted(config: ConfigDict, key: str, value: Any) -> None:
  """`config['a']['b'] = value` for key 'a.b'.

  An unknown key fails, except a new field of a factory node (`data.*`,
  `model.*`, `evals.<name>.*`), which the dataset, model or evaluator
  factory checks; a new `evals.<name>` entry may be created this way.
  """
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      if i >= 1 and parents[0] == "evals":
        node[part] = ConfigDict()
      else:
        raise KeyError(f"The config has no key {'.'.join(parents[:i + 1])!r} "
                       f"(setting {key!r}).")
    node = node[part]
  if leaf not in node and not _is_factory_node(parents):
    raise KeyError(f"The config has no key {key!r}.")
  node[leaf] = value


def load_config(spec: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None, *,
                lock: bool = True) -> ConfigDict:
  """Loads 'path/to/config.py[:key=value,...]' as main.py's --config does.

  Args:
    spec: the config file, optionally followed by ':' and its arguments.
    overrides: dotted keys and values applied after `get_config`, like
      `--config.train.steps=10` on the command line; unknown keys fail.
    lock: lock the result (as main.py does) so later unknown keys fail too.
  """
  path, _, arg = os.fspath(spec).partition(":")
  config = config_module(path).get_config(arg or None)
  for key, value in (overrides or {}).items():
    set_dotted(config, key, value)
  if lock:
    config.lock()
  return config
