"""The ResNet stem convolution on CPU: formulations of its training pass.

    python -m benchmarks.stem_conv            # the 7x7/2 13->64 stem
    python -m benchmarks.stem_conv --rule     # taps vs im2col, other convs

Times the stem of eo_jax's ResNets on 13-band 128x128 images (7x7 stride-2
convolution, padding 3, 13 -> 64 channels, batch 64) as training runs it:
forward plus the kernel gradient (the image needs no gradient, and every
formulation here leaves the input gradient out). Formulations:

  * `nn.Conv`: XLA's convolution and its own kernel gradient;
  * `taps`: XLA's convolution, kernel gradient as one matmul per kernel tap
    (`layers.conv_matmul_kernel_grad(..., kernel_grad='taps')`, the CPU
    default before `im2col`);
  * `im2col`: XLA's convolution, kernel gradient as one matmul per chunk of
    images between their channel-major im2col patches and the cotangent
    (`kernel_grad='im2col'`, what `layers.Conv` now picks for the stem);
  * `im2col batch`: forward and kernel gradient as one im2col matmul over
    the whole batch (`layers.conv_im2col`: 668 MB of patches);
  * `s2d ...`: space-to-depth, the stride-2 7x7 convolution written as a
    stride-1 4x4 one over the 2x2-blocked input (52 channels) with the
    kernel zero-padded to 8x8: by XLA alone, with per-tap matmuls (16 taps
    of 52 channels instead of 49 of 13) and with im2col chunks;
  * `torch`: `torch.nn.Conv2d` (oneDNN), the reference.

Each formulation's forward is timed too, and its kernel gradient checked
against `nn.Conv`'s. All run in the same process, interleaved round by
round so that load from other processes hits them alike; a cell is the
median over rounds (the minimum in brackets), and `taps/this` > 1 means
faster than the previous default.

`--rule` times the two kernel-gradient forms of `layers.conv_matmul_kernel_grad`
(forward + kernel and input gradients) at the conv shapes of ResNet-18 on
128x128 inputs, to show where `layers.Conv`'s choice between them
(`backend.CPU_IM2COL_KERNEL_GRAD_MAX_CHANNELS`) should sit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax

from eo_jax.models import layers

_DN = ("NHWC", "HWIO", "NHWC")

# --rule shapes: (label, input size, channels in, channels out, kernel,
# stride), batch 64; the stem, then every kxk conv of ResNet-18 on 128x128
# inputs above the im2col map size (stage 4's 4x4 maps use im2col).
RULE_SHAPES = (
    ("128 7x7 13->64 /2", 128, 13, 64, 7, 2),
    ("32 3x3 64->64", 32, 64, 64, 3, 1),
    ("32 3x3 64->128 /2", 32, 64, 128, 3, 2),
    ("16 3x3 128->128", 16, 128, 128, 3, 1),
    ("16 3x3 128->256 /2", 16, 128, 256, 3, 2),
    ("8 3x3 256->256", 8, 256, 256, 3, 1),
)

Thunk = Callable[[], object]


def _space_to_depth(x: jax.Array, pad: int) -> jax.Array:
  """(B, H, W, C) -> padded and 2x2-blocked (B, H'/2, W'/2, 4C).

  Channel order (row in block, column in block, channel).
  """
  x = jnp.pad(x, ((0, 0), (pad, pad + (x.shape[1] + 2 * pad) % 2),
                  (pad, pad + (x.shape[2] + 2 * pad) % 2), (0, 0)))
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def _space_to_depth_kernel(kernel: jax.Array) -> jax.Array:
  """(k, k, C, O), k odd -> the ((k+1)/2, (k+1)/2, 4C, O) blocked kernel.

  Zero-padded to an even size, so that tap (2i + a, 2j + d) of the strided
  kernel meets block offset (a, d) of the blocked tap (i, j).
  """
  k, _, c, o = kernel.shape
  kernel = jnp.pad(kernel, ((0, k % 2), (0, k % 2), (0, 0), (0, 0)))
  half = kernel.shape[0] // 2
  kernel = kernel.reshape(half, 2, half, 2, c, o).transpose(0, 2, 1, 3, 4, 5)
  return kernel.reshape(half, half, 4 * c, o)


def _stem_forwards(pad: int) -> dict[str, Callable]:
  """{name: f(x, kernel)} stride-2 convolutions, each equal to XLA's."""
  pads = ((pad, pad), (pad, pad))

  def s2d(form):
    def conv(x, kernel):
      xs, ks = _space_to_depth(x, pad), _space_to_depth_kernel(kernel)
      if form == "xla":
        return lax.conv_general_dilated(xs, ks, (1, 1), "VALID",
                                        dimension_numbers=_DN)
      return layers.conv_matmul_kernel_grad(xs, ks, (1, 1), ((0, 0), (0, 0)),
                                            kernel_grad=form)
    return conv

  return {
      "nn.Conv": lambda x, k: lax.conv_general_dilated(
          x, k, (2, 2), pads, dimension_numbers=_DN),
      "taps": lambda x, k: layers.conv_matmul_kernel_grad(
          x, k, (2, 2), pads, kernel_grad="taps"),
      "im2col": lambda x, k: layers.conv_matmul_kernel_grad(
          x, k, (2, 2), pads, kernel_grad="im2col"),
      "im2col batch": lambda x, k: layers.conv_im2col(x, k, (2, 2), pads),
      "s2d nn.Conv": s2d("xla"),
      "s2d taps": s2d("taps"),
      "s2d im2col": s2d("im2col"),
  }


def _value_and_kernel_grad(conv: Callable, x: jax.Array, kernel: jax.Array,
                           cotangent: jax.Array
                           ) -> tuple[jax.Array, jax.Array]:
  """conv(x, kernel) and its kernel's cotangent; the image gets none.

  The value is returned so that XLA cannot drop the forward pass.
  """
  y, vjp = jax.vjp(lambda k: conv(x, k), kernel)
  return y, vjp(cotangent)[0]


def _value_and_grads(conv: Callable, x: jax.Array, kernel: jax.Array,
                     cotangent: jax.Array) -> tuple[jax.Array, ...]:
  """conv(x, kernel) and the cotangents of both (a conv inside a net)."""
  y, vjp = jax.vjp(conv, x, kernel)
  return (y,) + vjp(cotangent)


def _torch_thunks(x: np.ndarray, kernel: np.ndarray, cotangent: np.ndarray,
                  stride: int, pad: int, input_grad: bool
                  ) -> tuple[Thunk, Thunk]:
  conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[0],
                         stride=stride, padding=pad, bias=False)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  xt.requires_grad_(input_grad)
  ct = torch.from_numpy(cotangent.transpose(0, 3, 1, 2).copy())

  def forward():
    with torch.no_grad():
      return conv(xt)

  def training():
    conv.weight.grad = xt.grad = None
    conv(xt).backward(ct)
    return conv.weight.grad

  return forward, training


def _block(out) -> None:
  if not isinstance(out, torch.Tensor):
    jax.block_until_ready(out)


def _interleaved(thunks: dict[str, Thunk], rounds: int
                 ) -> dict[str, list[float]]:
  """Seconds per call of each thunk, one entry per round, interleaved."""
  for fn in thunks.values():  # compile and warm up
    _block(fn())
  times = {name: [] for name in thunks}
  for _ in range(rounds):
    for name, fn in thunks.items():
      start = time.perf_counter()
      _block(fn())
      times[name].append(time.perf_counter() - start)
  return times


def _cell(seconds: list[float]) -> str:
  return f"{1e3 * statistics.median(seconds):.1f} ({1e3 * min(seconds):.1f})"


def stem(batch: int, rounds: int, with_torch: bool) -> None:
  """Times and checks every stem formulation; prints one table."""
  size, cin, cout, k, pad = 128, 13, 64, 7, 3
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  kernel = nn.initializers.lecun_normal()(jax.random.key(1), (k, k, cin, cout))
  out = (size + 2 * pad - k) // 2 + 1
  cotangent = jax.random.normal(jax.random.key(2), (batch, out, out, cout))
  forwards = _stem_forwards(pad)
  thunks = {}
  ref_y = ref_grad = None
  checks = {}
  for name, conv in forwards.items():
    fwd = jax.jit(conv)
    train = jax.jit(lambda x, k, ct, conv=conv: _value_and_kernel_grad(
        conv, x, k, ct))
    y, grad = fwd(x, kernel), train(x, kernel, cotangent)[1]
    if ref_y is None:
      ref_y, ref_grad = y, grad
    checks[name] = (float(jnp.abs(y - ref_y).max()),
                    float(jnp.abs(grad - ref_grad).max()))
    thunks[(name, "fwd")] = lambda f=fwd: f(x, kernel)
    thunks[(name, "fwd+kgrad")] = lambda f=train: f(x, kernel, cotangent)
  if with_torch:
    tf, tt = _torch_thunks(np.asarray(x), np.asarray(kernel),
                           np.asarray(cotangent), 2, pad, input_grad=False)
    thunks[("torch", "fwd")], thunks[("torch", "fwd+kgrad")] = tf, tt
    checks["torch"] = (float("nan"), float(np.abs(
        tt().numpy().transpose(2, 3, 1, 0) - np.asarray(ref_grad)).max()))
  print(f"kernel gradient max |nn.Conv| {float(jnp.abs(ref_grad).max()):.1f}",
        flush=True)
  times = _interleaved(thunks, rounds)
  names = list(checks)
  base = {p: statistics.median(times[("taps", p)])
          for p in ("fwd", "fwd+kgrad")}
  print(f"{'formulation':<14}{'fwd ms':>16}{'fwd+kgrad ms':>18}"
        f"{'taps/this':>11}{'max |dy|':>10}{'max |dk|':>10}")
  for name in names:
    f, t = times[(name, "fwd")], times[(name, "fwd+kgrad")]
    dy, dk = checks[name]
    print(f"{name:<14}{_cell(f):>16}{_cell(t):>18}"
          f"{base['fwd+kgrad'] / statistics.median(t):>10.2f}x"
          f"{dy:>10.1e}{dk:>10.1e}")


def rule(batch: int, rounds: int) -> None:
  """taps vs im2col kernel gradients at ResNet-18's conv shapes."""
  thunks = {}
  for label, size, cin, cout, k, stride in RULE_SHAPES:
    pad = (k - 1) // 2
    pads = ((pad, pad), (pad, pad))
    x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
    kernel = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.05
    out = (size + 2 * pad - k) // stride + 1
    ct = jax.random.normal(jax.random.key(2), (batch, out, out, cout))
    for form in ("taps", "im2col"):
      def conv(x, kk, form=form, stride=stride, pads=pads):
        return layers.conv_matmul_kernel_grad(x, kk, (stride, stride), pads,
                                              kernel_grad=form)
      if cin == 13:  # the stem: its image needs no gradient
        train = jax.jit(lambda x, kk, ct, conv=conv: _value_and_kernel_grad(
            conv, x, kk, ct))
      else:
        train = jax.jit(lambda x, kk, ct, conv=conv: _value_and_grads(
            conv, x, kk, ct))
      thunks[(label, form)] = (
          lambda f=train, x=x, kk=kernel, ct=ct: f(x, kk, ct))
  times = _interleaved(thunks, rounds)
  print(f"{'shape (batch ' + str(batch) + ')':<22}{'taps ms':>18}"
        f"{'im2col ms':>18}{'taps/im2col':>13}")
  for label, *_ in RULE_SHAPES:
    t, i = times[(label, "taps")], times[(label, "im2col")]
    print(f"{label:<22}{_cell(t):>18}{_cell(i):>18}"
          f"{statistics.median(t) / statistics.median(i):>12.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=7,
                      help="interleaved repeats; cells are medians over them")
  parser.add_argument("--rule", action="store_true",
                      help="taps vs im2col kernel gradients at ResNet-18's "
                      "conv shapes instead of the stem formulations")
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
  if args.rule:
    rule(args.batch_size, args.rounds)
  else:
    stem(args.batch_size, args.rounds, not args.skip_torch)
  print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
