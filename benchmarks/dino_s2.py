r"""DINOv2 pretraining on a real Sentinel-2 scene, then frozen-feature probes.

  python -m benchmarks.dino_s2 --data_path=/data/s2_scene [--steps 150] \
      [--batch 64] [--global_size 32] [--local_size 16] [--num_local 4] \
      [--layerscale 0] [--workdir runs/benchmarks/dino_s2] \
      [--mae_workdir runs/benchmarks/mae_s2/pretrain]

1. Pretrains configs/dino_s2.py (ViT-Ti/8 on 64 x 64 x 13 windows of the
   Sentinel-2 sample scene at `--data_path`; see
   eo_jax/data/datasets/s2_scene.py for where to get it) for `--steps` updates,
   sized to take ~10 min on a 2-core CPU. The crops are 32 / 16 px (4 x 4 and
   2 x 2 patch grids) instead of the config's 64 / 32, a quarter of the
   compute per image, so that a CPU run sees a few epochs. Warmups and the
   frozen-prototype period are scaled to the short run (lr warmup 10%,
   teacher temperature 30%, last layer frozen 5% of the steps: DINOv2's 10,
   30 and 1 of 100 epochs, the last rounded up), and LayerScale is off by
   default (`--layerscale 1e-5` restores the config's; with it, 150 steps
   end with a uniform student, see benchmarks/README.md). Reports the loss
   curves (curves.png), the teacher's class-token attention (attention.png),
   its patch PCA (patch_pca.png) and the step throughput (steps/s and
   images/s over the steps after the first, which compiles).
2. Probes frozen features on the eo-learn sample with the SAME code for
   every encoder (the probe evaluators' `knn_probe_metrics` and
   `linear_probe_metrics`: weighted kNN, k = 10 and 20, and a linear
   classifier, trained on its train split and scored on its test split;
   patches resized to 16 px, a 2 x 2 grid):
   * the DINO teacher (what `embed` gives) and student;
   * the same network at its random initialisation (the run's step 0);
   * the MAE encoder of benchmarks/mae_s2.py, if its workdir exists.
   Each is probed on the class token ('cls') and on the mean of the patch
   tokens ('mean', MAE's choice; an MAE cls token is barely trained).
Prints a table and writes <workdir>/summary.json. A rerun skips a finished
pretraining (the trainer resumes from its checkpoint).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

import eo_jax
from eo_jax import config as config_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.evaluate.probes import knn_probe_metrics, linear_probe_metrics
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str) -> ml_collections.ConfigDict:
  """configs/<name> with its `arg` variants (unlocked, for overrides)."""
  return config_lib.load_config(os.path.join(ROOT, "configs", f"{name}:{arg}"),
                                lock=False)


def pretrain_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """configs/dino_s2.py sized for `args.steps` updates on a CPU."""
  c = load_config("dino_s2.py", (
      f"path={args.data_path},global_size={args.global_size},"
      f"local_size={args.local_size},num_local={args.num_local},"
      f"batch_size={args.batch}"))
  steps_per_epoch = len(build_dataset(c.data, with_stats=False).split("train")
                        ) // c.input.batch_size
  epochs = args.steps / steps_per_epoch
  c.train.epochs = 0
  c.train.steps = args.steps
  c.train.eval_every_steps = args.steps   # evaluate (and draw) at the end
  c.train.log_every_steps = 5
  c.train.progress_bar = False
  c.optim.warmup_epochs = 0.1 * epochs
  c.dino.warmup_teacher_temp_epochs = 0.3 * epochs
  c.dino.freeze_last_layer_epochs = math.ceil(0.05 * args.steps) / steps_per_epoch
  # Probed below, with every encoder the same way.
  del c.evals["knn"], c.evals["linear"]
  # LayerScale 1e-5 (DINOv2's) keeps every block's contribution, hence the
  # image's, at 1e-5 of the class token for the first hundreds of steps; in
  # a 150-step run the student then settles on uniform outputs (DINO loss =
  # log K). See benchmarks/README.md for both runs.
  c.model.layerscale_init = args.layerscale or None
  c.lock()
  return c


class StepTimer:
  """Trainer hook: wall-clock time at the end of every step."""

  def __init__(self):
    self.times: list[tuple[int, float]] = []

  def __call__(self, step: int, state: Any) -> None:
    # Steps are dispatched asynchronously; wait for this one to finish.
    jax.block_until_ready(state.step)
    self.times.append((step, time.perf_counter()))

  def steps_per_second(self) -> float | None:
    if len(self.times) < 3:
      return None
    # From the end of the first step (compilation) to the last; the final
    # step's evaluation happens after its hook, so it is not included.
    (s0, t0), (s1, t1) = self.times[0], self.times[-1]
    return (s1 - s0) / (t1 - t0)


def embed_fn(model, pool: str) -> Callable:
  """(params, batch) -> {'features': (B, D)}: the 'cls' token or the 'mean'
  of the patch tokens of a token backbone."""
  def embed(params, batch):
    _, features = model.apply({"params": params}, batch["image"], False)
    if pool == "cls":
      pooled = features["prefix_tokens"][:, 0]
    else:
      tokens = features["patch_tokens"]
      pooled = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1]).mean(1)
    return {"features": pooled.astype(jnp.float32)}
  return embed


def probe(run: Any, model, params, pool: str, probe_evals) -> dict[str, float]:
  """kNN and linear probes of `model` with `params` on the probe data's
  train -> test splits, through `run`'s evaluation runner."""
  knn = probe_evals.knn
  dataset = build_dataset(knn.data)
  fn = embed_fn(model, pool)
  runner = run._context.runner  # pylint: disable=protected-access
  train, test = (runner.features(fn, params, dataset, split, step=id(params),
                                 batch_size=knn.batch_size,
                                 image_size=knn.image_size)
                 for split in ("train", "test"))
  k = dataset.info.num_classes
  return {**knn_probe_metrics(train, test, num_classes=k, k=knn.k,
                              temperature=knn.temperature),
          **linear_probe_metrics(train, test, num_classes=k,
                                 epochs=probe_evals.linear.epochs)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_path", required=True,
                      help="the Sentinel-2 scene folder (config.data.path)")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--global_size", type=int, default=32)
  parser.add_argument("--local_size", type=int, default=16)
  parser.add_argument("--num_local", type=int, default=4)
  parser.add_argument("--layerscale", type=float, default=0.0,
                      help="LayerScale init; 0 -> none (the config has 1e-5)")
  parser.add_argument("--workdir", default="runs/benchmarks/dino_s2")
  parser.add_argument("--mae_workdir", default="runs/benchmarks/mae_s2/pretrain")
  args = parser.parse_args()
  root = os.path.abspath(args.workdir)
  pre_dir = os.path.join(root, "pretrain")
  summary: dict = {"args": vars(args)}

  # ------------------------------------------------------------ pretrain
  config = pretrain_config(args)
  timer = StepTimer()
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, pre_dir, hooks=[timer])
  seconds = time.perf_counter() - start
  steps_per_second = timer.steps_per_second()
  history = _train_history(pre_dir)
  summary["pretrain"] = {
      "workdir": pre_dir, "steps": results["step"],
      "batch": config.input.batch_size, "lr": config.optim.lr,
      "crops": f"2 x {args.global_size} px + {args.num_local} x {args.local_size} px",
      "layerscale_init": config.model.layerscale_init,
      "seconds": seconds, "steps_per_second": steps_per_second,
      "images_per_second": (steps_per_second * config.input.batch_size
                            if steps_per_second else None),
      "train_loss_first_last": history, "val": results["val"],
      "curves_png": os.path.join(pre_dir, "curves.png"),
      "attention_png": os.path.join(pre_dir, "attention.png"),
      "patch_pca_png": os.path.join(pre_dir, "patch_pca.png")}

  # --------------------------------------------------------------- probes
  final = eo_jax.restore_run(pre_dir, best=False)
  initial = eo_jax.build_run(config)
  probe_evals = load_config("dino_s2.py", f"path={args.data_path}").evals
  backbone = final.objective.backbone
  encoders = {
      "dino_teacher": (backbone, final.state.extra["teacher"]["backbone"]),
      "dino_student": (backbone, final.state.params["student"]["backbone"]),
      "random_init": (backbone, initial.state.params["student"]["backbone"]),
  }
  mae_dir = os.path.abspath(args.mae_workdir)
  if os.path.isdir(os.path.join(mae_dir, "checkpoints")):
    mae = eo_jax.restore_run(mae_dir, best=False)
    encoders["mae"] = (mae.objective.encoder, mae.state.params["encoder"])
  summary["probe"] = {}
  for name, (model, params) in encoders.items():
    for pool in ("cls", "mean"):
      start = time.perf_counter()
      r = probe(final, model, params, pool, probe_evals)
      r["seconds"] = time.perf_counter() - start
      summary["probe"][f"{name}/{pool}"] = r
      print(f"probe {name}/{pool}: {r}", flush=True)

  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _print(summary)


def _train_history(workdir: str) -> dict[str, tuple[float, float]]:
  """First and last logged train losses (the history the run checkpoints)."""
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  history = checkpointer.restore_meta()["history"]["history"]
  checkpointer.close()
  out = {}
  for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
    series = history.get(f"train/{key}")
    if series:
      out[key] = (series[0][1], series[-1][1])
  return out


def _print(s: dict) -> None:
  p = s["pretrain"]
  print(f"\nDINO pretraining (configs/dino_s2.py, ViT-Ti/8, {p['crops']}): "
        f"{p['steps']} steps x {p['batch']} images, lr {p['lr']:.2e}, "
        f"{p['seconds'] / 60:.1f} min")
  if p["steps_per_second"]:
    print(f"  throughput: {p['steps_per_second']:.3f} steps/s, "
          f"{p['images_per_second']:.1f} images/s (after the first step)")
  else:
    print("  throughput: not measured (the pretraining had already finished and "
          "was only re-evaluated; delete its workdir to time it)")
  for key, (first, last) in p["train_loss_first_last"].items():
    print(f"  train {key}: {first:.4f} -> {last:.4f}")
  print(f"  val: " + ", ".join(f"{k} {v:.4g}" for k, v in p["val"].items()))
  print(f"  curves: {p['curves_png']}\n  attention: {p['attention_png']}\n"
        f"  patch PCA: {p['patch_pca_png']}")
  print("\nFrozen-feature probes on eolearn_sample (train -> test, 16 px):")
  print(f"  {'encoder/pool':<20} {'knn10 acc':>9} {'knn10 F1':>9} "
        f"{'knn20 acc':>9} {'linear acc':>10} {'linear F1':>9}")
  for name, r in s["probe"].items():
    print(f"  {name:<20} {r['knn10/accuracy']:9.4f} {r['knn10/macro_f1']:9.4f} "
          f"{r['knn20/accuracy']:9.4f} {r['linear/accuracy']:10.4f} "
          f"{r['linear/macro_f1']:9.4f}")


if __name__ == "__main__":
  main()
