r"""Train-step speed on whatever accelerator is present: step time, images/s, MFU, memory.

  python -m benchmarks.accelerator [--cases dino_vit_b8,mae_vit_b8,...] \
      [--dtypes bfloat16,float32] [--batches 512,256,128,64,32] [--steps 10] [--tiny]

A fixed set of training steps, each built from the project's own config
(the objective, optimiser and model a user runs) with the data replaced by
the synthetic dataset of the same shape, so that the figure is the step
alone (`benchmarks/step_timing.py`: the same global batch fed `--steps`
times after one compiling step; median step time):

  dino_vit_b8      configs/dino_whu.py, ViT-B/8, DINOv2 (2 x 64 px global
                   + 8 x 32 px local crops, 65,536 prototypes), 32 bands
  mae_vit_b8       configs/mae_s2.py, ViT-B/8 MAE (75% masked, light
                   decoder), 64 px, 32 bands
  vit_s8           supervised ViT-S/8, 64 px, 13 bands, 10 classes
  resnet50         supervised ResNet-50, 128 px, 13 bands, 10 classes
  spectral_vit_s8  configs/dino_whu.py:model=spectral_vit, ViT-S/8 size,
                   32 bands in 8 groups, DINOv2 with spectral masking

For each case and dtype the largest batch of `--batches` that compiles and
runs is kept (an out-of-memory error moves to the next). MFU uses the
device's dense peak for the dtype (eo_jax/train/throughput.py); devices not
in that table (CPU) print '-'. On a CPU backend the default is `--tiny`:
the same cases with tiny models, 16 px images and batch 4, which the test
suite runs to keep this script working.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

import jax
import ml_collections

from eo_jax import config as config_lib
from benchmarks.step_timing import StepTiming, time_config

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_file(name: str, arg: str = "") -> ml_collections.ConfigDict:
  module = config_lib.config_module(os.path.join(_ROOT, "configs", f"{name}.py"))
  config = module.get_config(arg)
  config.unlock()
  return config


def _synthetic(config, *, task: str, bands: int, size: int, batch: int,
               classes: int = 10) -> None:
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic", task=task, num_bands=bands, image_size=size,
      num_train=batch, num_val=0, num_test=0, num_classes=classes))
  config.input.batch_size = batch
  config.input.image_size = 0
  config.evals = ml_collections.ConfigDict()
  config.train.early_stopping.metric = ""
  config.train.validate_data = False
  config.train.progress_bar = False


def _dino(model: str) -> Callable[[int, bool], ml_collections.ConfigDict]:
  def build(batch: int, tiny: bool) -> ml_collections.ConfigDict:
    spectral = model == "spectral_vit"
    c = _config_file("dino_whu", f"model={model},variant={'S/8' if spectral else 'B/8'}")
    if tiny:
      config_lib.tiny_vit(c.model, depth=1)
      from eo_jax.objectives import dino  # pylint: disable=g-import-not-at-top
      dino.shrink_for_smoke_run(c.dino)
    _synthetic(c, task="unlabelled", bands=32, size=16 if tiny else 64, batch=batch)
    return c
  return build


def _mae(batch: int, tiny: bool) -> ml_collections.ConfigDict:
  c = _config_file("mae_s2", "variant=B/8")
  if tiny:
    config_lib.tiny_vit(c.model, depth=1)
    c.mae.decoder_width, c.mae.decoder_depth, c.mae.decoder_heads = 32, 1, 2
  _synthetic(c, task="unlabelled", bands=32, size=16 if tiny else 64, batch=batch)
  return c


def _supervised(model: dict, size: int, bands: int):
  def build(batch: int, tiny: bool) -> ml_collections.ConfigDict:
    c = config_lib.base_config()
    c.model = ml_collections.ConfigDict(dict(model))
    c.optim.name = "adamw"
    if tiny:
      if model["name"] == "vit":
        config_lib.tiny_vit(c.model, depth=1)
      else:
        c.model.name, c.model.block = "resnet", "bottleneck"
        c.model.stage_sizes, c.model.width = (1, 1), 8
    _synthetic(c, task="classification", bands=bands, size=16 if tiny else size,
               batch=batch)
    return c
  return build


CASES: dict[str, Callable[[int, bool], ml_collections.ConfigDict]] = {
    "dino_vit_b8": _dino("vit"),
    "mae_vit_b8": _mae,
    "vit_s8": _supervised(dict(name="vit", variant="S/8"), 64, 13),
    "resnet50": _supervised(dict(name="resnet50"), 128, 13),
    "spectral_vit_s8": _dino("spectral_vit"),
}


def _out_of_memory(error: Exception) -> bool:
  text = str(error).lower()
  return "resource_exhausted" in text or "out of memory" in text


def largest_batch(case: str, dtype: str, batches: list[int], tiny: bool,
                  steps: int) -> StepTiming | None:
  """The timing at the largest of `batches` that fits; None if none does."""
  for batch in sorted(batches, reverse=True):
    config = CASES[case](batch, tiny)
    config_lib.set_dotted(config, "model.dtype", dtype)
    try:
      return time_config(config, steps=steps)
    except Exception as error:  # pylint: disable=broad-except
      if not _out_of_memory(error):
        raise
      print(f"  {case} {dtype} batch {batch}: out of memory, trying smaller",
            file=sys.stderr)
      jax.clear_caches()
  return None


def _fmt(value: float | None, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def run(cases: list[str], dtypes: list[str], batches: list[int], steps: int,
        tiny: bool) -> list[dict]:
  """Times every case x dtype and prints the Markdown table row by row."""
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    raise SystemExit(f"Unknown case(s) {unknown}; choose from {sorted(CASES)}.")
  device = jax.devices()[0]
  print(f"device: {device.device_kind} ({device.platform}) x {jax.device_count()}, "
        f"jax {jax.__version__}, {'tiny models' if tiny else 'full size'}, "
        f"median of {steps} steps after compilation")
  print("| case | dtype | batch | ms/step | images/s | TFLOP/s | MFU | peak GiB | compile s |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  rows = []
  for case in cases:
    for dtype in dtypes:
      t = largest_batch(case, dtype, batches, tiny, steps)
      if t is None:
        print(f"| {case} | {dtype} | none of {batches} fits | | | | | | |")
        continue
      print(f"| {case} | {dtype} | {t.global_batch} | {t.ms_per_step:.1f} | "
            f"{t.images_per_second:.1f} | {_fmt(t.tflops_per_second, '.3f')} | "
            f"{_fmt(None if t.mfu is None else 100 * t.mfu, '.1f')}"
            f"{'' if t.mfu is None else '%'} | {_fmt(t.peak_memory_gib, '.2f')} | "
            f"{t.compile_s:.1f} |", flush=True)
      rows.append(dict(case=case, dtype=dtype, **vars(t)))
  return rows


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--dtypes", default="bfloat16,float32")
  parser.add_argument("--batches", default="")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--tiny", action="store_true",
                      help="tiny models (the default on CPU)")
  parser.add_argument("--full", action="store_true",
                      help="full-size models even on CPU")
  args = parser.parse_args(argv)
  tiny = args.tiny or (jax.default_backend() == "cpu" and not args.full)
  batches = ([int(b) for b in args.batches.split(",") if b] or
             ([4] if tiny else [1024, 512, 256, 128, 64, 32, 16]))
  return run([c for c in args.cases.split(",") if c],
             [d for d in args.dtypes.split(",") if d], batches, args.steps, tiny)


if __name__ == "__main__":
  main()
