r"""Small-batch DINOv2 and MAE: which settings keep a batch-64 run learning on a CPU?

  python -m benchmarks.ssl_study --data_path=S2 [--steps 100] \
      [--settings base,cold_teacher,softmax,...] [--seeds 0] \
      [--seed_settings base] [--seed_list 0,1,2] \
      [--workdir runs/benchmarks/ssl_study]

Every run is benchmarks/dino_s2.py's pretraining (configs/dino_s2.py:
ViT-Ti/8 on 64 px windows of the Sentinel-2 scene at `--data_path`, 32 / 16
px crops, 4 local crops, batch 64, LayerScale off, warmups scaled to the
run) for `--steps` steps, with ONE setting changed (`SETTINGS` below). Each
is judged at its last step by

* the collapse diagnostics of the scene's val windows (the 'collapse'
  evaluator, eo_jax/evaluate/collapse.py): effective rank of the teacher's
  class and patch tokens, prototypes in use, teacher uniformity (entropy /
  ln K: 1 = uniform);
* frozen-feature probes of the teacher's class token on the embedded
  labelled sample ('eolearn_sample', train -> test, 16 px): weighted kNN
  (k = 10) and a linear classifier, accuracy and macro-F1;
* the same probes of the randomly initialised network (each seed's), the
  floor a useful recipe must clear by more than the seed-to-seed spread.

Settings named 'mae_*' (`MAE_SETTINGS`) are MAE runs instead:
configs/mae_s2.py (ViT-Ti/8, 64 px windows of the same scene, light decoder,
lr 4e-3 x 64 / 256, 5% warmup, cosine) for `--steps` steps with one setting
changed ('mae_long': twice the steps), judged by the validation loss (norm-pix
MSE of the masked patches), the collapse diagnostics of the encoder's
embeddings and the same probes on the mean patch token (MAE's pooling).

`--settings` runs each named setting with the seeds of `--seeds`; the
settings of `--seed_settings` are also run with every seed of `--seed_list`
(the spread). Prints a markdown table and writes <workdir>/summary.json.
Reruns skip finished runs (the trainer resumes a finished workdir at once).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

import eo_jax
from benchmarks import dino_s2
from eo_jax import config as config_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.train import trainer
from eo_jax.train.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: name -> (what it changes, config overrides on top of the dino_s2 run).
SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("benchmarks/dino_s2.py's recipe: Sinkhorn-Knopp, teacher temp "
             "0.04 -> 0.07 over 30%, 4096 prototypes, KoLeo 0.1, lr 1e-3", {}),
    "cold_teacher": ("teacher temperature 0.04 throughout",
                     {"dino.teacher_temp": 0.04}),
    "softmax": ("softmax centring (DINO v1) instead of Sinkhorn-Knopp",
                {"dino.centering": "softmax"}),
    "prototypes_1024": ("1,024 prototypes", {"dino.num_prototypes": 1024}),
    "no_koleo": ("KoLeo off", {"dino.koleo_weight": 0.0}),
    "lr_3x": ("learning rate x 3 (3e-3)", {"optim.lr": 3e-3}),
    "slow_teacher": ("teacher momentum 0.996 -> 1", {"dino.momentum": 0.996}),
    "fast_teacher": ("teacher momentum 0.98 -> 1", {"dino.momentum": 0.98}),
    "no_ibot": ("iBOT off", {"dino.ibot_weight": 0.0}),
    "layerscale": ("LayerScale 1e-5 (DINOv2's)", {"model.layerscale_init": 1e-5}),
}


#: name -> (what it changes, config overrides on top of the mae_s2 run).
MAE_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "mae_base": ("configs/mae_s2.py: mask 75%, norm-pix loss, decoder 128 wide "
                 "x 2 blocks", {}),
    "mae_mask_50": ("mask ratio 0.5", {"mae.mask_ratio": 0.5}),
    "mae_no_normpix": ("plain pixel targets (no per-patch normalisation)",
                       {"mae.norm_pix_loss": False}),
    "mae_decoder_4": ("decoder 4 blocks", {"mae.decoder_depth": 4}),
    "mae_long": ("twice the steps", {}),
}


def mae_study_config(data_path: str, steps: int, setting: str, seed: int):
  if setting == "mae_long":
    steps *= 2
  config = config_lib.load_config(
      os.path.join(ROOT, "configs", f"mae_s2.py:path={data_path},base_lr=4e-3"),
      lock=False)
  steps_per_epoch = len(build_dataset(config.data, with_stats=False).split("train")
                        ) // config.input.batch_size
  config.train.epochs = 0
  config.train.steps = steps
  config.train.eval_every_steps = steps
  config.train.log_every_steps = 10
  config.train.progress_bar = False
  config.optim.warmup_epochs = 0.05 * steps / steps_per_epoch
  config.model.pool = "mean"
  for key, value in MAE_SETTINGS[setting][1].items():
    section, name = key.split(".")
    config[section][name] = value
  config.seed = seed
  config.lock()
  return config


def study_config(data_path: str, steps: int, setting: str, seed: int):
  if setting in MAE_SETTINGS:
    return mae_study_config(data_path, steps, setting, seed)
  args = argparse.Namespace(data_path=data_path, steps=steps, batch=64,
                            global_size=32, local_size=16, num_local=4,
                            layerscale=0.0)
  config = dino_s2.pretrain_config(args)
  config.unlock()
  for key, value in SETTINGS[setting][1].items():
    section, name = key.split(".")
    config[section][name] = value
  if setting == "lr_3x":
    config.optim.end_lr_factor = 1e-6 / config.optim.lr
  config.seed = seed
  config.lock()
  return config


def _final_train_losses(workdir: str) -> dict[str, float]:
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  history = checkpointer.restore_meta()["history"]["history"]
  checkpointer.close()
  return {key: history[f"train/{key}"][-1][1]
          for key in ("loss", "dino_loss", "ibot_loss", "koleo_loss", "pixel_mse")
          if history.get(f"train/{key}")}


def run_one(data_path: str, steps: int, setting: str, seed: int, root: str
            ) -> dict[str, Any]:
  config = study_config(data_path, steps, setting, seed)
  workdir = os.path.join(root, f"{setting}_seed{seed}")
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  seconds = time.perf_counter() - start
  probe_evals = dino_s2.load_config("dino_s2.py", f"path={data_path}").evals
  trained = eo_jax.restore_run(workdir, best=False)
  initial = eo_jax.build_run(config)
  if setting in MAE_SETTINGS:
    model, pool = trained.objective.encoder, "mean"
    params, random_params = (trained.state.params["encoder"],
                             initial.state.params["encoder"])
  else:
    model, pool = trained.objective.backbone, "cls"
    params = trained.state.extra["teacher"]["backbone"]
    random_params = initial.state.params["student"]["backbone"]
  row = {"setting": setting, "seed": seed, "workdir": workdir,
         "minutes": seconds / 60, "train": _final_train_losses(workdir),
         "val": {k: float(v) for k, v in results["val"].items()},
         "collapse": {k: float(v) for k, v in results["collapse"].items()},
         "probe": dino_s2.probe(trained, model, params, pool, probe_evals),
         "random_probe": dino_s2.probe(trained, model, random_params, pool,
                                       probe_evals)}
  print(f"{setting} seed {seed}: {json.dumps(row, default=float)}", flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_path", required=True)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--settings", default="base,cold_teacher,softmax,no_koleo,lr_3x")
  parser.add_argument("--seeds", default="0")
  parser.add_argument("--seed_settings", default="")
  parser.add_argument("--seed_list", default="0,1,2")
  parser.add_argument("--workdir", default="runs/benchmarks/ssl_study")
  args = parser.parse_args()
  root = os.path.abspath(args.workdir)
  os.makedirs(root, exist_ok=True)
  known = {**SETTINGS, **MAE_SETTINGS}
  unknown = [s for s in (args.settings + "," + args.seed_settings).split(",")
             if s and s not in known]
  if unknown:
    raise SystemExit(f"Unknown settings {unknown}; known: {sorted(known)}.")
  plan = [(s, int(k)) for s in args.settings.split(",") if s
          for k in args.seeds.split(",")]
  plan += [(s, int(k)) for s in args.seed_settings.split(",") if s
           for k in args.seed_list.split(",") if (s, int(k)) not in plan]
  rows = []
  for setting, seed in plan:
    rows.append(run_one(args.data_path, args.steps, setting, seed, root))
    with open(os.path.join(root, "summary.json"), "w") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=2, default=float)
  print(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
  """A markdown table: one line per run, then mean +- std per setting."""
  lines = ["| setting | seed | loss | cls rank | patch rank | prototypes | "
           "uniformity | kNN acc | kNN F1 | linear acc | linear F1 | random kNN F1 | "
           "random linear F1 | min |",
           "|---" * 14 + "|"]
  nan = float("nan")
  for r in rows:
    c, p, q = r["collapse"], r["probe"], r["random_probe"]
    # DINO: the final train DINO loss; MAE: the val loss (masked norm-pix MSE).
    loss = (r.get("val", {}).get("loss", nan) if r["setting"] in MAE_SETTINGS
            else r["train"].get("dino_loss", nan))
    lines.append(
        f"| {r['setting']} | {r['seed']} | {loss:.3f} | "
        f"{c['cls_rank']:.1f} | {c['patch_rank']:.1f} | {c.get('prototypes_used', nan):.0f} | "
        f"{c.get('teacher_uniformity', nan):.3f} | {p['knn10/accuracy']:.3f} | "
        f"{p['knn10/macro_f1']:.3f} | {p['linear/accuracy']:.3f} | "
        f"{p['linear/macro_f1']:.3f} | {q['knn10/macro_f1']:.3f} | "
        f"{q['linear/macro_f1']:.3f} | {r['minutes']:.1f} |")
  by_setting: dict[str, list] = {}
  for r in rows:
    by_setting.setdefault(r["setting"], []).append(r)
  for setting, group in by_setting.items():
    if len(group) < 2:
      continue
    for key in ("knn10/macro_f1", "linear/macro_f1"):
      got = np.array([r["probe"][key] for r in group])
      floor = np.array([r["random_probe"][key] for r in group])
      lines.append(f"\n{setting}, {len(group)} seeds, {key}: trained "
                   f"{got.mean():.3f} +- {got.std(ddof=1):.3f}, random "
                   f"{floor.mean():.3f} +- {floor.std(ddof=1):.3f}, difference "
                   f"{(got - floor).mean():+.3f} +- {(got - floor).std(ddof=1):.3f}")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
