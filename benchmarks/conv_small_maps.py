"""One convolution: flax nn.Conv vs eo_jax layers.Conv vs torch nn.Conv2d.

    python -m benchmarks.conv_small_maps                     # 2x2 .. 16x16
    python -m benchmarks.conv_small_maps --shapes truncated  # 128x128 model

Times a single bias-free convolution at ResNet-18 shapes (batch 64). The
default set is the 3x3 convs on the 2x2x512 and 4x4x256 maps of ResNet-18's
last two stages at 64x64 input, the strided convs entering those stages, and
8x8 / 16x16 maps for contrast; `--shapes truncated` has every conv shape of
the truncated ResNet-18 at 128x128x13 input. Each shape runs forward only
and forward+backward (the gradients training needs: kernel and input, or
the kernel only for the stem, whose input is the image) by

  * `flax.linen.Conv`, i.e. XLA's own convolution ("before");
  * `eo_jax.models.layers.Conv` as models use it ("after"): im2col on maps
    <= `layers.IM2COL_MAX_SIZE`, above that XLA's convolution with the
    kernel gradient computed as matmuls (`conv_matmul_kernel_grad`);
  * the im2col formulation forced on every shape, to show where the
    threshold should sit;
  * `torch.nn.Conv2d` (NCHW, oneDNN), the reference.

All four run in the same process, interleaved round by round so that load
from other processes hits them alike; a cell is the median over rounds of
the mean time of a few back-to-back calls (the minimum is printed too).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import torch

from eo_jax.models import layers

# name -> (label, input size, channels in, channels out, kernel, stride,
# input gradient needed). 'small': where im2col applies (<= 4x4) and just
# above. 'truncated': the truncated ResNet-18 at 128x128x13 (maps >= 16x16,
# so all XLA convolutions), to see where a whole-model gap to torch lies.
SHAPE_SETS = {
    "small": (
        ("2x2 512->512 s1", 2, 512, 512, 3, 1, True),
        ("4x4 256->512 s2", 4, 256, 512, 3, 2, True),
        ("4x4 256->256 s1", 4, 256, 256, 3, 1, True),
        ("8x8 128->256 s2", 8, 128, 256, 3, 2, True),
        ("8x8 128->128 s1", 8, 128, 128, 3, 1, True),
        ("16x16 64->64 s1", 16, 64, 64, 3, 1, True),
    ),
    "truncated": (
        ("128 7x7 13->64 s2", 128, 13, 64, 7, 2, False),
        ("32 3x3 64->64 s1", 32, 64, 64, 3, 1, True),
        ("32 3x3 64->128 s2", 32, 64, 128, 3, 2, True),
        ("32 1x1 64->128 s2", 32, 64, 128, 1, 2, True),
        ("16 3x3 128->128 s1", 16, 128, 128, 3, 1, True),
    ),
}

IMPLS = ("nn.Conv", "layers.Conv", "im2col", "torch")
PASSES = ("fwd", "fwd+bwd")

Thunk = Callable[[], object]


def _out_size(size: int, kernel: int, stride: int) -> int:
  pad = (kernel - 1) // 2
  return (size + 2 * pad - kernel) // stride + 1


def _jax_fns(size: int, cin: int, cout: int, kernel: int, stride: int,
             input_grad: bool, batch: int) -> dict[str, tuple[Thunk, Thunk]]:
  """{impl: (forward, forward+backward)} thunks returning arrays to block on."""
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  pad = (kernel - 1) // 2
  kw = dict(features=cout, kernel_size=(kernel, kernel), strides=stride,
            padding=((pad, pad), (pad, pad)), use_bias=False)
  modules = {
      "nn.Conv": nn.Conv(**kw),
      "layers.Conv": layers.Conv(**kw),
      # A threshold above every size tested forces the im2col formulation.
      "im2col": layers.Conv(**kw, im2col_max_size=1 << 16),
  }
  params = nn.Conv(**kw).init(jax.random.key(1), x)["params"]
  out = _out_size(size, kernel, stride)
  cotangent = jax.random.normal(jax.random.key(2), (batch, out, out, cout))
  fns = {}
  for name, module in modules.items():
    def forward(p, x, m=module):
      return m.apply({"params": p}, x)

    def forward_backward(p, x, m=module):
      if input_grad:
        _, vjp = jax.vjp(lambda p, x: m.apply({"params": p}, x), p, x)
      else:
        _, vjp = jax.vjp(lambda p: m.apply({"params": p}, x), p)
      return vjp(cotangent)

    fwd, fwd_bwd = jax.jit(forward), jax.jit(forward_backward)
    fns[name] = (lambda f=fwd: f(params, x), lambda f=fwd_bwd: f(params, x))
  return fns


def _torch_fns(size: int, cin: int, cout: int, kernel: int, stride: int,
               input_grad: bool, batch: int) -> tuple[Thunk, Thunk]:
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride,
                         padding=(kernel - 1) // 2, bias=False)
  x = torch.randn(batch, cin, size, size, requires_grad=input_grad)
  out = _out_size(size, kernel, stride)
  cotangent = torch.randn(batch, cout, out, out)

  def forward():
    with torch.no_grad():
      return conv(x)

  def forward_backward():
    x.grad = None
    conv.weight.grad = None
    conv(x).backward(cotangent)
    return conv.weight.grad

  return forward, forward_backward


def _block(out) -> None:
  # torch on CPU is synchronous; JAX dispatch is asynchronous.
  if not isinstance(out, torch.Tensor):
    jax.block_until_ready(out)


def _time_calls(fn: Thunk, calls: int) -> float:
  """Mean seconds per call over `calls` back-to-back calls."""
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  _block(out)
  return (time.perf_counter() - start) / calls


def _calls_for(fn: Thunk, budget_s: float) -> int:
  """How many calls fit in about `budget_s`, from one (warm) call."""
  start = time.perf_counter()
  _block(fn())
  elapsed = time.perf_counter() - start
  return int(min(50, max(1, budget_s / max(elapsed, 1e-6))))


def measure(shapes, batch: int, rounds: int, budget_s: float
            ) -> dict[tuple[str, str, str], list[float]]:
  """{(shape, pass, impl): seconds per call, one entry per round}."""
  times = {}
  for shape in shapes:
    name, *spec = shape
    fns = _jax_fns(*spec, batch)
    fns["torch"] = _torch_fns(*spec, batch)
    for pass_index, pass_name in enumerate(PASSES):
      thunks = {impl: fns[impl][pass_index] for impl in IMPLS}
      for fn in thunks.values():  # compile and warm up
        _block(fn())
      calls = {impl: _calls_for(fn, budget_s) for impl, fn in thunks.items()}
      for _ in range(rounds):
        for impl, fn in thunks.items():
          times.setdefault((name, pass_name, impl), []).append(
              _time_calls(fn, calls[impl]))
    print(f"  measured {name}", flush=True)
  return times


def report(shapes, times: dict[tuple[str, str, str], list[float]]) -> None:
  header = (f"{'shape (batch 64)':<19}{'pass':<8}" +
            "".join(f"{impl + ' ms':>18}" for impl in IMPLS) +
            f"{'before/after':>13}{'after/torch':>12}{'im2col/torch':>13}")
  print(header)
  print("-" * len(header))
  for name, *_ in shapes:
    for pass_name in PASSES:
      runs = {i: times[(name, pass_name, i)] for i in IMPLS}
      med = {i: statistics.median(v) for i, v in runs.items()}
      cells = "".join(
          f"{1e3 * med[i]:.2f} ({1e3 * min(runs[i]):.2f})".rjust(18)
          for i in IMPLS)
      # Ratios of median times. before/after > 1: layers.Conv is faster
      # than nn.Conv; */torch > 1: slower than torch.
      print(f"{name:<19}{pass_name:<8}{cells}"
            f"{med['nn.Conv'] / med['layers.Conv']:>12.1f}x"
            f"{med['layers.Conv'] / med['torch']:>11.2f}x"
            f"{med['im2col'] / med['torch']:>12.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="small", choices=sorted(SHAPE_SETS))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=7,
                      help="interleaved repeats; cells are medians over them")
  parser.add_argument("--budget_s", type=float, default=0.1,
                      help="about how long one timed repeat of one impl runs")
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count())
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"layers.IM2COL_MAX_SIZE={layers.IM2COL_MAX_SIZE}")
  shapes = SHAPE_SETS[args.shapes]
  times = measure(shapes, args.batch_size, args.rounds, args.budget_s)
  print(f"load after: {os.getloadavg()[0]:.2f}")
  print("ms per call: median over rounds (min); 'before' = nn.Conv, "
        "'after' = layers.Conv")
  report(shapes, times)


if __name__ == "__main__":
  main()
