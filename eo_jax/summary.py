r"""Per-layer model summary: output shapes, parameters, FLOPs, receptive field.

  python -m eo_jax.summary --config=configs/quickstart.py
  python -m eo_jax.summary --config=configs/quickstart.py --bands=13 \
      --image_size=64 --config.model.name=resnet18

`summarize(model, image_shape)` works for any Linen model: it traces the model
abstractly (`jax.eval_shape`, nothing is computed) with a method interceptor
(`nn.intercept_methods`) that records one `LayerRow` per module call.

* Parameters: those a module owns directly (not its children's), counted on
  the first call of a module, so the column sums to the model's total.
* FLOPs: 2 x multiply-accumulates of convolutions, dense layers and the two
  attention products (q.k and weights.v), counting every kernel tap (padded
  ones too), the usual convention. `xla_flops` gives XLA's own count of the
  compiled program as a cross-check; it is lower for padded convolutions
  (XLA skips taps on padding) and higher by the elementwise work
  (normalisation, activations, softmax, pooling).
* The table shows, on a row with sub-layers (a block, a stage), the total
  over the row and its sub-layers in parentheses.
* Receptive field along the main path: r_out = r_in + (k - 1) * d * j_in,
  j_out = j_in * s for convolutions and pooling layers. Each array a module
  returns is tagged with its field, so a layer knows the field of its own
  input even on a side branch (a ResNet's projection shortcut reads the block
  input, not the residual branch). Containers take the largest field among
  their children's outputs: the residual branch, not the shortcut. Rows whose
  output has no spatial axes show no field: (B, N, D) outputs report N
  tokens instead, (B, D) outputs are global.

Layers whose FLOPs or windows the summary should know about are added with
`register_rule(ModuleType)`; a rule may look at the module's attributes and
its input/output shapes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.models import layers
from eo_jax.models import spectral_vit
from eo_jax.models import vit


@dataclasses.dataclass
class LayerRow:
  """One module call.

  Attributes:
    path: the module's path, 'stage_1_block_0/conv1' ('' for the model);
      methods other than `__call__` are appended as '.method'.
    module: the module's class name.
    depth: nesting depth (the model is 0).
    output_shape: shape of the first array the call returned.
    params: parameters owned directly by the module (first call only).
    flops: analytic FLOPs of this call itself (2 x MACs; conv and dense
      layers, attention products), not its sub-layers'.
    receptive_field: receptive field size in input pixels (largest over the
      two spatial axes), for outputs with spatial axes; None otherwise.
    jump: distance in input pixels between neighbouring output positions.
    tokens: number of tokens for (B, N, D) outputs.
  """
  path: str
  module: str
  depth: int
  output_shape: tuple[int, ...] | None = None
  params: int = 0
  flops: int = 0
  receptive_field: int | None = None
  jump: int | None = None
  tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class Window:
  """A sliding window over the two spatial axes (kernel, stride, dilation)."""
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  dilation: tuple[int, int] = (1, 1)


@dataclasses.dataclass(frozen=True)
class Effect:
  """What a layer does, as far as the summary is concerned."""
  flops: int = 0
  window: Window | None = None


@dataclasses.dataclass(frozen=True)
class _Field:
  size: tuple[int, int]
  jump: tuple[int, int]

  def through(self, w: Window) -> "_Field":
    size = tuple(r + (k - 1) * d * j for r, k, d, j in
                 zip(self.size, w.kernel, w.dilation, self.jump))
    jump = tuple(j * s for j, s in zip(self.jump, w.strides))
    return _Field(size, jump)

  def larger(self, other: "_Field | None") -> "_Field":
    if other is None or max(self.size) >= max(other.size):
      return self
    return other


Rule = Callable[[nn.Module, tuple, tuple], Effect]
_RULES: dict[type, Rule] = {}


def register_rule(module_type: type) -> Callable[[Rule], Rule]:
  """Registers `rule(module, input_shape, output_shape) -> Effect`.

  The most specific registered class in a module's MRO applies.
  """
  def decorator(rule: Rule) -> Rule:
    _RULES[module_type] = rule
    return rule
  return decorator


def _rule_for(module: nn.Module) -> Rule | None:
  for cls in type(module).__mro__:
    if cls in _RULES:
      return _RULES[cls]
  return None


def _two(value, default: int = 1) -> tuple[int, int]:
  if value is None:
    return (default, default)
  if isinstance(value, int):
    return (value, value)
  value = tuple(value)
  return (value + value)[:2] if len(value) == 1 else value[:2]


@register_rule(nn.Conv)
def _conv_rule(module: nn.Conv, in_shape: tuple, out_shape: tuple) -> Effect:
  kernel = (module.kernel_size,) if isinstance(module.kernel_size, int) else (
      tuple(module.kernel_size))
  cin = in_shape[-1] // module.feature_group_count
  macs = int(np.prod(out_shape[:-1])) * int(np.prod(kernel)) * cin * (
      out_shape[-1])
  window = None
  if len(kernel) == 2:
    window = Window(kernel, _two(module.strides), _two(module.kernel_dilation))
  return Effect(2 * macs, window)


@register_rule(nn.Dense)
def _dense_rule(module: nn.Dense, in_shape: tuple, out_shape: tuple) -> Effect:
  del module
  return Effect(2 * int(np.prod(out_shape[:-1])) * in_shape[-1] * out_shape[-1])


@register_rule(nn.DenseGeneral)
def _dense_general_rule(module: nn.DenseGeneral, in_shape: tuple,
                        out_shape: tuple) -> Effect:
  # Every input element meets every output feature once per batch position:
  # batch * contracted * features MACs = size(input) * features.
  features = module.features
  features = (features,) if isinstance(features, int) else tuple(features)
  del out_shape
  return Effect(2 * int(np.prod(in_shape)) * int(np.prod(features)))


@register_rule(layers.MaxPool)
@register_rule(layers.AvgPool)
def _pool_rule(module: layers.MaxPool, in_shape: tuple,
               out_shape: tuple) -> Effect:
  del in_shape, out_shape
  # nn.max_pool / nn.avg_pool default to stride 1, not to the window.
  window = _two(module.window)
  strides = _two(module.strides)
  return Effect(0, Window(window, strides))


@register_rule(nn.MultiHeadDotProductAttention)
def _attention_rule(module: nn.MultiHeadDotProductAttention, in_shape: tuple,
                    out_shape: tuple) -> Effect:
  # The q/k/v/out projections are Dense submodules with rows of their own;
  # this counts the two attention products, q.k and weights.v, assuming
  # self-attention (as many keys as queries).
  del out_shape
  tokens = int(np.prod(in_shape[1:-1]))
  features = module.qkv_features or in_shape[-1]
  return Effect(2 * 2 * in_shape[0] * tokens * tokens * features)


@register_rule(vit.PatchEmbed)
def _patch_embed_rule(module: vit.PatchEmbed, in_shape: tuple,
                      out_shape: tuple) -> Effect:
  # A p x p stride-p VALID convolution written as a matmul.
  p = module.patch_size
  macs = int(np.prod(out_shape[:-1])) * p * p * in_shape[-1] * out_shape[-1]
  return Effect(2 * macs, Window((p, p), (p, p)))


@register_rule(vit.Attention)
def _vit_attention_rule(module: vit.Attention, in_shape: tuple,
                        out_shape: tuple) -> Effect:
  # eo_jax's ViT attention: (B, T, D) in and out, heads x head_dim = D. As
  # above, the row carries the q.k and weights.v products; the projections
  # are its DenseGeneral children.
  del module, out_shape
  batch, tokens, width = in_shape[0], in_shape[1], in_shape[-1]
  return Effect(2 * 2 * batch * tokens * tokens * width)


@register_rule(spectral_vit.SpectralPatchEmbed)
def _spectral_patch_embed_rule(module: spectral_vit.SpectralPatchEmbed,
                               in_shape: tuple, out_shape: tuple) -> Effect:
  # (B, H, W, C) -> (B, G * N, D): each of the G * N tokens reads p x p
  # pixels of each of S band slots (S = the largest group; the zero-weighted
  # slots of smaller groups are computed too). The weight generator's Dense
  # layers have rows of their own.
  del in_shape
  p = module.patch_size
  slots = max(len(group) for group in module.groups)
  macs = int(np.prod(out_shape[:-1])) * slots * p * p * out_shape[-1]
  return Effect(2 * macs, Window((p, p), (p, p)))


# --- Tracing -----------------------------------------------------------------


def _first_array(tree: Any) -> Any:
  for leaf in jax.tree.leaves(tree):
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      return leaf
  return None


def _own_params(params: Any, path: Sequence[str]) -> int:
  node = params
  for name in path:
    if not isinstance(node, dict) or name not in node:
      return 0
    node = node[name]
  if not isinstance(node, dict):
    return 0
  return sum(int(np.prod(v.shape)) for v in node.values()
             if not isinstance(v, dict))


class _Recorder:
  """The interceptor's state while one model is traced."""

  def __init__(self, params: Any):
    self.params = params
    self.rows: list[LayerRow] = []
    # id(array) -> (array, field); the array is kept so its id is not reused.
    self.fields: dict[int, tuple[Any, _Field]] = {}
    self.current = _Field((1, 1), (1, 1))
    # One entry per open call: (module path, method, best child field).
    self.stack: list[list[Any]] = []
    self.seen: set[tuple[str, ...]] = set()

  def _field_of(self, x: Any) -> _Field:
    if x is not None and id(x) in self.fields:
      return self.fields[id(x)][1]
    return self.current

  def _tag(self, x: Any, field: _Field) -> None:
    if x is not None:
      self.fields[id(x)] = (x, field)

  def __call__(self, next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    path = tuple(module.path)
    private = method.startswith("_") and method != "__call__"
    if method == "setup" or private or any(
        frame[0] == path and frame[1] == method for frame in self.stack):
      # Re-entrant calls (a subclass calling super().__call__) are one layer.
      return next_fun(*args, **kwargs)
    x = _first_array((args, kwargs))
    in_field = self._field_of(x)
    self._tag(x, in_field)
    name = "/".join(path) + ("" if method == "__call__" else f".{method}")
    row = LayerRow(path=name, module=type(module).__name__,
                   depth=len(self.stack))
    if path not in self.seen:
      self.seen.add(path)
      row.params = _own_params(self.params, path)
    self.rows.append(row)
    self.stack.append([path, method, None])
    try:
      out = next_fun(*args, **kwargs)
    finally:
      _, _, best_child = self.stack.pop()

    y = _first_array(out)
    rule = _rule_for(module)
    effect = Effect()
    if rule is not None and x is not None and y is not None:
      effect = rule(module, tuple(x.shape), tuple(y.shape))
    if effect.window is not None:
      out_field = in_field.through(effect.window)
    elif best_child is not None:
      out_field = best_child
    else:
      out_field = in_field
    self._tag(y, out_field)
    if self.stack:
      self.stack[-1][2] = out_field.larger(self.stack[-1][2])
    # Ties go to the newer field: a 1x1 strided conv on the main path keeps
    # the size but changes the jump.
    self.current = out_field.larger(self.current)

    row.flops = int(effect.flops)
    if y is not None:
      row.output_shape = tuple(int(d) for d in y.shape)
      if y.ndim == 4:
        row.receptive_field = int(max(out_field.size))
        row.jump = int(max(out_field.jump))
      elif y.ndim == 3:
        row.tokens = int(y.shape[1])
    return out


def _variables(model: nn.Module, image: jax.ShapeDtypeStruct,
               call_kwargs: dict[str, Any]) -> Any:
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  return jax.eval_shape(
      lambda: model.init(rngs, jnp.zeros(image.shape, image.dtype),
                         **call_kwargs))


def summarize(model: nn.Module, image_shape: Sequence[int], *,
              dtype: Any = jnp.float32, train: bool = False,
              variables: Any = None, **call_kwargs: Any) -> list[LayerRow]:
  """One row per module call of `model(image, train=train, **call_kwargs)`.

  Args:
    model: any Linen module taking an image as its first argument.
    image_shape: full input shape including the batch axis, e.g.
      (1, 64, 64, 13); FLOPs are for the whole batch.
    dtype: input dtype.
    train: passed to the model (BatchNorm statistics are then mutable and
      dropout gets an rng).
    variables: the model's variables (or their shapes); initialised
      abstractly when None.
    **call_kwargs: further keyword arguments of the model's `__call__`.

  Returns:
    Rows in call order (parents before their children).
  """
  image = jax.ShapeDtypeStruct(tuple(image_shape), dtype)
  if variables is None:
    variables = _variables(model, image, dict(train=False, **call_kwargs))
  recorder = _Recorder(variables.get("params", {}))

  def run(v, x):
    with nn.intercept_methods(recorder):
      return model.apply(v, x, train=train, rngs={"dropout": jax.random.key(0)},
                         mutable=["batch_stats"] if train else False,
                         **call_kwargs)

  jax.eval_shape(run, variables, image)
  return recorder.rows


def xla_flops(model: nn.Module, image_shape: Sequence[int], *,
              dtype: Any = jnp.float32, variables: Any = None,
              **call_kwargs: Any) -> float | None:
  """FLOPs of the compiled inference program by XLA's cost analysis.

  Compiles (does not run) `model.apply` for `image_shape`; returns None when
  the backend reports no cost analysis.
  """
  image = jax.ShapeDtypeStruct(tuple(image_shape), dtype)
  if variables is None:
    variables = _variables(model, image, dict(train=False, **call_kwargs))
  compiled = jax.jit(
      lambda v, x: model.apply(v, x, train=False, **call_kwargs)).lower(
          variables, image).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def subtree_totals(rows: Sequence[LayerRow]) -> list[tuple[int, int]]:
  """(params, FLOPs) of each row together with every row nested under it.

  Rows come parents first (`summarize`'s order), so a row's subtree is the
  run of following rows that are deeper than it.
  """
  out = []
  for i, row in enumerate(rows):
    params, flops = row.params, row.flops
    for child in rows[i + 1:]:
      if child.depth <= row.depth:
        break
      params += child.params
      flops += child.flops
    out.append((params, flops))
  return out


def totals(rows: Sequence[LayerRow]) -> dict[str, int]:
  """Total parameters and analytic FLOPs over all rows."""
  return {"params": sum(r.params for r in rows),
          "flops": sum(r.flops for r in rows)}


# --- Table and command line ------------------------------------------------


def _human(n: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.2f}{unit}"
  return f"{n:.0f}"


def format_table(rows: Sequence[LayerRow], *, max_depth: int = -1,
                 xla_total: float | None = None) -> str:
  """Renders rows as a fixed-width table followed by totals.

  A row with sub-layers (a block, a stage, the model) shows the sum over
  itself and its sub-layers in parentheses, e.g. a ViT block's parameters
  and FLOPs; the other rows show their own.

  Args:
    rows: from `summarize`.
    max_depth: hide rows nested deeper than this (-1 shows all); totals
      always cover every row.
    xla_total: XLA's FLOP count, printed next to the analytic total.
  """
  header = ("layer", "type", "output", "params", "FLOPs", "RF", "jump")
  table = [header]
  subtree = subtree_totals(rows)
  for i, r in enumerate(rows):
    if max_depth >= 0 and r.depth > max_depth:
      continue
    has_children = i + 1 < len(rows) and rows[i + 1].depth > r.depth
    if r.receptive_field is not None:
      rf, jump = str(r.receptive_field), str(r.jump)
    elif r.tokens is not None:
      rf, jump = f"{r.tokens} tok", ""
    elif r.output_shape is not None and len(r.output_shape) == 2:
      rf, jump = "global", ""
    else:
      rf, jump = "", ""
    name = "  " * r.depth + (r.path.rsplit("/", 1)[-1] or "(model)")
    shape = "x".join(map(str, r.output_shape)) if r.output_shape else ""
    if has_children:
      params, flops = subtree[i]
      params_s = f"({params:,})" if params else ""
      flops_s = f"({_human(flops)})" if flops else ""
    else:
      params_s = f"{r.params:,}" if r.params else ""
      flops_s = _human(r.flops) if r.flops else ""
    table.append((name, r.module, shape, params_s, flops_s, rf, jump))
  widths = [max(len(row[i]) for row in table) for i in range(len(header))]
  right = {3, 4, 5, 6}

  def line(row):
    return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))).rstrip()

  out = [line(header), "-" * len(line(header))]
  out += [line(row) for row in table[1:]]
  t = totals(rows)
  out.append("-" * len(line(header)))
  out.append(f"Total parameters: {t['params']:,}")
  out.append(f"FLOPs (conv, dense, attention; 2 x MACs): {t['flops']:,} "
             f"({_human(t['flops'])})")
  if xla_total is not None:
    ratio = xla_total / t["flops"] if t["flops"] else float("nan")
    out.append(f"FLOPs by XLA cost analysis (all ops, padded taps skipped): "
               f"{xla_total:,.0f} ({_human(xla_total)}, {ratio:.2f}x analytic)")
  return "\n".join(out)


def synthetic_bands(n: int) -> tuple[bands_lib.Band, ...]:
  """A stand-in band list of `n` bands for summaries without a dataset."""
  if n < 1:
    raise ValueError(f"--bands must be >= 1, got {n}.")
  if n == 3:
    return bands_lib.RGB
  if n <= len(bands_lib.SENTINEL2):
    return bands_lib.SENTINEL2[:n]
  return tuple(bands_lib.Band(f"band_{i}", 400.0 + 2000.0 * i / (n - 1))
               for i in range(n))


def _main(argv: Sequence[str], overrides: dict[str, Any]) -> None:
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from eo_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from eo_jax import errors  # pylint: disable=g-import-not-at-top
  from eo_jax.models import build_model  # pylint: disable=g-import-not-at-top
  del argv
  # JAX logs backend probing at INFO; it would bury the table.
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  if not f.config:
    raise SystemExit("Give --config=configs/<experiment>.py.")
  try:
    config = config_lib.load_config(f.config, overrides)
  except errors.UserError as e:
    raise SystemExit(f"error: {errors.message(e)}") from None
  info = None
  if not f.bands:
    from eo_jax.data.datasets import build_dataset  # pylint: disable=g-import-not-at-top
    try:
      info = build_dataset(config.data, with_stats=False).info
    except Exception as e:  # pylint: disable=broad-except
      raise SystemExit(
          f"Could not build the dataset {config.data.name!r} ({e}).\nPass "
          "--bands=N --image_size=S to summarise the model without data."
      ) from None
  bands = synthetic_bands(f.bands) if f.bands else info.bands
  size = f.image_size or config.get("input", {}).get("image_size", 0)
  if not size and info is not None and info.image_size:
    size = info.image_size
  if not size:
    raise SystemExit("Unknown image size: pass --image_size=S.")
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  num_classes = f.num_classes
  if num_classes < 0:
    num_classes = info.num_classes if info is not None else 10
  model = build_model(config.model, bands=bands, num_classes=num_classes)
  shape = (f.batch_size, height, width, len(bands))
  rows = summarize(model, shape)
  xla_total = xla_flops(model, shape) if f.xla_flops else None
  print(f"{config.model.name}: {len(bands)} bands, {height}x{width} px, "
        f"{num_classes} classes, batch {f.batch_size}")
  print(format_table(rows, max_depth=f.depth, xla_total=xla_total))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("config", None, "Experiment config file, optionally with "
                      "':key=value,...' variants; fields can be set with "
                      "--config.<key>=<value>.")
  flags.DEFINE_integer("bands", 0, "Number of input bands; skips building "
                       "the dataset (use with --image_size).")
  flags.DEFINE_integer("image_size", 0, "Input height and width in pixels; "
                       "default config.input.image_size or the dataset's.")
  flags.DEFINE_integer("num_classes", -1, "Classes; default the dataset's "
                       "(10 without a dataset).")
  flags.DEFINE_integer("batch_size", 1, "Batch size of the traced input.")
  flags.DEFINE_integer("depth", -1, "Show rows nested at most this deep.")
  flags.DEFINE_bool("xla_flops", True, "Also compile the model and report "
                    "XLA's FLOP count.")


if __name__ == "__main__":
  import functools  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from eo_jax.config import split_config_overrides  # pylint: disable=g-import-not-at-top
  _define_flags()
  remaining, config_overrides = split_config_overrides(sys.argv)
  app.run(functools.partial(_main, overrides=config_overrides), argv=remaining)
