"""Convolution and pooling layers shared by the CNNs.

`Conv` is a drop-in replacement for `flax.linen.Conv` (same attributes, same
parameter names and shapes, same results) that can work around two slow
spots of XLA's CPU convolutions:

* Small maps (<= `im2col_max_size`): XLA rewrites a 3x3 convolution on a
  2x2 map (operands swapped in the algebraic simplifier) onto a path one to
  two orders of magnitude slower than oneDNN, and its gradients on 4x4 maps
  are slow too. These are computed as an explicit im2col: the kh*kw strided,
  shifted views of the padded input concatenated on the channel axis and
  multiplied by the flattened kernel in one matmul (`conv_im2col`).
* Larger maps: XLA's forward convolution and input gradient are fast, but
  its kernel gradient is not: at ResNet shapes (batch 64, 2-core CPU)
  forward+backward takes 3-14x the forward pass, e.g. 950 ms vs 67 ms for a
  3x3 64->64 conv on 32x32 maps. These keep XLA's convolution and compute
  the kernel gradient by matmuls (`conv_matmul_kernel_grad`), in one of two
  forms. Per tap: one (pixels, Cin)^T (pixels, Cout) matmul per kernel tap
  over the whole batch; forward+backward becomes 1.7-2.8x the forward pass
  (170 ms in that example). Per chunk (im2col): one (kh*kw*Cin, pixels)
  (pixels, Cout) matmul per chunk of ~1024 output pixels between the
  chunk's channel-major im2col patches and the cotangent. XLA runs a
  transposed-lhs contraction over few channels slowly, and the per-tap
  form has one per tap: the ResNet stem on 13-band 128x128 images (7x7/2,
  13->64) took 0.9-1.4 s for forward + kernel gradient per tap, 0.56-0.71
  s per chunk (1.5-2.0x faster; medians of three runs of `python -m
  benchmarks.stem_conv`); the 3x3 64->64 convs on 32x32 maps ran 1.4x
  faster, 128->128 on 16x16 1.1-1.2x, 256->256 on 8x8 and the strided 3x3
  convs on 64-128 channels 0.9-1.04x (`--rule`). `Conv` takes the
  chunks for kernels larger than 1x1 on at most
  `im2col_kernel_grad_max_channels` input channels (128 on CPU), per tap
  otherwise (a 1x1 kernel has one tap: already one matmul). Tried for the
  stem and slower, as speed-ups over the per-tap form in one run where
  the chunks gave 2.0x: space-to-depth (the stride-2 7x7 conv as a
  stride-1 4x4 one over 2x2 blocks of 52 channels) by XLA alone (0.6x),
  with per-tap matmuls (0.8x) or with chunks (1.1x); one im2col matmul over
  the whole batch (0.7x, 668 MB of patches). XLA's forward convolution
  stays: by im2col it took 1.1-2x (per chunk) to 5x (whole batch) as long,
  by space-to-depth 3-4x.

The kernel-gradient figures above are for convolutions run by YNNPACK,
jax 0.10's CPU default. Importing eo_jax hands CPU convolutions to XLA's
own code instead (`eo_jax.backend.configure_xla_cpu`), whose kernel
gradients beat both matmul forms (stem forward + kernel gradient 354 ms vs
421 ms by chunks, 767 ms per tap, PyTorch 467 ms: `python -m
benchmarks.stem_conv`), so the CPU formulation keeps the matmul kernel
gradient only where convolutions still run on YNNPACK.

Whether these formulations (and `MaxPool`'s, below) are used is decided in
one place, `eo_jax.backend.formulations()`: on by default on a CPU backend,
off (XLA's own ops) on GPU and TPU. A module attribute set explicitly
overrides the backend for that module, and `override_formulations`
overrides both for everything traced inside its block (A/B measurements).
The path is chosen per call from static shapes.

The pooling layers are modules (rather than calls of `nn.max_pool` /
`nn.avg_pool`) so that model summaries (eo_jax/summary.py), which see module
calls only, can follow the receptive field through them; `MaxPool` can also
replace XLA's slow max-pool gradient (`max_pool`).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from eo_jax import backend

# The CPU default, kept here for the benchmarks that print it; the
# measurements behind it are in eo_jax/backend.py.
IM2COL_MAX_SIZE = backend.CPU_IM2COL_MAX_SIZE

_FALLBACK_PADDINGS = ("CIRCULAR", "REFLECT", "CAUSAL")

# Output pixels per chunk of the im2col kernel gradient. Measured at batch
# 64 (2-core CPU): 512-2048 are within noise of each other for the stem and
# the 3x3 convs on 32x32 and 16x16 maps; 4096 loses up to 2x on 8x8 maps
# with 128-256 channels (patches beyond the caches).
_IM2COL_CHUNK_PIXELS = 1024
_IM2COL_MAX_BANDS = 8

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Set by `override_formulations`: {setting name: value}. A context variable
# rather than a module global so that an override cannot leak out of its
# `with` block or across threads.
_OVERRIDES: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "layer_overrides", default={})


@contextlib.contextmanager
def override_formulations(*, im2col_max_size: int | None = None,
                          matmul_kernel_grad: bool | None = None,
                          max_pool_views_grad: bool | None = None,
                          im2col_kernel_grad_max_channels: int | None = None
                          ) -> Iterator[None]:
  """Overrides how every `Conv` and `MaxPool` traced inside the block runs.

  For A/B measurements of whole models (all three off is plain `nn.Conv` and
  `nn.max_pool` everywhere). The choice is made when a model is traced, so
  the block must enclose the tracing: put it inside the function given to
  `jax.jit`, not around a call of an already compiled one. Arguments left
  None keep each module's own attribute or, where that is None, the
  process-wide choice of `eo_jax.backend.formulations()`.

  Args:
    im2col_max_size: every Conv's `im2col_max_size` (0: never im2col).
    matmul_kernel_grad: every Conv's `matmul_kernel_grad`.
    max_pool_views_grad: every MaxPool's `views_grad`.
    im2col_kernel_grad_max_channels: every Conv's
      `im2col_kernel_grad_max_channels` (0: kernel gradients per tap).
  """
  for name, value in (("im2col_max_size", im2col_max_size),
                      ("im2col_kernel_grad_max_channels",
                       im2col_kernel_grad_max_channels)):
    if value is not None and value < 0:
      raise ValueError(f"{name} must be >= 0, got {value}.")
  settings = dict(im2col_max_size=im2col_max_size,
                  matmul_kernel_grad=matmul_kernel_grad,
                  views_grad=max_pool_views_grad,
                  im2col_kernel_grad_max_channels=(
                      im2col_kernel_grad_max_channels))
  token = _OVERRIDES.set({**_OVERRIDES.get(), **{
      k: v for k, v in settings.items() if v is not None}})
  try:
    yield
  finally:
    _OVERRIDES.reset(token)


# Module attribute -> the `backend.Formulations` field that serves as its
# default.
_BACKEND_FIELDS = {"im2col_max_size": "im2col_max_size",
                   "matmul_kernel_grad": "matmul_kernel_grad",
                   "im2col_kernel_grad_max_channels":
                       "im2col_kernel_grad_max_channels",
                   "views_grad": "max_pool_views_grad"}


def _setting(module: nn.Module, name: str) -> Any:
  """An override block's `name`, else the module's, else the backend's."""
  overrides = _OVERRIDES.get()
  if name in overrides:
    return overrides[name]
  value = getattr(module, name)
  if value is not None:
    return value
  return getattr(backend.formulations(), _BACKEND_FIELDS[name])


def _pairs(value: int | Sequence[int] | None, n: int) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


def explicit_padding(padding, in_shape: Sequence[int],
                     kernel_shape: Sequence[int], strides: Sequence[int]
                     ) -> tuple[tuple[int, int], ...]:
  """Resolves a Flax padding spec to explicit (low, high) pairs per dimension.

  Args:
    padding: 'SAME', 'SAME_LOWER', 'VALID', an int, a sequence of ints
      (symmetric per dimension) or a sequence of (low, high) pairs.
    in_shape: spatial input shape.
    kernel_shape: spatial kernel shape after dilation, (k - 1) * d + 1.
    strides: spatial strides.

  Returns:
    One (low, high) pair per spatial dimension.
  """
  n = len(in_shape)
  if isinstance(padding, str):
    return tuple(tuple(p) for p in lax.padtype_to_pads(
        tuple(in_shape), tuple(kernel_shape), tuple(strides), padding))
  if isinstance(padding, int):
    return ((padding, padding),) * n
  pads = tuple(padding)
  if len(pads) != n:
    raise ValueError(f"Padding {padding!r} has {len(pads)} entries for {n} "
                     "spatial dimensions; give one int or (low, high) pair "
                     "per dimension.")
  out = []
  for p in pads:
    if isinstance(p, int):
      out.append((p, p))
    else:
      low, high = p
      out.append((int(low), int(high)))
  return tuple(out)


def _shifted_views(x: jax.Array, kernel_hw: Sequence[int],
                   strides: Sequence[int], padding: Sequence[tuple[int, int]],
                   kernel_dilation: Sequence[int] = (1, 1),
                   pad_value: float = 0.0) -> list[jax.Array]:
  """The kh*kw (B, Ho, Wo, Cin) input views that meet each kernel tap.

  Output pixel (b, i, j) sees `views[t][b, i, j]` through tap t (row-major
  over the kernel's rows and columns), so a convolution is
  `sum_t views[t] @ kernel[t]` and a max pool `max_t views[t]`.
  """
  kh, kw = kernel_hw
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  dh, dw = kernel_dilation
  # lax.pad (unlike jnp.pad) accepts negative padding, which crops.
  x = lax.pad(x, jnp.asarray(pad_value, x.dtype),
              ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  batch, height, width, cin = x.shape
  out_h = (height - (kh - 1) * dh - 1) // sh + 1
  out_w = (width - (kw - 1) * dw - 1) // sw + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(
        f"A {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit in the padded "
        f"{height}x{width} map; use a larger input or 'SAME' padding.")
  views = []
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dh, j * dw, 0)
      limit = (batch, i * dh + (out_h - 1) * sh + 1,
               j * dw + (out_w - 1) * sw + 1, cin)
      views.append(lax.slice(x, start, limit, (1, sh, sw, 1)))
  return views


def _check_input(x: jax.Array, kernel: jax.Array, what: str) -> None:
  if x.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"{what} expects a (B, H, W, {kernel.shape[2]}) input "
                     f"for a {kernel.shape} kernel, got {x.shape}.")


def conv_im2col(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                padding: Sequence[tuple[int, int]],
                kernel_dilation: Sequence[int] = (1, 1),
                precision=None) -> jax.Array:
  """2-D convolution (NHWC input, HWIO kernel) as shifted views and a matmul.

  Computes exactly what `lax.conv_general_dilated` computes for
  `feature_group_count=1` and no input dilation.

  Args:
    x: (B, H, W, Cin) input.
    kernel: (kh, kw, Cin, Cout) kernel.
    strides: (sh, sw).
    padding: explicit ((top, bottom), (left, right)); negative values crop.
    kernel_dilation: (dh, dw).
    precision: passed to the matmul.

  Returns:
    (B, Ho, Wo, Cout).
  """
  _check_input(x, kernel, "conv_im2col")
  kh, kw, cin, cout = kernel.shape
  views = _shifted_views(x, (kh, kw), strides, padding, kernel_dilation)
  # Views in tap order with channels innermost match
  # kernel.reshape(kh * kw * cin, cout).
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout),
                 precision=precision)


def _xla_conv(x, kernel, strides, padding, kernel_dilation, precision):
  return lax.conv_general_dilated(
      x, kernel, tuple(strides), tuple(padding),
      rhs_dilation=tuple(kernel_dilation),
      dimension_numbers=_DIMENSION_NUMBERS, precision=precision)


def _taps_matmul(x, kernel, strides, padding, kernel_dilation, precision):
  """The convolution as one matmul per kernel tap, summed.

  Linear in `kernel`; its transpose (the kernel gradient) is one
  (B*Ho*Wo, Cin)^T (B*Ho*Wo, Cout) matmul per tap.
  """
  kh, kw, cin, cout = kernel.shape
  taps = kernel.reshape(kh * kw, cin, cout)
  if backend.formulations().unroll_kernel_grad_taps:
    # Multi-process runs: with the batch sharded, each tap's matmul ends in
    # an all-reduce, and CPU runs with gloo collectives abort ("collective
    # mismatch") when those sit inside the scan's while loop
    # (tests/train/test_distributed.py). Costs ~20% speed and kh*kw views
    # of memory.
    views = _shifted_views(x, (kh, kw), strides, padding, kernel_dilation)
    y = sum(jnp.dot(v.reshape(-1, cin), taps[t], precision=precision)
            for t, v in enumerate(views))
    return y.reshape(views[0].shape[:3] + (cout,))
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  dh, dw = kernel_dilation
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  batch, height, width, _ = x.shape
  out_h = (height - (kh - 1) * dh - 1) // sh + 1
  out_w = (width - (kw - 1) * dw - 1) // sw + 1
  span = (batch, (out_h - 1) * sh + 1, (out_w - 1) * sw + 1, cin)
  offsets = jnp.array([(i * dh, j * dw) for i in range(kh) for j in range(kw)],
                      jnp.int32)

  # A scan over taps with a rematerialised body: reverse mode then builds
  # one tap's view at a time in the backward pass instead of keeping all
  # kh*kw views alive (kernel gradient of a 3x3 conv on 32x32x64, batch 64:
  # 36 MB of temporaries vs 153 MB unrolled and 17 MB for XLA's own; and
  # 15-20% faster than unrolled). Scan already keeps the recomputation
  # apart, so no CSE barrier is needed.
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def add_tap(y, offset_and_tap):
    offset, tap = offset_and_tap
    view = lax.dynamic_slice(x, (0, offset[0], offset[1], 0), span)
    view = view[:, ::sh, ::sw]
    return y + jnp.dot(view.reshape(-1, cin), tap, precision=precision), None

  dtype = jnp.result_type(x.dtype, kernel.dtype)
  y, _ = lax.scan(add_tap, jnp.zeros((batch * out_h * out_w, cout), dtype),
                  (offsets, taps))
  return y.reshape(batch, out_h, out_w, cout)


def _divisor_at_most(n: int, limit: int) -> int:
  """The largest divisor of `n` that is at most `limit` (and at least 1)."""
  d = max(1, min(n, limit))
  while n % d:
    d -= 1
  return d


def _im2col_chunking(batch: int, out_h: int, out_w: int
                     ) -> tuple[int, int, int]:
  """How `_im2col_chunks_matmul` splits its output: (groups, images, rows).

  A chunk is `images` images of each of `groups` groups of the batch, cut
  into bands of `rows` output rows (the last band shorter if need be).
  """
  # One image per device in every chunk: with the batch sharded over the
  # devices, scanning over a sharded axis would make XLA gather the whole
  # batch on each device; the scan runs over the images within a shard.
  groups = jax.device_count()
  if batch % groups:
    groups = 1
  images = _divisor_at_most(batch // groups,
                            _IM2COL_CHUNK_PIXELS // (out_h * out_w))
  # Bands of one image, or all rows of several images. At most
  # _IM2COL_MAX_BANDS, unrolled (in a loop their patch copies ran 4x
  # slower), so the bands of very large maps grow beyond the target size.
  rows = out_h
  if images == 1:
    rows = max(1, min(out_h, _IM2COL_CHUNK_PIXELS // out_w),
               -(-out_h // _IM2COL_MAX_BANDS))
  return groups, images, rows


def _im2col_chunks_matmul(x, kernel, strides, padding, kernel_dilation,
                          precision):
  """The convolution as one im2col matmul per chunk of images, scanned.

  Linear in `kernel`; its transpose (the kernel gradient) is, per chunk, one
  (kh*kw*Cin, pixels) @ (pixels, Cout) matmul of the chunk's patches,
  channel-major, with its output cotangent: a plain row-major matmul that
  XLA's CPU backend runs near its forward convolution's speed, where the
  per-tap matmuls of `_taps_matmul` (a (pixels, Cin)^T contraction each)
  are slow for few input channels. A chunk is about
  `_IM2COL_CHUNK_PIXELS` output pixels: a band of output rows of one image
  or, on small maps, a few whole images.
  """
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  dh, dw = kernel_dilation
  batch, in_h, in_w, _ = x.shape
  height, width = in_h + pt + pb, in_w + pl + pr
  out_h = (height - (kh - 1) * dh - 1) // sh + 1
  out_w = (width - (kw - 1) * dw - 1) // sw + 1
  groups, images, rows = _im2col_chunking(batch, out_h, out_w)
  steps = batch // (groups * images)
  per_chunk = groups * images
  # Scanned as (steps, Cin, groups * images, H, W): channel-major, so that
  # each row of the patches is a run of pixels. The chunk axis is left out
  # when it is 1: XLA lays out a loop operand's size-1 axes in odd places
  # and then copies the operand whole (170 ms a step for the stem's input).
  x = x.reshape(groups, steps, images, in_h, in_w, cin)
  x = x.transpose(1, 5, 0, 2, 3, 4).reshape(
      (steps, cin) + (per_chunk,) * (per_chunk > 1) + (in_h, in_w))
  pads = ((0, 0, 0),) * (x.ndim - 2) + ((pt, pb, 0), (pl, pr, 0))
  x = lax.pad(x, jnp.zeros((), x.dtype), pads)
  taps = kernel.reshape(kh * kw * cin, cout)

  # Rematerialised like `_taps_matmul`'s body: reverse mode rebuilds one
  # chunk's patches at a time instead of keeping all of them.
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk(_, xs):
    xs = xs.reshape(cin, per_chunk, height, width)
    # The patches in two steps, the kernel's columns for the whole chunk,
    # then per band its rows: XLA's CPU backend fuses a concatenation of at
    # most 8 slices into one loop; kh*kw slices at once would be as many
    # copies (the stem's 49: 195 vs 120 ms a step to build the patches).
    cols = jnp.stack([
        lax.slice(xs, (0, 0, 0, j * dw),
                  (cin, per_chunk, height, j * dw + (out_w - 1) * sw + 1),
                  (1, 1, 1, sw)) for j in range(kw)])
    bands = []
    for r0 in range(0, out_h, rows):
      n = min(rows, out_h - r0)
      views = []
      for i in range(kh):
        top = r0 * sh + i * dh
        views.append(lax.slice_in_dim(cols, top, top + (n - 1) * sh + 1, sh,
                                      axis=3))
      # Rows (kernel row, kernel column, channel), as in
      # kernel.reshape(kh * kw * cin, cout); columns (image, row, column).
      patches = jnp.stack(views).reshape(kh * kw * cin, -1)
      y = lax.dot_general(patches, taps, (((0,), (0,)), ((), ())),
                          precision=precision)
      bands.append(y.reshape(per_chunk, n, out_w, cout))
    y = jnp.concatenate(bands, axis=1) if len(bands) > 1 else bands[0]
    return None, y if per_chunk > 1 else y[0]

  _, y = lax.scan(chunk, None, x)
  # (steps, groups, images, ...) -> batch order groups, steps, images.
  y = y.reshape(steps, groups, images, out_h, out_w, cout).swapaxes(0, 1)
  return y.reshape(batch, out_h, out_w, cout)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def conv_matmul_kernel_grad(x: jax.Array, kernel: jax.Array,
                            strides: tuple[int, int],
                            padding: tuple[tuple[int, int], tuple[int, int]],
                            kernel_dilation: tuple[int, int] = (1, 1),
                            precision=None,
                            kernel_grad: str = "taps") -> jax.Array:
  """XLA's 2-D convolution whose kernel gradient is computed by matmuls.

  The value and the input gradient are XLA's (`lax.conv_general_dilated`
  and its transpose, both fast on CPU). The kernel gradient, which XLA's
  CPU backend computes several times slower than its forward pass at
  ResNet shapes (numbers in the module docstring), is instead computed by
  matmuls of the input with the output cotangent, in one of two forms:
  'taps', one matmul per kernel tap over the whole batch; or 'im2col', one
  matmul per chunk of images between their channel-major im2col patches
  and the cotangent (faster for kernels larger than 1x1 on up to ~128
  input channels, see the module docstring). Multi-process runs take the
  unrolled taps whatever the form (`backend.Formulations`'
  `unroll_kernel_grad_taps`). Forward-mode derivatives work too (the rule
  is a JVP).

  Args:
    x: (B, H, W, Cin) input.
    kernel: (kh, kw, Cin, Cout) kernel.
    strides: (sh, sw).
    padding: explicit ((top, bottom), (left, right)), all >= 0.
    kernel_dilation: (dh, dw).
    precision: passed to the convolution and the matmuls.
    kernel_grad: 'taps' or 'im2col'.

  Returns:
    (B, Ho, Wo, Cout), equal to `lax.conv_general_dilated`'s result.
  """
  _check_input(x, kernel, "conv_matmul_kernel_grad")
  _check_kernel_grad(kernel_grad)
  return _xla_conv(x, kernel, strides, padding, kernel_dilation, precision)


def _conv_matmul_kernel_grad_jvp(strides, padding, kernel_dilation,
                                 precision, kernel_grad, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  y = _xla_conv(x, kernel, strides, padding, kernel_dilation, precision)
  dy = jnp.zeros_like(y)
  # Symbolic zeros skip the work for an input that is not differentiated
  # (the image under a stem conv) or a frozen kernel.
  if not isinstance(dx, SymbolicZero):
    dy = dy + _xla_conv(dx, kernel, strides, padding, kernel_dilation,
                        precision)
  if not isinstance(dkernel, SymbolicZero):
    form = _check_kernel_grad(kernel_grad)
    if backend.formulations().unroll_kernel_grad_taps:
      # The chunks' scan would put the all-reduces of a sharded batch in a
      # while loop, which gloo collectives abort on (see _taps_matmul).
      form = "taps"
    # Linear in dkernel; reverse mode transposes it into the matmuls
    # input^T @ cotangent (per tap, or per chunk of im2col patches).
    dy = dy + _KERNEL_GRAD_FORMS[form](x, dkernel, strides, padding,
                                       kernel_dilation, precision)
  return y, dy


_KERNEL_GRAD_FORMS = {"taps": _taps_matmul, "im2col": _im2col_chunks_matmul}


def _check_kernel_grad(kernel_grad: str) -> str:
  if kernel_grad not in _KERNEL_GRAD_FORMS:
    raise ValueError(f"kernel_grad is {kernel_grad!r}; use one of "
                     f"{tuple(_KERNEL_GRAD_FORMS)}.")
  return kernel_grad


conv_matmul_kernel_grad.defjvp(_conv_matmul_kernel_grad_jvp,
                               symbolic_zeros=True)


class Conv(nn.Conv):
  """`nn.Conv` with faster formulations of XLA CPU's slow cases.

  Same attributes, parameters and results as `nn.Conv`. A plain 2-D
  convolution (single-batch-axis NHWC input; no groups, input dilation,
  weight mask, custom conv function or circular/reflect/causal padding) runs
  as `conv_im2col` when its input is no larger than `im2col_max_size` in
  height and width, else as `conv_matmul_kernel_grad` when
  `matmul_kernel_grad` is set and the padding is not negative, with the
  kernel gradient in im2col chunks when the kernel is larger than 1x1 and
  has at most `im2col_kernel_grad_max_channels` input channels, else per
  tap. Everything else goes to `nn.Conv`. The choice depends on static
  shapes only. Inside an `override_formulations` block, the settings it
  gives replace the attributes below.

  Attributes:
    im2col_max_size: largest input height and width computed as im2col;
      0 never uses im2col; None (default) takes
      `eo_jax.backend.formulations()`'s (4 on CPU, 0 elsewhere).
    matmul_kernel_grad: on larger maps, compute the kernel gradient as
      matmuls (XLA's forward and input gradient are kept); None takes the
      backend's (on for CPU only).
    im2col_kernel_grad_max_channels: with `matmul_kernel_grad`, kernels
      larger than 1x1 with at most this many input channels get their
      kernel gradient as im2col matmuls over chunks of images, the others
      one matmul per tap; 0 always per tap; None takes the backend's (128
      on CPU, 0 elsewhere).
  """
  im2col_max_size: int | None = None
  matmul_kernel_grad: bool | None = None
  im2col_kernel_grad_max_channels: int | None = None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    path = _conv_path(self, inputs)
    if path == "nn.Conv":
      return super().__call__(inputs)
    kernel_size = _pairs(self.kernel_size, 2)
    strides = _pairs(self.strides, 2)
    dilation = _pairs(self.kernel_dilation, 2)
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    padding = explicit_padding(self.padding, inputs.shape[1:3], dilated,
                               strides)
    if path != "im2col" and min(min(p) for p in padding) < 0:
      # Cropping paddings are rare; nn.Conv handles them.
      return super().__call__(inputs)
    in_features = inputs.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        kernel_size + (in_features, self.features),
                        self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,),
                        self.param_dtype)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias,
                                              dtype=self.dtype)
    if path == "im2col":
      y = conv_im2col(inputs, kernel, strides, padding, dilation,
                      precision=self.precision)
    else:
      y = conv_matmul_kernel_grad(
          inputs, kernel, strides, padding, dilation, self.precision,
          "im2col" if path == "im2col_kernel_grad" else "taps")
    if bias is not None:
      y = y + bias
    return y


def _is_plain(conv: Conv, inputs: jax.Array) -> bool:
  if inputs.ndim != 4 or len(_pairs(conv.kernel_size, 1)) != 2:
    return False
  if conv.feature_group_count != 1 or conv.mask is not None:
    return False
  if any(d != 1 for d in _pairs(conv.input_dilation, 2)):
    return False
  if conv.conv_general_dilated is not None or (
      conv.conv_general_dilated_cls is not None):
    return False
  if isinstance(conv.padding, str) and conv.padding.upper() in (
      _FALLBACK_PADDINGS):
    return False
  return True


# Functions rather than Conv methods: Flax records every method's return
# value under `capture_intermediates`, and a string is not a JAX type.
def _conv_path(conv: Conv, inputs: jax.Array) -> str:
  """'im2col', 'im2col_kernel_grad', 'matmul_kernel_grad' or 'nn.Conv'."""
  if not _is_plain(conv, inputs):
    return "nn.Conv"
  if max(inputs.shape[1:3]) <= _setting(conv, "im2col_max_size"):
    return "im2col"
  if not _setting(conv, "matmul_kernel_grad"):
    return "nn.Conv"
  # A 1x1 kernel has one tap: its per-tap form is already one matmul.
  if (math.prod(_pairs(conv.kernel_size, 2)) > 1 and inputs.shape[-1] <= (
      _setting(conv, "im2col_kernel_grad_max_channels"))):
    return "im2col_kernel_grad"
  return "matmul_kernel_grad"


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """`nn.max_pool` on (B, H, W, C) with a faster derivative on CPU.

  The value is XLA's `reduce_window`. Its derivative is XLA's
  `select_and_scatter`, which on CPU takes ~16x the forward pass (ResNet
  stem pool, 3x3/2 on 64x64x64, batch 64, 2-core CPU: 540 ms vs 33 ms).
  Here the derivative routes each output's tangent from the first window
  position (row-major) holding the maximum, the same choice
  `select_and_scatter` makes, using shifted views: the gradient is then
  selects and pads, and forward+backward runs 3-4x faster.

  Args:
    x: (B, H, W, C) input.
    window: (kh, kw).
    strides: (sh, sw).
    padding: explicit ((top, bottom), (left, right)); padding is -inf.

  Returns:
    (B, Ho, Wo, C).
  """
  return nn.max_pool(x, window, strides, padding)


@max_pool.defjvp
def _max_pool_jvp(window, strides, padding, primals, tangents):
  (x,), (dx,) = primals, tangents
  views = _shifted_views(x, window, strides, padding, pad_value=-jnp.inf)
  # Index of the first view holding the maximum: a running max that only a
  # strictly larger value replaces, so earlier taps win ties (ReLU zeros
  # make ties common). Comparing each view with `y` instead gives the same
  # index but runs 2x slower (it does not fuse with the views).
  index_dtype = jnp.int8 if len(views) < 128 else jnp.int32
  best, first = views[0], jnp.zeros(views[0].shape, index_dtype)
  # The value from the same views (`lax.max` propagates NaNs as
  # reduce_window's max does) rather than a separate reduce_window: it fuses
  # with the index, and the stem's pool forward+backward runs 10-20% faster
  # (64x64x64 maps, batch 64: 134 vs 151 ms).
  y = views[0]
  for t, view in enumerate(views[1:], 1):
    larger = view > best
    best = jnp.where(larger, view, best)
    first = jnp.where(larger, jnp.asarray(t, index_dtype), first)
    y = jnp.maximum(y, view)
  dviews = _shifted_views(dx, window, strides, padding)
  dy = sum(jnp.where(first == t, v, jnp.zeros((), v.dtype))
           for t, v in enumerate(dviews))
  return y, dy


class MaxPool(nn.Module):
  """Max pooling as a module (padding with -inf, like `nn.max_pool`).

  Attributes:
    window: (kh, kw).
    strides: (sh, sw); None is 1.
    padding: 'VALID', 'SAME' or (low, high) pairs.
    views_grad: 2-D pools on NHWC maps use `max_pool` (same values and
      gradients as `nn.max_pool`, faster backward pass on CPU); None
      (default) takes `eo_jax.backend.formulations()`'s (on for CPU only);
      replaced inside an `override_formulations` block that sets it.
  """
  window: tuple[int, int]
  strides: tuple[int, int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"
  views_grad: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = tuple(self.window)
    strides = tuple(self.strides) if self.strides else (1,) * len(window)
    if (x.ndim != 4 or len(window) != 2
        or not _setting(self, "views_grad")):
      return nn.max_pool(x, window, strides, self.padding)
    padding = explicit_padding(self.padding, x.shape[1:3], window, strides)
    return max_pool(x, window, strides, padding)


class AvgPool(nn.Module):
  """Average pooling as a module; padded zeros count in the average."""
  window: tuple[int, int]
  strides: tuple[int, int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, tuple(self.window), self.strides and tuple(
        self.strides), self.padding)
