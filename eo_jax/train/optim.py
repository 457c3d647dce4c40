"""Builds the optimiser and learning-rate schedule from `config.optim`.

`make_optimizer(config.optim, params, steps_per_epoch=..., total_steps=...)`
returns an `optax.GradientTransformation` and the schedule `lr(step)` (the
base rate, before any per-parameter multiplier) so the trainer can log it.

The update applied to a parameter is, in order:

  1. frozen parameters (`optim.frozen`, or a group with multiplier 0) get a
     zero update and no optimiser state (`optax.multi_transform`);
  2. the trainable gradients are clipped to `grad_clip_norm` by global norm;
  3. sgd / adam / adadelta add the L2 term `weight_decay * param` to the
     gradient (coupled decay, as PyTorch's `weight_decay`); adamw adds it
     after Adam's scaling (decoupled, Loshchilov & Hutter);
  4. the optimiser's own scaling (momentum, Adam moments, Adadelta);
  5. `-lr(step) * multiplier(param)`, the multiplier being the product of the
     parameter's group multiplier and its layer-wise decay factor.

Weight decay skips parameters with `ndim <= 1` (biases, norm scales and
offsets) unless `decay_norms_and_biases` is set. With `weight_decay_end`
set (not None), the decay rate follows a cosine from `weight_decay` at step
0 to `weight_decay_end` at `total_steps` (DINOv2: 0.04 -> 0.4).

Parameter paths are the '/'-joined keys of the params tree, e.g.
'head/kernel' or 'block_3/attn/qkv/bias'. Regexes in `groups` and `frozen`
are matched with `re.search`, so 'head' matches every parameter under a
`head` module; anchor them ('^head/') to be strict.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from eo_jax import schedules
from eo_jax.errors import ConfigValueError

PyTree = Any
Schedule = Callable[[Any], jax.Array]

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULES = ("constant", "cosine", "polynomial", "step")

_FROZEN = "frozen"
_TRAINABLE = "trainable"


def param_path(key_path: Sequence[Any]) -> str:
  """'a/b/c' from a `jax.tree_util` key path."""
  parts = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def param_paths(params: PyTree) -> PyTree:
  """A tree like `params` whose leaves are the leaves' '/'-joined paths."""
  return jax.tree_util.tree_map_with_path(lambda p, _: param_path(p), params)


# ---------------------------------------------------------------------------
# Learning-rate schedules.
# ---------------------------------------------------------------------------


def make_schedule(optim_config: Any, *, steps_per_epoch: int,
                  total_steps: int) -> Schedule:
  """The base learning rate as a function of the (0-based) update step.

  Every schedule starts with a linear warmup from 0 at step 0 to its value at
  `warmup_epochs * steps_per_epoch` (optax's convention: the very first
  update of a warmed-up run has rate 0). After the warmup:

  * constant: `lr`;
  * cosine: from `lr` down to `end_lr_factor * lr` at `total_steps`;
  * polynomial: `end + (lr - end) * (1 - t / T) ** power` over the same span;
  * step: `lr * step_factor ** floor(epoch / step_every_epochs)`, counted from
    step 0 (the warmup does not shift the boundaries).
  """
  name = optim_config.schedule
  if name not in SCHEDULES:
    raise ConfigValueError(f"Unknown learning-rate schedule {name!r}; set "
                     f"config.optim.schedule to one of {list(SCHEDULES)}.")
  if steps_per_epoch <= 0:
    raise ConfigValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
  if total_steps <= 0:
    raise ConfigValueError(f"total_steps must be positive, got {total_steps}.")
  lr = float(optim_config.lr)
  end_lr = lr * float(optim_config.end_lr_factor)
  warmup_steps = float(optim_config.warmup_epochs) * steps_per_epoch
  if warmup_steps < 0:
    raise ConfigValueError("config.optim.warmup_epochs must be >= 0, got "
                     f"{optim_config.warmup_epochs}.")
  decay_steps = total_steps - warmup_steps
  if name in ("cosine", "polynomial") and decay_steps <= 0:
    raise ConfigValueError(
        f"The {name} schedule has no steps left after the warmup: warmup is "
        f"{warmup_steps:g} steps ({optim_config.warmup_epochs} epochs) and "
        f"training {total_steps} steps. Lower config.optim.warmup_epochs.")

  power = float(optim_config.power)
  factor = float(optim_config.step_factor)
  every = float(optim_config.step_every_epochs) * steps_per_epoch
  if name == "step" and every <= 0:
    raise ConfigValueError("config.optim.step_every_epochs must be positive, got "
                     f"{optim_config.step_every_epochs}.")
  # Integer division where the period is a whole number of steps, so that
  # float rounding cannot move a boundary by one step.
  every_int = round(every) if abs(every - round(every)) < 1e-6 else None

  def after_warmup(step: jax.Array) -> jax.Array:
    if name == "constant":
      return jnp.full(step.shape, lr, jnp.float32)
    if name == "step":
      if every_int is not None:
        n = jnp.floor_divide(step.astype(jnp.int32), every_int)
      else:
        n = jnp.floor(step.astype(jnp.float32) / every)
      return lr * factor ** n.astype(jnp.float32)
    t = jnp.clip(step.astype(jnp.float32) - warmup_steps, 0.0, decay_steps)
    if name == "cosine":
      cos = 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay_steps))
      return end_lr + (lr - end_lr) * cos
    return end_lr + (lr - end_lr) * (1.0 - t / decay_steps) ** power

  # The warmup ramps towards the schedule's value where the warmup ends.
  peak = lr
  if name == "step" and warmup_steps > 0:
    peak = lr * factor ** math.floor(warmup_steps / every + 1e-9)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step)
    value = after_warmup(step)
    if warmup_steps > 0:
      ramp = peak * step.astype(jnp.float32) / warmup_steps
      value = jnp.where(step < warmup_steps, ramp, value)
    return value.astype(jnp.float32)

  return schedule


# ---------------------------------------------------------------------------
# Per-parameter multipliers.
# ---------------------------------------------------------------------------


def _check_patterns(entries: Sequence[str], paths: list[str], what: str) -> None:
  for pattern in entries:
    try:
      regex = re.compile(pattern)
    except re.error as e:
      raise ConfigValueError(f"config.optim.{what}: bad regex {pattern!r}: {e}.") from None
    if not any(regex.search(p) for p in paths):
      shown = paths if len(paths) <= 20 else paths[:20] + ["..."]
      raise ConfigValueError(
          f"config.optim.{what}: regex {pattern!r} matches no parameter. "
          f"Parameter paths look like {shown}.")


def _parse_groups(groups: Any) -> list[tuple[str, float]]:
  out = []
  for entry in groups or ():
    if (not isinstance(entry, (tuple, list)) or len(entry) != 2
        or not isinstance(entry[0], str)):
      raise ConfigValueError(
          "config.optim.groups must be a tuple of (regex, lr_multiplier) "
          f"pairs, e.g. (('^head/', 10.0),); got the entry {entry!r}.")
    multiplier = float(entry[1])
    if multiplier < 0:
      raise ConfigValueError(f"config.optim.groups: negative lr multiplier for "
                       f"{entry[0]!r}: {multiplier}.")
    out.append((entry[0], multiplier))
  return out


def lr_multipliers(optim_config: Any, params: PyTree,
                   layer_id_fn: Callable[[str], int] | None = None) -> PyTree:
  """Per-parameter learning-rate multipliers (0.0 for frozen parameters).

  A parameter's multiplier is its group's (first matching regex in
  `optim.groups`, 1.0 when none matches) times `layer_decay ** (L - id)`
  when layer-wise decay is on, where `id = layer_id_fn(path)` and `L` is the
  largest id over all parameters. Parameters matched by `optim.frozen` get 0.
  """
  paths = param_paths(params)
  flat_paths = jax.tree_util.tree_leaves(paths)
  groups = _parse_groups(optim_config.groups)
  frozen = tuple(optim_config.frozen or ())
  if isinstance(frozen, str):
    raise ConfigValueError("config.optim.frozen must be a tuple of regexes, e.g. "
                     f"('^head/',), not the string {frozen!r}.")
  _check_patterns([g for g, _ in groups], flat_paths, "groups")
  _check_patterns(frozen, flat_paths, "frozen")

  layer_decay = float(optim_config.layer_decay)
  layer_ids = None
  if layer_decay > 0:
    if layer_id_fn is None:
      raise ConfigValueError(
          f"config.optim.layer_decay={layer_decay} needs a model that assigns "
          "layers to parameters (a layer_id_fn); this model has none. Set "
          "config.optim.layer_decay=0.")
    layer_ids = {p: int(layer_id_fn(p)) for p in flat_paths}
    if min(layer_ids.values()) < 0:
      raise ConfigValueError("layer_id_fn returned a negative layer id.")
    num_layers = max(layer_ids.values())

  def multiplier(path: str) -> float:
    if any(re.search(f, path) for f in frozen):
      return 0.0
    m = next((mult for regex, mult in groups if re.search(regex, path)), 1.0)
    if layer_ids is not None:
      m *= layer_decay ** (num_layers - layer_ids[path])
    return m

  return jax.tree_util.tree_map(multiplier, paths)


def _scale_by_tree(multipliers: PyTree) -> optax.GradientTransformation:
  return optax.stateless(
      lambda updates, params: jax.tree_util.tree_map(
          lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers))


# ---------------------------------------------------------------------------
# The optimiser.
# ---------------------------------------------------------------------------


def _decay_mask(decay_all: bool) -> Callable[[PyTree], PyTree]:
  return lambda params: jax.tree_util.tree_map(
      lambda p: bool(decay_all or jnp.ndim(p) > 1), params)


def _weight_decay(c: Any, total_steps: int) -> float | Schedule:
  """The decay rate: a constant, or a cosine to `weight_decay_end`."""
  wd = float(c.weight_decay)
  end = c.get("weight_decay_end", None) if hasattr(c, "get") else None
  if end is None:
    return wd
  if float(end) < 0 or wd < 0:
    raise ConfigValueError(f"config.optim.weight_decay ({wd}) and weight_decay_end "
                     f"({end}) must be >= 0.")
  return schedules.cosine(wd, float(end), total_steps)


def _base_scaling(c: Any, total_steps: int) -> list[optax.GradientTransformation]:
  """Steps 3-4 of the module docstring for `c.name`."""
  wd = _weight_decay(c, total_steps)
  decay = (optax.add_decayed_weights(wd, _decay_mask(c.decay_norms_and_biases))
           if callable(wd) or wd > 0 else None)
  if c.name == "sgd":
    scale = ([optax.trace(decay=float(c.momentum), nesterov=bool(c.nesterov))]
             if float(c.momentum) > 0 else [])
    return ([decay] if decay else []) + scale
  if c.name == "adam":
    return ([decay] if decay else []) + [
        optax.scale_by_adam(b1=float(c.b1), b2=float(c.b2), eps=float(c.eps))]
  if c.name == "adamw":
    return [optax.scale_by_adam(b1=float(c.b1), b2=float(c.b2),
                                eps=float(c.eps))] + ([decay] if decay else [])
  if c.name == "adadelta":
    return ([decay] if decay else []) + [
        optax.scale_by_adadelta(rho=float(c.rho), eps=float(c.eps))]
  raise ConfigValueError(f"Unknown optimiser {c.name!r}; set config.optim.name to "
                   f"one of {list(OPTIMIZERS)}.")


def make_optimizer(
    optim_config: Any,
    params: PyTree,
    *,
    steps_per_epoch: int,
    total_steps: int,
    layer_id_fn: Callable[[str], int] | None = None,
) -> tuple[optax.GradientTransformation, Schedule]:
  """Builds the optimiser described by `config.optim` for `params`.

  Args:
    optim_config: `config.optim` (see eo_jax/config.py for the fields).
    params: the trainable parameters (or a tree of the same structure and
      shapes); used for paths, shapes and masks, not modified.
    steps_per_epoch: optimiser updates per epoch; epochs in the config are
      converted with it.
    total_steps: length of training in updates (the end of cosine/polynomial).
    layer_id_fn: maps a parameter path to its layer in [0, L] (0 = embedding,
      L = head); required when `optim.layer_decay > 0`.

  Returns:
    `(tx, lr_fn)`: the transformation and the base schedule `lr_fn(step)`.
  """
  if optim_config.name not in OPTIMIZERS:
    raise ConfigValueError(f"Unknown optimiser {optim_config.name!r}; set "
                     f"config.optim.name to one of {list(OPTIMIZERS)}.")
  schedule = make_schedule(optim_config, steps_per_epoch=steps_per_epoch,
                           total_steps=total_steps)
  multipliers = lr_multipliers(optim_config, params, layer_id_fn)

  inner = []
  if float(optim_config.grad_clip_norm) > 0:
    inner.append(optax.clip_by_global_norm(float(optim_config.grad_clip_norm)))
  inner += _base_scaling(optim_config, total_steps)
  inner.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*inner)

  labels = jax.tree_util.tree_map(
      lambda m: _FROZEN if m == 0.0 else _TRAINABLE, multipliers)
  if _FROZEN in jax.tree_util.tree_leaves(labels):
    # Frozen leaves reach the inner chain as empty `MaskedNode`s: they get no
    # state and do not count towards the clipping norm.
    tx = optax.multi_transform(
        {_TRAINABLE: tx, _FROZEN: optax.set_to_zero()}, labels)
  if any(m not in (0.0, 1.0) for m in jax.tree_util.tree_leaves(multipliers)):
    tx = optax.chain(tx, _scale_by_tree(multipliers))
  return tx, schedule


def describe_multipliers(optim_config: Any, params: PyTree,
                         layer_id_fn: Callable[[str], int] | None = None
                         ) -> Mapping[str, float]:
  """{path: lr multiplier} for logging which parameters train how fast."""
  multipliers = lr_multipliers(optim_config, params, layer_id_fn)
  return dict(zip(jax.tree_util.tree_leaves(param_paths(params)),
                  jax.tree_util.tree_leaves(multipliers)))
