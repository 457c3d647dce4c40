r"""Land-cover segmentation of the embedded Sentinel-2 sample: which encoder beats the raw bands?

  python -m benchmarks.seg_eolearn --data_path=S2 [--epochs 40] \
      [--workdir runs/benchmarks/seg_eolearn] \
      [--mae_workdir runs/benchmarks/mae_s2/pretrain] \
      [--dino_workdir runs/benchmarks/dino_s2/pretrain]

One table of test mIoU / overall accuracy / mean class accuracy on the
sample's dense task (configs/seg_eolearn.py: 16 px windows of 5 dates,
spatially disjoint train / val / test blocks; each row's state is its best
validation mIoU), for:

* raw bands: a per-pixel softmax regression on the 13 standardised band
  values of every labelled training pixel (class-weighted like the
  networks) -- the floor every learned model must beat;
* ResNet-18 + DeepLabV3+ trained from scratch (supervised);
* a ViT-Ti/8 with each decoder (linear, ms_linear, conv, segmenter,
  deeplabv3plus) on FROZEN features of (a) its random initialisation, (b)
  the MAE encoder of benchmarks/mae_s2.py and (c) the DINO student encoder
  (what `init=` takes from a DINO run) of benchmarks/dino_s2.py, both
  pretrained on the Sentinel-2 scene at `--data_path` (see
  eo_jax/data/datasets/s2_scene.py for where to get it). Missing pretraining
  runs are trained first with those benchmarks' default settings.

Writes <workdir>/summary.json and prints the table; every run's
segmentation_test.png (image | truth | prediction | errors) stays in its
workdir. Reruns skip finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from eo_jax import config as config_lib
from eo_jax.data import transforms
from eo_jax.data.datasets import build_dataset
from eo_jax.data import stats
from eo_jax.evaluate.linear_probe import fit_linear_probe
from eo_jax.evaluate.segmentation import SegmentationMetrics
from eo_jax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DECODERS = ("linear", "ms_linear", "conv", "segmenter", "deeplabv3plus")


def seg_config(arg: str, **overrides):
  return config_lib.load_config(
      os.path.join(ROOT, "configs", f"seg_eolearn.py:{arg}"),
      {"train.progress_bar": False, **overrides})


def _pixels(dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(labelled pixels' standardised band values, their labels) of a split."""
  mean, std = transforms.band_mean_std(dataset.info.bands)
  source = dataset.split(split)
  xs, ys = [], []
  for i in range(len(source)):
    example = source[i]
    keep = example["mask"] != dataset.info.ignore_index
    xs.append(((example["image"] - mean) / std)[keep])
    ys.append(example["mask"][keep])
  return np.concatenate(xs), np.concatenate(ys)


def raw_band_baseline(epochs: int = 300) -> dict[str, float]:
  """Test scores of a per-pixel softmax regression on the raw bands."""
  config = seg_config("")
  dataset = build_dataset(config.data)
  x_train, y_train = _pixels(dataset, "train")
  k = dataset.info.num_classes
  weights = stats.class_weights_from_counts(np.bincount(y_train, minlength=k),
                                            mode="median")
  # Class weights by repetition: the probe fits an unweighted loss, so each
  # pixel is repeated in proportion to its class's weight (at most 100x).
  reps = np.clip(np.round(weights / weights[weights > 0].min()), 1, 100).astype(int)
  index = np.repeat(np.arange(len(y_train)), reps[y_train])
  predict = fit_linear_probe(x_train[index], y_train[index], k, epochs=epochs)
  metrics = SegmentationMetrics(k, dataset.info.class_names)
  source = dataset.split("test")
  mean, std = transforms.band_mean_std(dataset.info.bands)
  for i in range(len(source)):
    example = source[i]
    image = (example["image"] - mean) / std
    pred = predict(image.reshape(-1, image.shape[-1])).argmax(-1).reshape(image.shape[:2])
    metrics.update({"pred": pred[None], "mask": example["mask"][None]})
  return _scores(metrics.result())


def _scores(result: dict) -> dict[str, float]:
  return {k: float(result[k]) for k in ("miou", "overall_acc", "mean_acc")}


def train(name: str, config, root: str) -> dict:
  workdir = os.path.join(root, name)
  start = time.perf_counter()
  results = trainer.train_and_evaluate(config, workdir)
  return {"workdir": workdir, "seconds": time.perf_counter() - start,
          **_scores(results["test"]), "evaluated_step": results.get("evaluated_step"),
          "picture": os.path.join(workdir, "segmentation_test.png")}


def pretrain(kind: str, workdir: str, data_path: str) -> None:
  """The pretraining run of benchmarks/<kind>_s2.py, if it is not there yet."""
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    return
  if kind == "mae":
    config = config_lib.load_config(
        os.path.join(ROOT, "configs", f"mae_s2.py:path={data_path},epochs=8,base_lr=4e-3"),
        {"train.progress_bar": False})
  else:
    from benchmarks import dino_s2  # pylint: disable=g-import-not-at-top
    config = dino_s2.pretrain_config(argparse.Namespace(
        data_path=data_path, steps=150, batch=64, global_size=32, local_size=16,
        num_local=4, layerscale=0.0))
  trainer.train_and_evaluate(config, workdir)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_path", required=True,
                      help="the Sentinel-2 scene the encoders are pretrained on")
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--workdir", default="runs/benchmarks/seg_eolearn")
  parser.add_argument("--mae_workdir", default="runs/benchmarks/mae_s2/pretrain")
  parser.add_argument("--dino_workdir", default="runs/benchmarks/dino_s2/pretrain")
  parser.add_argument("--decoders", default=",".join(DECODERS))
  args = parser.parse_args()
  root = os.path.abspath(args.workdir)
  os.makedirs(root, exist_ok=True)
  encoders = {"mae": os.path.abspath(args.mae_workdir),
              "dino": os.path.abspath(args.dino_workdir)}
  for kind, workdir in encoders.items():
    pretrain(kind, workdir, args.data_path)

  rows: dict[str, dict] = {}
  start = time.perf_counter()
  rows["raw bands (per-pixel softmax regression)"] = {
      **raw_band_baseline(), "seconds": time.perf_counter() - start}
  rows["ResNet-18 + deeplabv3plus, from scratch"] = train(
      "resnet_deeplabv3plus", seg_config(
          f"backbone=resnet,decoder=deeplabv3plus,epochs={args.epochs}"), root)
  for decoder in args.decoders.split(","):
    for source in ("random", "mae", "dino"):
      # The random encoder is the MAE run's architecture, not its weights.
      init = encoders["mae" if source == "random" else source]
      overrides = {"init_from.workdir": ""} if source == "random" else {}
      config = seg_config(f"decoder={decoder},init={init},epochs={args.epochs}",
                          **overrides)
      rows[f"ViT-Ti/8 {source} (frozen) + {decoder}"] = train(
          f"vit_{source}_{decoder}", config, root)
      _write(root, rows)
  _write(root, rows)
  _print(rows)


def _write(root: str, rows: dict) -> None:
  with open(os.path.join(root, "summary.json"), "w") as f:
    json.dump(rows, f, indent=2)


def _print(rows: dict) -> None:
  floor = next(iter(rows.values()))["miou"]
  print(f"\nTest scores on eolearn_sample (dense, 16 px windows):")
  print(f"  {'model':<50} {'mIoU':>6} {'OA':>6} {'mAcc':>6} {'vs floor':>9} {'min':>5}")
  for name, r in rows.items():
    print(f"  {name:<50} {r['miou']:6.3f} {r['overall_acc']:6.3f} "
          f"{r['mean_acc']:6.3f} {r['miou'] - floor:+9.3f} {r['seconds'] / 60:5.1f}")


if __name__ == "__main__":
  main()
