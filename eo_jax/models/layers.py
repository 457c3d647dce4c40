"""Convolution and pooling layers shared by the CNNs.

`Conv` is a drop-in replacement for `flax.linen.Conv` (same attributes, same
parameter names and shapes) that computes convolutions on small spatial maps
as an explicit im2col: the kh*kw strided, shifted views of the padded input
are concatenated on the channel axis and multiplied by the flattened kernel
in a single matmul.

Why: XLA's CPU backend rewrites a 3x3 convolution on a 2x2 map (operands
swapped in the algebraic simplifier) onto a path that is one to two orders of
magnitude slower than oneDNN; its gradients on 4x4 maps are also slow. The
matmul form is the same arithmetic and runs at matmul speed. On larger maps
XLA's own convolution wins, so the choice is made per call from the static
input shape (`im2col_max_size`, numbers at `IM2COL_MAX_SIZE`).

The pooling layers are thin modules around `nn.max_pool` / `nn.avg_pool` so
that model summaries (eo_jax/summary.py), which see module calls only, can
follow the receptive field through them.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# Largest input height/width computed as im2col. Measured with 3x3 convs at
# ResNet-18 widths, batch 64, on a 2-core CPU (jax 0.10.2), im2col vs nn.Conv:
# 2x2 maps (512 ch) 60-100x faster forward and forward+backward; 4x4 maps
# 1.2-2x faster forward, 1-17x forward+backward (a strided 4x4 conv's
# backward hits the slow path too); 8x8 maps 0.7-1.0x forward, 1.1-1.4x
# forward+backward; 16x16 maps 2.5x slower.
IM2COL_MAX_SIZE = 4

_FALLBACK_PADDINGS = ("CIRCULAR", "REFLECT", "CAUSAL")

# Set by `im2col_max_size`; a context variable rather than a module global so
# that an override cannot leak out of its `with` block or across threads.
_MAX_SIZE_OVERRIDE: contextvars.ContextVar[int | None] = (
    contextvars.ContextVar("im2col_max_size", default=None))


@contextlib.contextmanager
def im2col_max_size(size: int) -> Iterator[None]:
  """Gives every `Conv` traced inside the block the threshold `size`.

  For A/B measurements of whole models (`size=0` sends every convolution to
  XLA, the formulation before im2col) and for backends whose convolution is
  fast on small maps. The choice is made when a model is traced, so the
  block must enclose the tracing: put it inside the function given to
  `jax.jit`, not around a call of an already compiled one.

  Args:
    size: largest input height and width computed as im2col; 0 never uses
      im2col.
  """
  if size < 0:
    raise ValueError(f"im2col_max_size must be >= 0, got {size}.")
  token = _MAX_SIZE_OVERRIDE.set(size)
  try:
    yield
  finally:
    _MAX_SIZE_OVERRIDE.reset(token)


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
  kh, kw, cin, cout = kernel.shape
  if x.ndim != 4 or x.shape[-1] != cin:
    raise ValueError(f"conv_im2col expects a (B, H, W, {cin}) input for a "
                     f"{kernel.shape} kernel, got {x.shape}.")
  (pt, pb), (pl, pr) = padding
  sh, sw = strides
  dh, dw = kernel_dilation
  # lax.pad (unlike jnp.pad) accepts negative padding, which crops.
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  batch, height, width, _ = x.shape
  out_h = (height - (kh - 1) * dh - 1) // sh + 1
  out_w = (width - (kw - 1) * dw - 1) // sw + 1
  if out_h < 1 or out_w < 1:
    raise ValueError(
        f"A {kh}x{kw} kernel (dilation {dh}x{dw}) does not fit in the padded "
        f"{height}x{width} map; use a larger input or 'SAME' padding.")
  # The view order (row-major over kernel taps, channels innermost) matches
  # kernel.reshape(kh * kw * cin, cout).
  views = []
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dh, j * dw, 0)
      limit = (batch, i * dh + (out_h - 1) * sh + 1,
               j * dw + (out_w - 1) * sw + 1, cin)
      views.append(lax.slice(x, start, limit, (1, sh, sw, 1)))
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout),
                 precision=precision)


class Conv(nn.Conv):
  """`nn.Conv` that runs as im2col + matmul on small spatial maps.

  Same attributes, parameters and results as `nn.Conv`. When the input is a
  single-batch-axis NHWC map no larger than `im2col_max_size` in height and
  width, and the convolution is a plain one (no groups, input dilation, weight
  mask or circular/reflect/causal padding), it is computed by `conv_im2col`;
  everything else goes to `nn.Conv`. The choice depends on static shapes only.

  Attributes:
    im2col_max_size: largest input height and width computed as im2col;
      0 always uses `nn.Conv`. Inside a `with im2col_max_size(n):` block the
      block's `n` applies instead.
  """
  im2col_max_size: int = IM2COL_MAX_SIZE

  def _use_im2col(self, inputs: jax.Array) -> bool:
    kernel_size = _pairs(self.kernel_size, 1)
    if inputs.ndim != 4 or len(kernel_size) != 2:
      return False
    limit = _MAX_SIZE_OVERRIDE.get()
    if limit is None:
      limit = self.im2col_max_size
    if max(inputs.shape[1:3]) > limit:
      return False
    if self.feature_group_count != 1 or self.mask is not None:
      return False
    if any(d != 1 for d in _pairs(self.input_dilation, 2)):
      return False
    if self.conv_general_dilated is not None or (
        self.conv_general_dilated_cls is not None):
      return False
    if isinstance(self.padding, str) and self.padding.upper() in (
        _FALLBACK_PADDINGS):
      return False
    return True

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if not self._use_im2col(inputs):
      return super().__call__(inputs)
    kernel_size = _pairs(self.kernel_size, 2)
    strides = _pairs(self.strides, 2)
    dilation = _pairs(self.kernel_dilation, 2)
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
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    padding = explicit_padding(self.padding, inputs.shape[1:3], dilated,
                               strides)
    y = conv_im2col(inputs, kernel, strides, padding, dilation,
                    precision=self.precision)
    if bias is not None:
      y = y + bias
    return y


class MaxPool(nn.Module):
  """Max pooling as a module (padding with -inf, like `nn.max_pool`)."""
  window: tuple[int, int]
  strides: tuple[int, int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.max_pool(x, tuple(self.window), self.strides and tuple(
        self.strides), self.padding)


class AvgPool(nn.Module):
  """Average pooling as a module; padded zeros count in the average."""
  window: tuple[int, int]
  strides: tuple[int, int] | None = None
  padding: str | Sequence[tuple[int, int]] = "VALID"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, tuple(self.window), self.strides and tuple(
        self.strides), self.padding)
