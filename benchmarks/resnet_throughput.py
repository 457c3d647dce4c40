"""ResNet train-step throughput on CPU: eo_jax (Flax) vs the same PyTorch net.

    # Truncated ResNet-18 on 128x128x13, before/after eo_jax's layers:
    python -m benchmarks.resnet_throughput --baseline plain
    # Full ResNet-18 on 64x64x13 (2x2 maps in the last stage), im2col:
    python -m benchmarks.resnet_throughput --model resnet18 --image_size 64 \
        --baseline no_im2col

A train step is forward + backward + AdamW update on a synthetic batch that
is already in memory: for JAX one jitted function with the state donated,
timed to `block_until_ready`; for PyTorch `zero_grad`, forward, `backward`,
`step` (synchronous on CPU). Both networks are built here from the same
description: the registered eo_jax model ('resnet18_truncated': stem + two
stages + MLP head with dropout 0.2; or 'resnet18': four stages + linear
head) for 13 bands and 10 classes, and a hand-written `torch.nn.Module` with
the same layers, widths, BatchNorm settings and head (their parameter counts
are printed and must match). Both use AdamW (lr 1e-3, betas 0.9/0.999, eps
1e-8, weight decay 1e-4 on the >= 2-d weights only, eo_jax's default
`config.optim` with a constant schedule) and softmax cross-entropy.

The runs are timed in the same process, interleaved: each round runs
`--steps` steps of each, so that load from other processes on the machine
hits them alike. Reported: images/s as the median and the best over rounds,
and the ratio jax/torch (> 1: JAX is faster).

eo_jax's layers route around slow XLA CPU kernels: `layers.Conv` computes
maps <= 4x4 as im2col and, on larger maps, the kernel gradient as matmuls
(im2col chunks for kxk kernels on <= 128 channels, else one per tap);
`layers.MaxPool` has its own gradient. `--no_im2col`,
`--no_matmul_kernel_grad`, `--no_im2col_kernel_grad` (per-tap kernel
gradients everywhere) and `--no_max_pool_views_grad` switch these off in the
measured model; `--baseline X` times a second eo_jax model with X
switched off, interleaved with the first, for a before/after ratio ('plain':
all off, every conv `nn.Conv` and the pool `nn.max_pool`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch
from torch import nn as tnn
from torch.nn import functional as F

from eo_jax.config import base_config
from eo_jax.data import bands as bands_lib
from eo_jax import backend
from eo_jax.models import build_model, layers
from eo_jax.objectives import losses
from eo_jax.train import optim

NUM_BANDS = 13
NUM_CLASSES = 10

# `layers.override_formulations` arguments of the --baseline choices.
BASELINES = {
    "none": {},
    "no_im2col": dict(im2col_max_size=0),
    "no_matmul_kernel_grad": dict(matmul_kernel_grad=False),
    "no_max_pool_views_grad": dict(max_pool_views_grad=False),
    "no_im2col_kernel_grad": dict(im2col_kernel_grad_max_channels=0),
    "plain": dict(im2col_max_size=0, matmul_kernel_grad=False,
                  max_pool_views_grad=False),
}

# What each benchmarked eo_jax model is, for the PyTorch twin.
_ARCHS = {
    "resnet18_truncated": dict(num_stages=2, head="mlp"),
    "resnet18": dict(num_stages=4, head="linear"),
}


# ---------------------------------------------------------------------------
# JAX side.
# ---------------------------------------------------------------------------


def _optim_config() -> ml_collections.ConfigDict:
  c = base_config().optim
  c.name = "adamw"
  # A schedule costs nothing measurable; constant keeps the PyTorch twin a
  # plain AdamW without a scheduler.
  c.schedule = "constant"
  return c


def make_jax_step(model_name: str, batch: int, image_size: int,
                  overrides: dict[str, Any]
                  ) -> tuple[Callable[[], Any], Callable[[], None], int]:
  """A jitted train step on a fixed device batch.

  `overrides` are `layers.override_formulations` arguments.

  Returns:
    `(step, block, num_params)`: `step()` runs one update on the state held
    in a closure, `block()` waits for the latest state to be computed.
  """
  model_config = ml_collections.ConfigDict({"name": model_name})
  model = build_model(model_config, bands=bands_lib.SENTINEL2,
                      num_classes=NUM_CLASSES)
  image = jax.random.normal(jax.random.key(0),
                            (batch, image_size, image_size, NUM_BANDS))
  label = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
  # The backend's init RNG (non-partitionable on CPU: compiles much faster).
  with backend.init_rng_context():
    variables = jax.jit(lambda x: model.init(
        {"params": jax.random.key(2), "dropout": jax.random.key(3)}, x))(image)
  params, batch_stats = variables["params"], variables["batch_stats"]
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  tx, _ = optim.make_optimizer(_optim_config(), params, steps_per_epoch=1,
                               total_steps=1)
  state = (params, batch_stats, tx.init(params), jnp.zeros((), jnp.int32))

  def loss_fn(params, batch_stats, step, image, label):
    (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": batch_stats}, image, train=True,
        rngs={"dropout": jax.random.fold_in(jax.random.key(4), step)},
        mutable=["batch_stats"])
    loss = losses.cross_entropy(logits, label).mean()
    return loss, new_vars["batch_stats"]

  def train_step(state, image, label):
    params, batch_stats, opt_state, step = state
    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(
        params, batch_stats, step, image, label)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state,
            step + 1)

  def overridden_step(state, image, label):
    # The layers pick their formulation when the step is traced (its first
    # call), so the override sits inside the jitted function.
    with layers.override_formulations(**overrides):
      return train_step(state, image, label)

  jit_step = jax.jit(overridden_step, donate_argnums=0)
  holder = [state]

  def step():
    # The batch is an argument, not a closed-over constant, as in training:
    # XLA would otherwise constant-fold ops on the image at compile time.
    holder[0] = jit_step(holder[0], image, label)

  def block():
    jax.block_until_ready(holder[0])

  return step, block, num_params


# ---------------------------------------------------------------------------
# PyTorch side: the same networks, written out.
# ---------------------------------------------------------------------------


def _bn(channels: int) -> tnn.BatchNorm2d:
  # eo_jax uses PyTorch's BatchNorm defaults (eps 1e-5, momentum 0.1).
  return tnn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class TorchBasicBlock(tnn.Module):
  """Two 3x3 convs with an identity or 1x1-conv + BN shortcut."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = _bn(cout)
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = _bn(cout)
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = tnn.Sequential(
          tnn.Conv2d(cin, cout, 1, stride, 0, bias=False), _bn(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.proj is None else self.proj(x)))


class TorchResNet(tnn.Module):
  """ResNet-18 layout (7x7/2 stem, 3x3/2 max pool, basic blocks) in NCHW.

  `num_stages` truncates after that many stages; `head` is 'linear' (fc) or
  'mlp' (Linear(hidden) -> ReLU -> Dropout(0.2) -> Linear), as in eo_jax's
  heads.
  """

  def __init__(self, in_channels: int, num_classes: int, num_stages: int,
               head: str, width: int = 64, hidden: int = 1024):
    super().__init__()
    self.stem = tnn.Sequential(
        tnn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _bn(width),
        tnn.ReLU(), tnn.MaxPool2d(3, 2, 1))
    blocks, cin = [], width
    for i in range(num_stages):
      cout = width * 2**i
      for j in range(2):
        blocks.append(TorchBasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
        cin = cout
    self.blocks = tnn.Sequential(*blocks)
    if head == "mlp":
      self.head = tnn.Sequential(tnn.Linear(cin, hidden), tnn.ReLU(),
                                 tnn.Dropout(0.2),
                                 tnn.Linear(hidden, num_classes))
    else:
      self.head = tnn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem(x))
    return self.head(x.mean(dim=(2, 3)))


def make_torch_step(model_name: str, batch: int, image_size: int
                    ) -> tuple[Callable[[], Any], int]:
  torch.manual_seed(0)
  model = TorchResNet(NUM_BANDS, NUM_CLASSES, **_ARCHS[model_name])
  model.train()
  num_params = sum(p.numel() for p in model.parameters())
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  c = _optim_config()
  opt = torch.optim.AdamW(
      [{"params": decay, "weight_decay": c.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=c.lr, betas=(c.b1, c.b2), eps=c.eps)
  image = torch.randn(batch, NUM_BANDS, image_size, image_size)
  label = torch.randint(0, NUM_CLASSES, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(image), label).backward()
    opt.step()

  return step, num_params


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def _images_per_s(step: Callable[[], Any], block: Callable[[], None],
                  steps: int, batch: int) -> float:
  block()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  block()
  return steps * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="resnet18_truncated",
                      choices=sorted(_ARCHS))
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--image_size", type=int, default=128,
                      help="128: the seed's 64x64 patches resized to 128x128")
  parser.add_argument("--steps", type=int, default=2,
                      help="train steps per timed round, per framework")
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved jax/torch rounds")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps per framework (after compilation)")
  parser.add_argument("--no_im2col", action="store_true",
                      help="layers.Conv im2col threshold 0 (no im2col)")
  parser.add_argument("--no_matmul_kernel_grad", action="store_true",
                      help="layers.Conv keeps XLA's kernel gradient")
  parser.add_argument("--no_max_pool_views_grad", action="store_true",
                      help="layers.MaxPool keeps XLA's gradient")
  parser.add_argument("--no_im2col_kernel_grad", action="store_true",
                      help="layers.Conv kernel gradients one matmul per tap "
                      "(no im2col chunks)")
  parser.add_argument("--baseline", default="none", choices=sorted(BASELINES),
                      help="also time the eo_jax model with these layer "
                      "formulations switched off, interleaved; 'plain' is "
                      "all of them (nn.Conv, nn.max_pool): the before/after "
                      "ratio")
  parser.add_argument("--skip_torch", action="store_true")
  args = parser.parse_args()

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  batch = args.batch_size
  print(f"jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{threads} CPUs, load {os.getloadavg()[0]:.2f}")
  overrides = {}
  if args.no_im2col:
    overrides.update(BASELINES["no_im2col"])
  if args.no_matmul_kernel_grad:
    overrides.update(BASELINES["no_matmul_kernel_grad"])
  if args.no_max_pool_views_grad:
    overrides.update(BASELINES["no_max_pool_views_grad"])
  if args.no_im2col_kernel_grad:
    overrides.update(BASELINES["no_im2col_kernel_grad"])
  print(f"model {args.model}, input {batch}x{args.image_size}x"
        f"{args.image_size}x{NUM_BANDS}, {NUM_CLASSES} classes, layer "
        f"overrides {overrides or 'none'}")

  variants = {"jax": overrides}
  if args.baseline != "none":
    variants["baseline"] = BASELINES[args.baseline]
    print(f"baseline: jax with {BASELINES[args.baseline]}")
  runs = {}
  for name, variant_overrides in variants.items():
    start = time.perf_counter()
    step, block, jax_params = make_jax_step(args.model, batch,
                                            args.image_size, variant_overrides)
    step()
    block()
    runs[name] = (step, block)
    print(f"{name}: {jax_params:,} params, build + compile + first step "
          f"{time.perf_counter() - start:.1f} s")
  torch_step, torch_params = make_torch_step(args.model, batch,
                                             args.image_size)
  print(f"torch: {torch_params:,} params")
  if jax_params != torch_params:
    raise SystemExit("The two networks differ; fix TorchResNet before "
                     "comparing their speed.")
  if not args.skip_torch:
    runs["torch"] = (torch_step, lambda: None)

  for step, block in runs.values():
    for _ in range(args.warmup):
      step()
    block()
  rates = {name: [] for name in runs}
  for r in range(args.rounds):
    for name, (step, block) in runs.items():
      rates[name].append(_images_per_s(step, block, args.steps, batch))
    print(f"  round {r + 1}: " + ", ".join(
        f"{name} {rates[name][-1]:.1f} img/s" for name in runs), flush=True)

  print(f"load after: {os.getloadavg()[0]:.2f}")
  med = {name: statistics.median(v) for name, v in rates.items()}
  best = {name: max(v) for name, v in rates.items()}
  print(f"{'':<10}{'median img/s':>14}{'best img/s':>12}")
  for name in runs:
    print(f"{name:<10}{med[name]:>14.1f}{best[name]:>12.1f}")
  if "torch" in runs:
    print(f"ratio jax/torch: median {med['jax'] / med['torch']:.2f}, "
          f"best {best['jax'] / best['torch']:.2f}")
  if "torch" in runs and "baseline" in runs:
    print(f"ratio baseline/torch: median "
          f"{med['baseline'] / med['torch']:.2f}, best "
          f"{best['baseline'] / best['torch']:.2f}")
  if "baseline" in runs:
    print(f"ratio jax/baseline (after/before): median "
          f"{med['jax'] / med['baseline']:.2f}, best "
          f"{best['jax'] / best['baseline']:.2f}")


if __name__ == "__main__":
  main()
