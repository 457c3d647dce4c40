r"""ViT train-step throughput: eo_jax (JAX/Flax) vs the same network in PyTorch.

  python -m benchmarks.vit_throughput [--variant S/8] [--image_size 64] \
      [--bands 13] [--batch 32] [--steps 5] [--warmup 2] [--threads 0] \
      [--baseline erfc_gelu]

Both sides run one full training step per batch: forward, softmax
cross-entropy over 10 classes, backward, AdamW update. The PyTorch network
is written below to be the same network as `eo_jax.models.vit` (patchify
conv, cls token and learned position embeddings, pre-norm blocks with
separate q/k/v projections, fused scaled-dot-product attention, exact GELU,
LayerNorm eps 1e-6, a linear head on the cls token). Before timing, the JAX
initial weights are copied into the PyTorch model and the logits compared,
so the two really compute the same function. Both use all CPU threads
unless `--threads` is given. The steps alternate between the two
frameworks and the median step time is reported (and the best step's), so
that other load on the machine hits both alike. Prints images/s for each and the JAX/PyTorch
ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

import flax.linen as nn_flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from torch import nn

from eo_jax.data.bands import SENTINEL2, Band
from eo_jax.models import vit as vit_lib

NUM_CLASSES = 10


# ---------------------------------------------------------------- PyTorch
class TorchBlock(nn.Module):
  """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, width: int, heads: int, mlp_dim: int):
    super().__init__()
    self.heads = heads
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.query = nn.Linear(width, width)
    self.key = nn.Linear(width, width)
    self.value = nn.Linear(width, width)
    self.out = nn.Linear(width, width)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.fc1 = nn.Linear(width, mlp_dim)
    self.fc2 = nn.Linear(mlp_dim, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, d = x.shape
    y = self.norm1(x)

    def split(z):
      return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
    attn = F.scaled_dot_product_attention(split(self.query(y)),
                                          split(self.key(y)),
                                          split(self.value(y)))
    x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
    return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TorchViT(nn.Module):
  """The eo_jax ViT (cls pooling, learned position embedding) in PyTorch."""

  def __init__(self, bands: int, patch: int, grid: int, width: int, depth: int,
               heads: int, mlp_dim: int, num_classes: int):
    super().__init__()
    self.embedding = nn.Conv2d(bands, width, patch, stride=patch)
    self.cls = nn.Parameter(torch.zeros(1, 1, width))
    self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
    self.pos = nn.Parameter(torch.zeros(1, grid * grid, width))
    self.blocks = nn.ModuleList(TorchBlock(width, heads, mlp_dim)
                                for _ in range(depth))
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def forward(self, image: torch.Tensor) -> torch.Tensor:
    x = self.embedding(image).flatten(2).transpose(1, 2) + self.pos
    cls = (self.cls + self.cls_pos).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, 0])


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, np.float32))  # a writable copy


def copy_jax_weights(params, model: TorchViT) -> None:
  """Loads the Flax ViT's parameters into `model` (for the parity check)."""
  d = model.cls.shape[-1]
  with torch.no_grad():
    model.embedding.weight.copy_(_t(np.transpose(params["embedding"]["kernel"],
                                                 (3, 2, 0, 1))))
    model.embedding.bias.copy_(_t(params["embedding"]["bias"]))
    model.cls.copy_(_t(params["cls"]))
    model.cls_pos.copy_(_t(params["cls_pos_embedding"]))
    model.pos.copy_(_t(np.reshape(params["pos_embedding"], (1, -1, d))))
    for i, block in enumerate(model.blocks):
      p = params[f"block_{i}"]
      for name in ("query", "key", "value"):
        layer = getattr(block, name)
        layer.weight.copy_(_t(np.reshape(p["attn"][name]["kernel"], (d, d)).T))
        layer.bias.copy_(_t(np.reshape(p["attn"][name]["bias"], (d,))))
      block.out.weight.copy_(_t(np.reshape(p["attn"]["out"]["kernel"], (d, d)).T))
      block.out.bias.copy_(_t(p["attn"]["out"]["bias"]))
      for norm in ("norm1", "norm2"):
        getattr(block, norm).weight.copy_(_t(p[norm]["scale"]))
        getattr(block, norm).bias.copy_(_t(p[norm]["bias"]))
      for fc in ("fc1", "fc2"):
        getattr(block, fc).weight.copy_(_t(np.asarray(p["mlp"][fc]["kernel"]).T))
        getattr(block, fc).bias.copy_(_t(p["mlp"][fc]["bias"]))
    model.norm.weight.copy_(_t(params["encoder_norm"]["scale"]))
    model.norm.bias.copy_(_t(params["encoder_norm"]["bias"]))
    model.head.weight.copy_(_t(np.asarray(params["head"]["kernel"]).T))
    model.head.bias.copy_(_t(params["head"]["bias"]))


# ------------------------------------------------------------------ timing
def _time_interleaved(fns, steps: int, warmup: int) -> list[list[float]]:
  """Seconds of each step of several step functions, run in turn.

  Taking turns makes any load from other processes on the machine fall on
  all of them alike.
  """
  for _ in range(warmup):
    for fn in fns:
      fn()
  times = [[] for _ in fns]
  for _ in range(steps):
    for fn, out in zip(fns, times):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return times


@contextlib.contextmanager
def _erfc_gelu():
  """Inside: eo_jax's ViT uses flax's erfc form of the exact GELU (the
  formulation before `vit.gelu`), for the `--baseline erfc_gelu` A/B."""
  saved = vit_lib.gelu
  vit_lib.gelu = lambda x: nn_flax.gelu(x, approximate=False)
  try:
    yield
  finally:
    vit_lib.gelu = saved


def run(variant: str = "S/8", image_size: int = 64, bands: int = 13,
        batch: int = 32, steps: int = 5, warmup: int = 2, threads: int = 0,
        baseline: str = "") -> dict[str, float]:
  """Measures both frameworks; returns images/s and the ratio."""
  band_list = (SENTINEL2 if bands == 13 else
               tuple(Band(f"b{i}", 400.0 + i) for i in range(bands)))
  model = vit_lib.vit(bands=band_list, num_classes=NUM_CLASSES, variant=variant,
                      head_zeroinit=False)
  grid = image_size // model.patch_size
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, image_size, image_size, bands)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)

  # JAX: the jitted step donates its state, as the eo_jax trainer does.
  params = model.init(jax.random.key(0), jnp.asarray(images[:1]))["params"]
  tx = optax.adamw(1e-4, b1=0.9, b2=0.999, weight_decay=0.05)

  def loss_fn(p, x, y):
    logits, _ = model.apply({"params": p}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train_step(p, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, opt_state = tx.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss
  jax_step = jax.jit(train_step, donate_argnums=(0, 1))

  x_jax, y_jax = jnp.asarray(images), jnp.asarray(labels)
  num_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))

  # PyTorch, with the JAX weights: check that both compute the same logits.
  if threads:
    torch.set_num_threads(threads)
  net = TorchViT(bands, model.patch_size, grid, model.width, model.depth,
                 model.num_heads, model.mlp_dim, NUM_CLASSES)
  torch_params = sum(p.numel() for p in net.parameters())
  if torch_params != num_params:
    raise AssertionError(f"parameter counts differ: jax {num_params}, torch "
                         f"{torch_params}")
  copy_jax_weights(jax.device_get(params), net)
  x_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y_torch = torch.from_numpy(labels.astype(np.int64))
  with torch.no_grad():
    torch_logits = net(x_torch[:4]).numpy()
  jax_logits, _ = model.apply({"params": params}, x_jax[:4])
  max_diff = float(np.max(np.abs(torch_logits - np.asarray(jax_logits))))
  if max_diff > 1e-3:
    raise AssertionError(f"the two networks disagree: max |logit diff| {max_diff}")

  def jax_stepper(step_fn):
    state = {"p": jax.tree.map(jnp.copy, params), "o": tx.init(params)}

    def one_step():
      state["p"], state["o"], loss = step_fn(state["p"], state["o"], x_jax,
                                              y_jax)
      loss.block_until_ready()
    return one_step

  one_jax_step = jax_stepper(jax_step)
  fns = [one_jax_step]
  if baseline == "erfc_gelu":
    # Compiled ahead, inside the switch: its program keeps the erfc GELU.
    def baseline_step(p, opt_state, x, y):
      return train_step(p, opt_state, x, y)
    with _erfc_gelu():
      compiled = jax.jit(baseline_step, donate_argnums=(0, 1)).lower(
          params, tx.init(params), x_jax, y_jax).compile()
    fns.append(jax_stepper(compiled))
  elif baseline:
    raise ValueError(f"--baseline must be '' or 'erfc_gelu', got {baseline!r}.")

  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.999),
                          weight_decay=0.05)

  def one_torch_step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x_torch), y_torch)
    loss.backward()
    opt.step()

  load_before = os.getloadavg()[0]
  times = _time_interleaved(fns + [one_torch_step], steps, warmup)
  jax_times, torch_times = times[0], times[-1]
  jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
  jax_best, torch_best = min(jax_times), min(torch_times)
  extra = {}
  if baseline:
    base_s = float(np.median(times[1]))
    extra = {"baseline_img_s": batch / base_s,
             "baseline_ms_step": 1000 * base_s,
             "after_over_before": base_s / jax_s}
  return {**extra, "params": num_params, "logit_max_abs_diff": max_diff,
          "jax_img_s": batch / jax_s, "torch_img_s": batch / torch_s,
          "jax_ms_step": 1000 * jax_s, "torch_ms_step": 1000 * torch_s,
          "ratio_jax_over_torch": torch_s / jax_s,
          "jax_img_s_best": batch / jax_best, "torch_img_s_best": batch / torch_best,
          "ratio_best": torch_best / jax_best,
          "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
          "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="S/8")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--bands", type=int, default=13)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--threads", type=int, default=0,
                      help="PyTorch threads (0: its default, all cores)")
  parser.add_argument("--baseline", default="", choices=("", "erfc_gelu"),
                      help="also time eo_jax's ViT with this formulation "
                      "switched back (erfc_gelu: flax's erfc form of the "
                      "exact GELU), interleaved, for a before/after ratio")
  args = parser.parse_args()
  r = run(args.variant, args.image_size, args.bands, args.batch, args.steps,
          args.warmup, args.threads, args.baseline)
  tokens = (args.image_size // vit_lib.parse_variant(args.variant)[1])**2 + 1
  print(f"ViT-{args.variant}, {args.image_size}x{args.image_size}x{args.bands}, "
        f"{tokens} tokens, {r['params'] / 1e6:.2f} M params, batch "
        f"{args.batch}, median of {args.steps} alternating timed steps after "
        f"{args.warmup} warm-up; "
        f"{r['cpus']} CPUs, torch threads {r['torch_threads']}, jax "
        f"{jax.__version__} ({jax.default_backend()}), torch {torch.__version__}")
  print(f"same logits at init: max |diff| = {r['logit_max_abs_diff']:.2e}")
  print(f"JAX     : {r['jax_img_s']:8.2f} img/s median ({r['jax_ms_step']:.0f} "
        f"ms/step), best step {r['jax_img_s_best']:.2f} img/s")
  print(f"PyTorch : {r['torch_img_s']:8.2f} img/s median ({r['torch_ms_step']:.0f} "
        f"ms/step), best step {r['torch_img_s_best']:.2f} img/s")
  print(f"ratio JAX / PyTorch throughput: {r['ratio_jax_over_torch']:.2f}x median, "
        f"{r['ratio_best']:.2f}x best steps")
  if args.baseline:
    print(f"baseline ({args.baseline}): {r['baseline_img_s']:.2f} img/s median "
          f"({r['baseline_ms_step']:.0f} ms/step); after / before "
          f"{r['after_over_before']:.2f}x")
  print(f"1-min load average before/after timing: {r['load_before']:.1f} / "
        f"{r['load_after']:.1f} (other processes share the CPUs when > 0)")


if __name__ == "__main__":
  main()
