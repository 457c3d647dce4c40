r"""Which model of the embedded-sample configs degrades least under Earth-observation corruptions?

  python -m benchmarks.robustness [--workdir runs/benchmarks/robustness] \
      [--models quickstart,bagnet17,vit] [--severities 1,2,3,4,5] [--retrain]

Trains (or reuses, when its workdir already holds a finished run) three
models on the embedded eo-learn Sentinel-2 sample, each with its own
config's defaults:

  quickstart  configs/quickstart.py: the small low-resolution ResNet on
              9 x 9 x 13 patches
  bagnet17    configs/bagnet.py:model=bagnet17,data=eolearn: BagNet-17
              (17 px receptive field) on 11 x 11 patches resized to 33 px
  vit         configs/vit_eolearn.py:mode=finetune,init=: a ViT-Ti/8 from a
              random initialisation on the patches resized to 16 px

and scores each run's test split (its best-validation state) under every
corruption of eo_jax/data/corruptions.py at every severity
(`eo_jax.robustness.robustness`, the code behind `python -m
eo_jax.robustness`; each example gets the same corruption draw in every
run). The reference, measured in the same run, is the quickstart model:
the other two get CE / mCE against it (Hendrycks & Dietterich 2019, error =
1 - macro-F1). Prints one table: test macro-F1 per corruption (mean over
the severities) per model, the clean score, and the mCE; each run's
robustness/ folder holds its full table, heatmap.png and examples.png.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from eo_jax import config as config_lib
from eo_jax import robustness as robustness_lib
from eo_jax.train import trainer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "quickstart": ("quickstart", ""),
    "bagnet17": ("bagnet", "model=bagnet17,data=eolearn"),
    "vit": ("vit_eolearn", "mode=finetune,init="),
}
REFERENCE = "quickstart"


def train(name: str, workdir: str, retrain: bool) -> float:
  """Trains `name` into `workdir` unless a finished run is there; seconds."""
  if not retrain and os.path.exists(os.path.join(workdir, "results.json")):
    return 0.0
  file, arg = MODELS[name]
  config = config_lib.config_module(
      os.path.join(_ROOT, "configs", f"{file}.py")).get_config(arg)
  start = time.perf_counter()
  trainer.train_and_evaluate(config, workdir)
  return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/benchmarks/robustness")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--severities", default="1,2,3,4,5")
  parser.add_argument("--corruptions", default="")
  parser.add_argument("--retrain", action="store_true")
  args = parser.parse_args(argv)
  names = [m for m in args.models.split(",") if m]
  unknown = sorted(set(names) - set(MODELS))
  if unknown:
    raise SystemExit(f"Unknown model(s) {unknown}; choose from {sorted(MODELS)}.")
  load = os.getloadavg()
  print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start")
  results = {}
  for name in names:
    workdir = os.path.join(args.workdir, name)
    seconds = train(name, workdir, args.retrain)
    if seconds:
      print(f"{name}: trained in {seconds:.0f} s")
    start = time.perf_counter()
    results[name] = robustness_lib.robustness(
        workdir, split="test", corruptions=args.corruptions,
        severities=args.severities)
    print(f"{name}: scored in {time.perf_counter() - start:.0f} s -> "
          f"{results[name]['paths']}")

  metric = results[names[0]]["metric"]
  tables = {n: robustness_lib.score_matrix(r["rows"], metric)
            for n, r in results.items()}
  corruptions, _, _, _ = tables[names[0]]
  clean = {n: tables[n][3] for n in names}
  print(f"\ntest {metric}, mean over severities {args.severities}:\n")
  print("| corruption | " + " | ".join(names) + " |")
  print("|---|" + "---:|" * len(names))
  print("| clean | " + " | ".join(f"{clean[n]:.3f}" for n in names) + " |")
  summary = {}
  for c in corruptions:
    means = {n: float(np.mean(tables[n][2][tables[n][0].index(c)])) for n in names}
    summary[c] = means
    print(f"| {c} | " + " | ".join(f"{means[n]:.3f}" for n in names) + " |")
  overall = {n: float(np.mean([summary[c][n] for c in corruptions])) for n in names}
  print("| mean over corruptions | " + " | ".join(f"{overall[n]:.3f}" for n in names) + " |")
  print("| drop from clean | " + " | ".join(f"{clean[n] - overall[n]:.3f}" for n in names) + " |")
  mces = {}
  if REFERENCE in results:
    for n in names:
      errors = robustness_lib.mce(results[n]["rows"], results[REFERENCE]["rows"], metric)
      mces[n] = dict(mce=errors.mce, relative_mce=errors.relative_mce)
    for key in ("mce", "relative_mce"):
      print(f"| {key.replace('_', ' ')} vs {REFERENCE} | " + " | ".join(
          f"{mces[n][key]:.3f}" for n in names) + " |")
  out = dict(clean=clean, per_corruption=summary, mean=overall, mce=mces,
             metric=metric, load_at_start=load)
  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "summary.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


if __name__ == "__main__":
  main()
