r"""A ViT-S/8 train step's matrix products on CPU: XLA's dot libraries vs PyTorch.

  python -m benchmarks.cpu_matmul [--batch 32] [--rounds 15] \
      [--libraries ynnpack,eigen,onednn]

The non-attention matmuls of one training step of eo_jax's ViT-S/8 (384
wide, MLP 1536) on 64x64 images, batch 32 (65 tokens: 2080 rows): each
product with the contraction the step's forward or backward pass uses (e.g.
the fc1 kernel gradient contracts the 2080 rows of both operands). Each is
a jitted `lax.dot_general` timed against torch's `@` on the same arrays,
call by call in turn, in one process; both results are checked against each
other. A cell is the median over `--rounds` calls; ratio > 1: XLA faster.

XLA's CPU backend fixes the library for its dots when it starts, from
XLA_FLAGS, so each library is measured in a child process of its own:
YNNPACK (jax 0.10's default), Eigen
(`--xla_cpu_experimental_ynn_fusion_type=`) and oneDNN (that and
`--xla_cpu_experimental_onednn_fusion_type=dot`). The children run with
OMP_WAIT_POLICY=PASSIVE: with the OpenMP default, PyTorch's threads keep
spinning for a while after each product and take a core from the XLA call
that follows, which halves XLA's rate in a call-by-call comparison on two
cores (a whole train step, as `benchmarks.vit_throughput` times, hardly
sees it). This shows how much of the ViT's CPU gap to PyTorch lies in the
matmul library rather than in eo_jax's model code.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

WIDTH, MLP = 384, 1536

def products(m: int) -> dict[str, tuple[tuple[int, int], tuple[int, int],
                                        int, int]]:
  """name: (lhs shape, rhs shape, lhs contracting dim, rhs contracting dim)
  for `m` rows (batch x 65 tokens); a block has one of each kind (four of
  the q/k/v/out ones)."""
  return {
      "q/k/v/out forward": ((m, WIDTH), (WIDTH, WIDTH), 1, 0),
      "q/k/v/out kernel grad": ((m, WIDTH), (m, WIDTH), 0, 0),
      "fc1 forward": ((m, WIDTH), (WIDTH, MLP), 1, 0),
      "fc1 input grad": ((m, MLP), (WIDTH, MLP), 1, 1),
      "fc1 kernel grad": ((m, WIDTH), (m, MLP), 0, 0),
      "fc2 forward": ((m, MLP), (MLP, WIDTH), 1, 0),
  }

# XLA_FLAGS per library (the dot library each selects; convolutions are
# not involved).
LIBRARIES = {
    "ynnpack": "",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn": ("--xla_cpu_experimental_ynn_fusion_type= "
               "--xla_cpu_experimental_onednn_fusion_type=dot"),
}


def measure(batch: int = 32, rounds: int = 15) -> list[dict]:
  """Times every product in this process (XLA_FLAGS as it is)."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rows = []
  for name, (lhs_shape, rhs_shape, lc, rc) in products(batch * 65).items():
    lhs = rng.normal(size=lhs_shape).astype(np.float32)
    rhs = rng.normal(size=rhs_shape).astype(np.float32)
    dims = (((lc,), (rc,)), ((), ()))
    xla_dot = jax.jit(lambda a, b, dims=dims: lax.dot_general(a, b, dims))
    a, b = jax.device_put(lhs), jax.device_put(rhs)
    ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)

    def torch_dot(ta=ta, tb=tb, lc=lc, rc=rc):
      return (ta if lc == 1 else ta.t()) @ (tb if rc == 0 else tb.t())

    got_xla = np.asarray(xla_dot(a, b))
    got_torch = torch_dot().numpy()
    scale = float(np.max(np.abs(got_torch)))
    diff = float(np.max(np.abs(got_xla - got_torch))) / scale
    xla_s, torch_s = [], []
    for _ in range(rounds):
      start = time.perf_counter()
      xla_dot(a, b).block_until_ready()
      xla_s.append(time.perf_counter() - start)
      start = time.perf_counter()
      torch_dot()
      torch_s.append(time.perf_counter() - start)
    flop = 2.0 * lhs.size * rhs.size / lhs_shape[lc]
    rows.append(dict(name=name, flop=flop, xla_s=float(np.median(xla_s)),
                     torch_s=float(np.median(torch_s)), rel_diff=diff))
  return rows


def _child(batch: int, rounds: int) -> None:
  print(json.dumps({"rows": measure(batch, rounds),
                    "load": os.getloadavg()[0]}))


def _run_library(library: str, batch: int, rounds: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=LIBRARIES[library],
             OMP_WAIT_POLICY="PASSIVE")
  out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_matmul",
                        "--child", "--batch", str(batch), "--rounds",
                        str(rounds)], env=env, check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--libraries", default=",".join(LIBRARIES))
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.batch, args.rounds)
    return
  libraries = [name.strip() for name in args.libraries.split(",")]
  unknown = sorted(set(libraries) - set(LIBRARIES))
  if unknown:
    parser.error(f"unknown --libraries {unknown}; choose from "
                 f"{sorted(LIBRARIES)}.")
  print(f"{os.cpu_count()} CPUs, batch {args.batch} ({args.batch * 65} rows), "
        f"median of {args.rounds} alternating calls; 1-min load at the "
        f"start {os.getloadavg()[0]:.2f}")
  for library in libraries:
    result = _run_library(library, args.batch, args.rounds)
    print(f"\n{library} (XLA_FLAGS='{LIBRARIES[library]}'), load at its end "
          f"{result['load']:.2f}")
    print(f"{'product':24s} {'XLA ms':>8s} {'GFLOP/s':>8s} {'torch ms':>9s} "
          f"{'GFLOP/s':>8s} {'XLA/torch':>9s} {'rel diff':>9s}")
    total_xla = total_torch = 0.0
    for row in result["rows"]:
      total_xla += row["xla_s"]
      total_torch += row["torch_s"]
      print(f"{row['name']:24s} {1e3 * row['xla_s']:8.2f} "
            f"{row['flop'] / row['xla_s'] / 1e9:8.1f} "
            f"{1e3 * row['torch_s']:9.2f} "
            f"{row['flop'] / row['torch_s'] / 1e9:8.1f} "
            f"{row['torch_s'] / row['xla_s']:8.2f}x {row['rel_diff']:9.1e}")
    print(f"{'all six':24s} {1e3 * total_xla:8.2f} {'':8s} "
          f"{1e3 * total_torch:9.2f} {'':8s} "
          f"{total_torch / total_xla:8.2f}x")


if __name__ == "__main__":
  main()
