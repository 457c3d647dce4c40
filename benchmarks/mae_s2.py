r"""MAE pretraining on a real Sentinel-2 scene, then linear probes on eo-learn.

  python -m benchmarks.mae_s2 --data_path=/data/s2_scene [--epochs 8] \
      [--base_lr 4e-3] [--probe_epochs 8] [--workdir runs/benchmarks/mae_s2]

1. Pretrains configs/mae_s2.py (ViT-Ti/8, 64 x 64 x 13 patches of the
   Sentinel-2 sample scene at `--data_path`, light decoder; see
   eo_jax/data/datasets/s2_scene.py for where to get it) for `--epochs`
   (sized to take ~10-15 min on a 2-core CPU). Reports the validation loss
   (normalised-pixel MSE on the masked patches, fixed eval masks) of the
   initial parameters and of the final ones, and where the loss curves
   (curves.png) and reconstructions (reconstruction.png) are.
2. Linear-probes the frozen encoder on the eo-learn sample with
   configs/vit_eolearn.py:mode=probe (the quickstart's split; BatchNorm +
   linear head; best validation macro-F1 state scored on test), once from the
   MAE encoder and once from a random initialisation of the same network.

`--base_lr` is MAE's lr per 256 images; the paper's 1.5e-4 is for 800+
epochs, a run this short needs more. Prints a summary with ratios and writes
it to <workdir>/summary.json. Reruns resume (or skip) finished parts.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import eo_jax
from eo_jax import config as config_lib
from eo_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str, **overrides):
  """configs/<name> with `arg` variants and dotted-key overrides, locked."""
  return config_lib.load_config(os.path.join(ROOT, "configs", f"{name}:{arg}"),
                                overrides)


def initial_val_loss(config) -> dict[str, float]:
  """Validation metrics of the parameters the trainer starts from."""
  return eo_jax.build_run(config).evaluate("val")


def _saved_step(directory: str) -> int:
  """Newest checkpoint step in `directory` (0 when there is none)."""
  if not os.path.isdir(directory):
    return 0
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
  return max(steps, default=0)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_path", required=True,
                      help="the Sentinel-2 scene folder (config.data.path)")
  parser.add_argument("--epochs", type=float, default=8.0)
  parser.add_argument("--base_lr", type=float, default=4e-3)
  parser.add_argument("--probe_epochs", type=float, default=8.0)
  parser.add_argument("--workdir", default="runs/benchmarks/mae_s2")
  args = parser.parse_args()
  root = os.path.abspath(args.workdir)
  summary: dict = {"args": vars(args)}

  # ------------------------------------------------------------ pretrain
  pre_dir = os.path.join(root, "pretrain")
  config = load_config("mae_s2.py", f"path={args.data_path},epochs={args.epochs},"
                       f"base_lr={args.base_lr}", **{"train.progress_bar": False})
  before = initial_val_loss(config)
  start_step = _saved_step(os.path.join(pre_dir, "checkpoints"))
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, pre_dir)
  pre_seconds = time.perf_counter() - start
  steps = results["step"]
  summary["pretrain"] = {
      "workdir": pre_dir, "steps": steps, "batch": config.input.batch_size,
      "lr": config.optim.lr, "seconds": pre_seconds, "resumed_from": start_step,
      "images_per_second": ((steps - start_step) * config.input.batch_size /
                            pre_seconds),
      "val_before": before, "val_after": results["val"],
      "curves_png": os.path.join(pre_dir, "curves.png"),
      "reconstruction_png": os.path.join(pre_dir, "reconstruction.png")}

  # --------------------------------------------------------------- probes
  summary["probe"] = {}
  for name, init in (("mae", pre_dir), ("random", "")):
    probe_dir = os.path.join(root, f"probe_{name}")
    probe_config = load_config(
        "vit_eolearn.py", f"mode=probe,init={init},epochs={args.probe_epochs}",
        **{"train.progress_bar": False})
    start = time.perf_counter()
    r = trainer.train_and_evaluate(probe_config, probe_dir)
    summary["probe"][name] = {
        "workdir": probe_dir, "seconds": time.perf_counter() - start,
        "best_val_macro_f1": r.get("early_stopping", {}).get("best"),
        "evaluated_step": r.get("evaluated_step"),
        "test": {k: r["test"][k] for k in ("accuracy", "macro_f1", "loss")}}

  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _print(summary)


def _print(s: dict) -> None:
  p = s["pretrain"]
  b, a = p["val_before"], p["val_after"]
  timing = (f"{p['seconds'] / 60:.1f} min ({p['images_per_second']:.1f} img/s"
            " incl. compilation and evaluations)")
  if p["resumed_from"]:
    timing = (f"resumed at step {p['resumed_from']}: {p['seconds'] / 60:.1f} "
              "min for the rest (delete the workdir to time a whole run)")
  print(f"\nMAE pretraining (configs/mae_s2.py, ViT-Ti/8, 64x64x13, light "
        f"decoder): {p['steps']} steps x {p['batch']} images, lr {p['lr']:.2e}, "
        f"{timing}")
  print(f"  val loss (norm-pix MSE, masked patches): {b['loss']:.4f} -> "
        f"{a['loss']:.4f}  (x{a['loss'] / b['loss']:.3f})")
  print(f"  val pixel MSE (band-normalised units):   {b['pixel_mse']:.4f} -> "
        f"{a['pixel_mse']:.4f}  (x{a['pixel_mse'] / b['pixel_mse']:.3f})")
  print(f"  curves: {p['curves_png']}\n  reconstructions: {p['reconstruction_png']}")
  print("\nLinear probe on eolearn_sample (frozen encoder, BatchNorm + linear "
        "head, best val macro-F1 state on test):")
  for name, r in s["probe"].items():
    t = r["test"]
    print(f"  {name:>6} init: test accuracy {t['accuracy']:.4f}, macro-F1 "
          f"{t['macro_f1']:.4f} (best val macro-F1 {r['best_val_macro_f1']:.4f} "
          f"at step {r['evaluated_step']}; {r['seconds'] / 60:.1f} min)")
  m, rnd = s["probe"]["mae"]["test"], s["probe"]["random"]["test"]
  print(f"  MAE / random: accuracy x{m['accuracy'] / rnd['accuracy']:.3f}, "
        f"macro-F1 x{m['macro_f1'] / max(rnd['macro_f1'], 1e-12):.3f}")


if __name__ == "__main__":
  main()
