"""One 3x3 convolution on small maps: flax nn.Conv vs eo_jax layers.Conv vs torch.

    python -m benchmarks.conv_small_maps [--batch_size 64] [--rounds 7]

Times a single bias-free 3x3 convolution at ResNet-18 shapes (batch 64):
the 2x2x512 and 4x4x256 maps of its last two stages at 64x64 input, the
strided convs entering those stages, and 8x8 / 16x16 maps for contrast. Each
shape is run forward only and forward+backward (gradients w.r.t. input and
kernel, as in training) by

  * `flax.linen.Conv`, i.e. XLA's own convolution ("before");
  * `eo_jax.models.layers.Conv` with its default threshold ("after"): im2col
    on maps <= `layers.IM2COL_MAX_SIZE`, XLA's convolution above;
  * `layers.conv_im2col` forced on every shape, to show where the threshold
    should sit;
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
import jax.numpy as jnp
import numpy as np
import torch

from eo_jax.models import layers

# (name, input size, channels in, channels out, stride). The first five are
# the 3x3 convs of ResNet-18 at 64x64 input from stage 3 on.
SHAPES = (
    ("2x2 512->512 s1", 2, 512, 512, 1),
    ("4x4 256->512 s2", 4, 256, 512, 2),
    ("4x4 256->256 s1", 4, 256, 256, 1),
    ("8x8 128->256 s2", 8, 128, 256, 2),
    ("8x8 128->128 s1", 8, 128, 128, 1),
    ("16x16 64->64 s1", 16, 64, 64, 1),
)

IMPLS = ("nn.Conv", "layers.Conv", "im2col", "torch")


def _jax_fns(size: int, cin: int, cout: int, stride: int, batch: int
             ) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
  """{impl: (forward, forward+backward)} thunks returning arrays to block on."""
  x = jax.random.normal(jax.random.key(0), (batch, size, size, cin))
  kw = dict(features=cout, kernel_size=(3, 3), strides=stride,
            padding=((1, 1), (1, 1)), use_bias=False)
  modules = {
      "nn.Conv": nn.Conv(**kw),
      "layers.Conv": layers.Conv(**kw),
      # A threshold above every size tested forces the im2col formulation.
      "im2col": layers.Conv(**kw, im2col_max_size=1 << 16),
  }
  params = nn.Conv(**kw).init(jax.random.key(1), x)["params"]
  out_size = (size - 1) // stride + 1
  cotangent = jax.random.normal(jax.random.key(2),
                                (batch, out_size, out_size, cout))
  fns = {}
  for name, module in modules.items():
    def forward(p, x, m=module):
      return m.apply({"params": p}, x)

    def forward_backward(p, x, m=module):
      _, vjp = jax.vjp(lambda p, x: m.apply({"params": p}, x), p, x)
      return vjp(cotangent)

    fwd, fwd_bwd = jax.jit(forward), jax.jit(forward_backward)
    fns[name] = (lambda f=fwd: f(params, x), lambda f=fwd_bwd: f(params, x))
  return fns


def _torch_fns(size: int, cin: int, cout: int, stride: int, batch: int
               ) -> tuple[Callable[[], object], Callable[[], object]]:
  torch.manual_seed(0)
  conv = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
  x = torch.randn(batch, cin, size, size, requires_grad=True)
  out_size = (size - 1) // stride + 1
  cotangent = torch.randn(batch, cout, out_size, out_size)

  def forward():
    with torch.no_grad():
      return conv(x)

  def forward_backward():
    x.grad = None
    conv.weight.grad = None
    conv(x).backward(cotangent)
    return x.grad

  return forward, forward_backward


def _block(out) -> None:
  # torch on CPU is synchronous; JAX dispatch is asynchronous.
  if not isinstance(out, torch.Tensor):
    jax.block_until_ready(out)


def _time_calls(fn: Callable[[], object], calls: int) -> float:
  """Mean seconds per call over `calls` back-to-back calls."""
  start = time.perf_counter()
  for _ in range(calls):
    out = fn()
  _block(out)
  return (time.perf_counter() - start) / calls


def _calls_for(fn: Callable[[], object], budget_s: float) -> int:
  """How many calls fit in about `budget_s`, from one (warm) call."""
  start = time.perf_counter()
  _block(fn())
  elapsed = time.perf_counter() - start
  return int(min(50, max(1, budget_s / max(elapsed, 1e-6))))


def measure(batch: int, rounds: int, budget_s: float
            ) -> dict[tuple[str, str, str], list[float]]:
  """{(shape, 'fwd'|'fwd+bwd', impl): seconds per call, one per round}."""
  times = {}
  for shape_name, size, cin, cout, stride in SHAPES:
    fns = _jax_fns(size, cin, cout, stride, batch)
    fns["torch"] = _torch_fns(size, cin, cout, stride, batch)
    for mode_index, mode in enumerate(("fwd", "fwd+bwd")):
      thunks = {impl: fns[impl][mode_index] for impl in IMPLS}
      for fn in thunks.values():  # compile and warm up
        _block(fn())
      calls = {impl: _calls_for(fn, budget_s) for impl, fn in thunks.items()}
      for _ in range(rounds):
        for impl, fn in thunks.items():
          times.setdefault((shape_name, mode, impl), []).append(
              _time_calls(fn, calls[impl]))
    print(f"  measured {shape_name}", flush=True)
  return times


def report(times: dict[tuple[str, str, str], list[float]]) -> None:
  header = (f"{'shape (batch 64 NHWC)':<18} {'pass':<8}" +
            "".join(f"{impl + ' ms':>15}" for impl in IMPLS) +
            f"{'before/after':>14}{'after/torch':>13}{'im2col/torch':>14}")
  print(header)
  print("-" * len(header))
  for shape_name, *_ in SHAPES:
    for mode in ("fwd", "fwd+bwd"):
      med = {i: statistics.median(times[(shape_name, mode, i)]) for i in IMPLS}
      best = {i: min(times[(shape_name, mode, i)]) for i in IMPLS}
      cells = "".join(f"{1e3 * med[i]:>8.2f} ({1e3 * best[i]:.2f})"
                      .rjust(15) for i in IMPLS)
      # Ratios of times: >1 in 'before/after' means layers.Conv is faster
      # than nn.Conv; >1 in '*/torch' means slower than torch.
      print(f"{shape_name:<18} {mode:<8}{cells}"
            f"{med['nn.Conv'] / med['layers.Conv']:>13.1f}x"
            f"{med['layers.Conv'] / med['torch']:>12.2f}x"
            f"{med['im2col'] / med['torch']:>13.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
  times = measure(args.batch_size, args.rounds, args.budget_s)
  print(f"load after: {os.getloadavg()[0]:.2f}")
  print("ms per call: median over rounds (min); 'after' = layers.Conv, "
        "'before' = nn.Conv")
  report(times)


if __name__ == "__main__":
  main()
