r"""Spatial-spectral ViT: its cost next to the plain ViT, and one encoder for two sensors.

  python -m benchmarks.spectral_vit --s2_path=S2 --l8_path=L8 \
      [--workdir runs/benchmarks/spectral_vit] [--steps 400] [--l8_steps 150] \
      [--batch 64] [--base_lr 2e-3] [--skip_throughput | --throughput_only]

S2: a Sentinel-2 L1C scene folder ('s2_scene'), L8: a Landsat-8 L1 scene
folder ('l8_scene'); eo_jax/data/datasets/s2_scene.py says where to get the
two small CC0 scenes these figures come from.

1. Throughput: one supervised training step (forward, softmax
   cross-entropy, backward, AdamW) of a ViT-Ti/8 and of a spatial-spectral
   ViT of the same sizes (factorized, groups of 8 bands by wavelength,
   wavelength-generated patch embeddings) on 32 x 32 px images of 13 and of
   128 bands, batch 32. The two models take turns step by step (other load
   on the machine hits both alike); the median step gives img/s, and the
   ratio spectral / plain is printed for each band count.
2. One encoder, two band sets: MAE pretraining of the spatial-spectral ViT
   (configs/mae_spectral.py: Ti/8 sizes, groups of 4 bands, 75% of the
   spatial patches masked) on 32 px windows of all 13 bands of the S2 scene
   for `--steps` steps. Its frozen encoder (mean patch token), with no
   retraining, is then probed on the embedded labelled sample
   ('eolearn_sample', 9 px patches resized to 16 px, train -> test; weighted
   kNN k = 10, 20 and a linear classifier) (a) with all 13 bands and (b)
   with only the six bands Landsat-8 OLI also measures (B02, B03, B04, B8A,
   B11, B12, given with their wavelengths; the same parameters build their
   patch embeddings), next to the randomly initialised encoder on the same
   inputs.
3. Landsat-8: MAE pretraining on the OLI bands B1-B7 of the L8 scene (32 px
   windows every 16 px, the bottom 10% of rows for validation) for
   `--l8_steps` steps, from the S2 encoder of part 2 (config.init_from,
   encoder only) and from scratch; validation loss (normalised-pixel MSE of
   the masked patches, fixed evaluation masks) at the end.

Prints the tables and writes <workdir>/summary.json. Reruns skip finished
pretraining runs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import eo_jax
from eo_jax import config as config_lib
from eo_jax import sharding
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.evaluate.probes import knn_probe_metrics, linear_probe_metrics
from eo_jax.evaluate.runner import EvalRunner
from eo_jax.models import build_model
from eo_jax.objectives import losses
from eo_jax.train import trainer
from benchmarks.dino_s2 import embed_fn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Sentinel-2 bands whose Landsat-8 OLI counterparts cover the same range.
S2_LIKE_OLI = ("B02", "B03", "B04", "B8A", "B11", "B12")
L8_OLI = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
NUM_CLASSES = 10


# ---------------------------------------------------------------- throughput
def train_step_fn(model_config: dict, bands, batch: int, size: int):
  """A jitted supervised step on a fixed batch; returns (step, block)."""
  model = build_model(ml_collections.ConfigDict(model_config), bands=bands,
                      num_classes=NUM_CLASSES)
  image = jax.random.normal(jax.random.key(0), (batch, size, size, len(bands)))
  label = jax.random.randint(jax.random.key(1), (batch,), 0, NUM_CLASSES)
  params = jax.jit(lambda x: model.init(jax.random.key(2), x))(image)["params"]
  tx = optax.adamw(1e-4)

  def loss_fn(params, image, label):
    logits, _ = model.apply({"params": params}, image, True,
                            rngs={"dropout": jax.random.key(3)})
    return losses.cross_entropy(logits, label).mean()

  @jax.jit
  def step(state, image, label):
    params, opt_state = state
    grads = jax.grad(loss_fn)(params, image, label)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  holder = [(params, tx.init(params))]

  def run():
    holder[0] = step(holder[0], image, label)
    jax.block_until_ready(holder[0])
  return run


def throughput(batch: int = 32, size: int = 32, steps: int = 8) -> dict[str, Any]:
  out = {}
  for num_bands in (13, 128):
    bands = (bands_lib.SENTINEL2 if num_bands == 13 else
             bands_lib.bands_from_wavelengths(np.linspace(400.0, 2500.0, num_bands)))
    fns = {
        "vit": train_step_fn(dict(name="vit", variant="Ti/8"), bands, batch, size),
        "spectral_vit": train_step_fn(dict(
            name="spectral_vit", variant="Ti/8", group_size=8), bands, batch, size),
    }
    for fn in fns.values():  # compile and warm up
      fn()
      fn()
    times = {name: [] for name in fns}
    for _ in range(steps):
      for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
    rates = {name: batch / float(np.median(t)) for name, t in times.items()}
    out[f"{num_bands} bands"] = {
        **{f"{name} img/s": r for name, r in rates.items()},
        "ratio spectral/plain": rates["spectral_vit"] / rates["vit"],
        "groups": -(-num_bands // 8)}
    print(f"throughput {num_bands} bands: {out[f'{num_bands} bands']}", flush=True)
  return out


# --------------------------------------------------------------- pretraining
def mae_config(data: dict, steps: int, batch: int, base_lr: float,
               init: str = "") -> ml_collections.ConfigDict:
  c = config_lib.load_config(os.path.join(
      ROOT, "configs", f"mae_spectral.py:group_size=4,base_lr={base_lr}"), lock=False)
  c.data = ml_collections.ConfigDict(data)
  c.input.batch_size = batch
  c.optim.lr = base_lr * batch / 256
  c.train.epochs = 0
  c.train.steps = steps
  c.train.eval_every_steps = steps
  c.train.log_every_steps = 25
  c.train.progress_bar = False
  # A 5% warmup of this run (the config's is 5% of its epochs).
  steps_per_epoch = len(build_dataset(c.data, with_stats=False).split("train")) // batch
  c.optim.warmup_epochs = 0.05 * steps / max(steps_per_epoch, 1)
  if "test" in c.evals:
    del c.evals["test"]
  if init:
    c.init_from.workdir = init
    c.init_from.source_prefix = c.init_from.target_prefix = "encoder"
  c.lock()
  return c


def pretrain(config, workdir: str) -> dict[str, Any]:
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  return {"workdir": workdir, "seconds": time.perf_counter() - start,
          "val": results["val"], "collapse": results.get("collapse", {})}


# -------------------------------------------------------------------- probes
def probe(encoder, params, probe_bands: tuple[str, ...] | None,
          runner: EvalRunner) -> dict[str, float]:
  """kNN and linear probes of `encoder` (rebuilt for the probe's bands)."""
  data = {"name": "eolearn_sample"}
  if probe_bands:
    data["bands"] = list(probe_bands)
  dataset = build_dataset(ml_collections.ConfigDict(data))
  model = encoder.clone(bands=tuple(dataset.info.bands))
  fn = embed_fn(model, "mean")
  train, test = (runner.features(fn, params, dataset, split, step=id(params),
                                 batch_size=256, image_size=16)
                 for split in ("train", "test"))
  k = dataset.info.num_classes
  return {**knn_probe_metrics(train, test, num_classes=k, k=(10, 20)),
          **linear_probe_metrics(train, test, num_classes=k, epochs=100)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--s2_path", required=True)
  parser.add_argument("--l8_path", required=True)
  parser.add_argument("--workdir", default="runs/benchmarks/spectral_vit")
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--l8_steps", type=int, default=150)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--base_lr", type=float, default=2e-3)
  parser.add_argument("--skip_throughput", action="store_true")
  parser.add_argument("--throughput_only", action="store_true",
                      help="part 1 only, added to an existing summary.json")
  args = parser.parse_args()
  root = os.path.abspath(args.workdir)
  os.makedirs(root, exist_ok=True)
  summary_path = os.path.join(root, "summary.json")
  summary: dict[str, Any] = {"args": vars(args)}
  if not args.skip_throughput:
    summary["throughput"] = throughput()
  if args.throughput_only:
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        summary = {**json.load(f), "throughput": summary["throughput"]}
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=2, default=float)
    _print(summary)
    return

  s2_dir = os.path.join(root, "mae_s2")
  s2 = mae_config(dict(name="s2_scene", path=args.s2_path, patch_size=32,
                       stride=32, val_fraction=0.1),
                  args.steps, args.batch, args.base_lr)
  summary["mae_s2"] = pretrain(s2, s2_dir)

  trained = eo_jax.restore_run(s2_dir, best=False)
  initial = eo_jax.build_run(s2)
  encoder = trained.objective.encoder
  runner = EvalRunner(sharding.make_mesh(), s2.input)
  summary["probe"] = {}
  for source, run in (("S2 MAE", trained), ("random init", initial)):
    for label, probe_bands in (("13 S2 bands", None),
                               ("6 OLI-like bands", S2_LIKE_OLI)):
      r = probe(encoder, run.state.params["encoder"], probe_bands, runner)
      summary["probe"][f"{source} / {label}"] = r
      print(f"probe {source} / {label}: {r}", flush=True)

  l8_data = dict(name="l8_scene", path=args.l8_path, bands=list(L8_OLI),
                 patch_size=32, stride=16, val_fraction=0.1)
  summary["mae_l8"] = {}
  for name, init in (("from S2 encoder", s2_dir), ("from scratch", "")):
    workdir = os.path.join(root, "mae_l8_" + ("s2init" if init else "scratch"))
    summary["mae_l8"][name] = pretrain(
        mae_config(l8_data, args.l8_steps, args.batch, args.base_lr, init), workdir)

  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2, default=float)
  _print(summary)


def _print(s: dict) -> None:
  for bands, r in s.get("throughput", {}).items():
    print(f"train step, 32 px, batch 32, {bands}: ViT-Ti/8 {r['vit img/s']:.1f} img/s, "
          f"spectral_vit ({r['groups']} groups) {r['spectral_vit img/s']:.1f} img/s, "
          f"ratio {r['ratio spectral/plain']:.3f}")
  if "mae_s2" not in s:
    return
  m = s["mae_s2"]
  print(f"\nMAE on the S2 scene: {s['args']['steps']} steps, val loss "
        f"{m['val']['loss']:.4f}, {m['seconds'] / 60:.1f} min")
  print("Frozen encoder probes on eolearn_sample (train -> test, 16 px):")
  print(f"  {'encoder / bands':<34} {'knn10 acc':>9} {'knn10 F1':>9} "
        f"{'linear acc':>10} {'linear F1':>9}")
  for name, r in s["probe"].items():
    print(f"  {name:<34} {r['knn10/accuracy']:9.4f} {r['knn10/macro_f1']:9.4f} "
          f"{r['linear/accuracy']:10.4f} {r['linear/macro_f1']:9.4f}")
  print(f"\nMAE on the Landsat-8 scene (OLI B1-B7), {s['args']['l8_steps']} steps:")
  for name, r in s["mae_l8"].items():
    print(f"  {name:<16} val loss {r['val']['loss']:.4f} "
          f"({r['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
  main()
