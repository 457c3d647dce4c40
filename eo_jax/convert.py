"""Published PyTorch weights -> an eo_jax checkpoint that `init_from` takes.

  python -m eo_jax.convert --arch=resnet50 --input=resnet50.pth --output=runs/r50
  python -m eo_jax.convert --arch=vit --input=dinov2_vits14.pth --output=runs/dino_s14

--arch is a model name: resnet18, resnet34, resnet50, resnet18_truncated,
resnet or vit. The model's size is read from the weights (a ResNet's width,
stem and, for 'resnet', its blocks; a ViT's width, depth, patch size, FFN,
registers, LayerScale, mask token and position grid); --model adds or
overrides config.model fields as JSON (a ViT's num_heads when its width is
not a standard one: '{"num_heads": 6}'; '{"pool": "mean"}'). --bands names
the bands the weights were trained on (a sensor, e.g. 'rgb', or band names,
eo_jax/interop/band_adaptation.py) and --num_classes the classifier (default:
the checkpoint's; another count leaves the head at its initial value).

The output is a workdir holding `checkpoints/0/`: the parameters and
BatchNorm statistics, written by eo_jax's `Checkpointer`, and a meta whose
config has the model and objective 'supervised' and whose dataset info
has the bands, so that `config.init_from.workdir=DIR` loads it like a run
(band adaptation included) and `init_from.pretrained_encoder(DIR)` rebuilds
its model. Keys are checked as for `config.init_from.torch_checkpoint`.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from eo_jax.errors import CheckpointError, ConfigValueError

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet18_truncated", "resnet",
         "vit")


def _resnet_config(arch: str, sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
  if "conv1.weight" not in sd:
    raise CheckpointError("The state dict has no conv1.weight: not a "
                          "torchvision ResNet. Check --arch.")
  width, _, kernel, _ = sd["conv1.weight"].shape
  config: dict[str, Any] = {"name": arch}
  if width != 64:
    config["width"] = int(width)
  if kernel == 3:
    config["low_res_stem"] = True
  if arch == "resnet":
    blocks: dict[int, int] = {}
    for key in sd:
      m = re.match(r"layer(\d+)\.(\d+)\.", key)
      if m:
        stage = int(m.group(1))
        blocks[stage] = max(blocks.get(stage, 0), int(m.group(2)) + 1)
    config["stage_sizes"] = [blocks[s] for s in sorted(blocks)]
    config["block"] = ("bottleneck" if any(".conv3." in k for k in sd)
                       else "basic")
  return config


def _vit_config(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], int]:
  """(model config, image side) of a timm / DINOv2 state dict."""
  from eo_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  if "patch_embed.proj.weight" not in sd:
    raise CheckpointError("The state dict has no patch_embed.proj.weight: not "
                          "a timm / DINOv2 ViT. Check --arch.")
  width, _, patch, _ = sd["patch_embed.proj.weight"].shape
  blocks = {int(m.group(1)) for k in sd
            if (m := re.match(r"blocks\.(?:\d+\.)?(\d+)\.norm1\.", k))}
  config: dict[str, Any] = {"name": "vit", "patch_size": int(patch),
                            "width": int(width), "depth": len(blocks)}
  w12 = [v for k, v in sd.items() if k.endswith("mlp.w12.weight")]
  if w12:
    hidden = w12[0].shape[0] // 2
    candidates = [4 * width] + list(range(hidden * 3 // 2 - 16,
                                          hidden * 3 // 2 + 17))
    mlp_dim = next((m for m in candidates
                    if vit_lib.swiglu_hidden_dim(m) == hidden), None)
    if mlp_dim is None:
      raise CheckpointError(f"No mlp_dim gives the SwiGLU hidden size {hidden} "
                            "of the checkpoint (eo_jax rounds 2/3 mlp_dim up "
                            "to a multiple of 8).")
    config.update(ffn="swiglu", mlp_dim=int(mlp_dim))
  else:
    fc1 = [v for k, v in sd.items() if k.endswith("mlp.fc1.weight")]
    if fc1:
      config["mlp_dim"] = int(fc1[0].shape[0])
  registers = next((sd[k].shape[1] for k in ("register_tokens", "reg_token")
                    if k in sd), 0)
  if registers:
    config["num_registers"] = int(registers)
  if any(k.endswith(".ls1.gamma") for k in sd):
    config["layerscale_init"] = 1e-5  # the checkpoint's values replace it
  if "mask_token" in sd:
    config["use_mask_token"] = True
  side = 1
  if "pos_embed" in sd:
    length = sd["pos_embed"].shape[1]
    dinov2 = "register_tokens" in sd or "mask_token" in sd
    for prefix in ([1] if dinov2 else [0, 1 + registers]):
      n = length - prefix
      if n > 0 and math.isqrt(n) ** 2 == n:
        side = math.isqrt(n)
        break
    else:
      raise CheckpointError(f"pos_embed {sd['pos_embed'].shape} is not a square "
                            "grid; give --model='{\"posemb_grid\": [gh, gw]}'.")
    config["posemb_grid"] = [side, side]
  size = next((s for s, (w, *_) in vit_lib.SIZES.items() if w == width), None)
  config["variant"] = f"{size or 'B'}/{patch}"
  if size:
    config["num_heads"] = vit_lib.SIZES[size][2]
  return config, side * int(patch)


def _head_classes(arch: str, sd: Mapping[str, np.ndarray]) -> int:
  key = "head.weight" if arch == "vit" else "fc.weight"
  if arch == "resnet18_truncated" or key not in sd:
    return 0  # its MLP head cannot take fc
  return int(sd[key].shape[0])


def convert_checkpoint(arch: str, input_path: str, output: str, *,
                       bands: str = "rgb", num_classes: int | None = None,
                       model: Mapping[str, Any] | None = None) -> str:
  """Writes `output`/checkpoints/0 from the weights at `input_path`.

  Args:
    arch: one of ARCHS.
    input_path: a .pth / .pt / .bin or .safetensors state dict.
    output: the workdir to create (must hold no checkpoint yet).
    bands: the bands the weights were trained on (`bands_from_spec`).
    num_classes: classifier outputs; None -> the checkpoint's.
    model: config.model fields added to or overriding the inferred ones.

  Returns:
    The checkpoint folder.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from eo_jax import backend  # pylint: disable=g-import-not-at-top
  from eo_jax.config import base_config  # pylint: disable=g-import-not-at-top
  from eo_jax.data.datasets.base import DatasetInfo  # pylint: disable=g-import-not-at-top
  from eo_jax.interop import band_adaptation, torch_weights  # pylint: disable=g-import-not-at-top
  from eo_jax.models import build_model  # pylint: disable=g-import-not-at-top
  from eo_jax.train.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  if arch not in ARCHS:
    raise ConfigValueError(f"--arch={arch!r}; use one of {list(ARCHS)}.")
  directory = os.path.join(os.path.abspath(output), "checkpoints")
  if os.path.isdir(directory) and os.listdir(directory):
    raise CheckpointError(f"{directory} already holds checkpoints; pick a new "
                          "--output.")
  sd = torch_weights.load_state_dict(input_path)
  if arch == "vit":
    config, side = _vit_config(sd)
  else:
    config, side = _resnet_config(arch, sd), 64
  config.update(dict(model or {}))
  if arch == "vit" and "num_heads" not in config:
    raise ConfigValueError(
        f"A ViT of width {config['width']} is no standard size, so its head "
        "count cannot be told from the weights (the fused qkv has the same "
        "shape for any); give it: --model='{\"num_heads\": H}'.")
  band_list = band_adaptation.bands_from_spec(bands)
  kernel_key = "patch_embed.proj.weight" if arch == "vit" else "conv1.weight"
  channels = sd[kernel_key].shape[1]
  if channels != len(band_list):
    raise ConfigValueError(
        f"{kernel_key} takes {channels} bands but --bands={bands!r} names "
        f"{len(band_list)}; name the {channels} bands the weights were "
        "trained on, in their channel order.")
  classes = _head_classes(arch, sd) if num_classes is None else int(num_classes)
  model_config = ml_collections.ConfigDict(config)
  net = build_model(model_config, bands=band_list, num_classes=classes)
  image = jnp.zeros((1, side, side, len(band_list)), jnp.float32)
  flat = lambda tree: {"/".join(k): v for k, v in
                       traverse_util.flatten_dict(dict(tree)).items()}
  abstract = jax.eval_shape(net.init, jax.random.key(0), image)
  params, stats = (flat(abstract["params"]),
                   flat(abstract.get("batch_stats", {})))
  kind, _ = torch_weights.converter_kind(model_config)
  converted = torch_weights.convert_state_dict(
      sd, kind, {k: v.shape for k, v in params.items()},
      {k: v.shape for k, v in stats.items()}, model=f"--arch={arch}")
  left = sorted((set(params) - set(converted.params))
                | (set(stats) - set(converted.batch_stats)))
  if left:
    # Only then: compiling a large model's init takes a while on a CPU.
    logging.info("convert: left at their initial values: %s.", left)
    with backend.init_rng_context():
      variables = jax.device_get(jax.jit(net.init)(jax.random.key(0), image))
    params, stats = (flat(variables["params"]),
                     flat(variables.get("batch_stats", {})))
  for target, source, what in ((params, converted.params, "parameter"),
                               (stats, converted.batch_stats, "statistic")):
    wrong = [f"{k} {np.shape(v)} vs {target[k].shape}" for k, v in source.items()
             if k in target and np.shape(v) != tuple(target[k].shape)]
    if wrong:
      raise CheckpointError(f"The {what}s {wrong[:4]} do not fit the model "
                            f"inferred from the weights ({config}); set its "
                            "fields with --model.")
    target.update({k: np.asarray(v, target[k].dtype) for k, v in source.items()
                   if k in target})
  for note in converted.notes:
    logging.info("convert: %s.", note)
  unflat = lambda d: traverse_util.unflatten_dict(
      {tuple(k.split("/")): v for k, v in d.items()})
  state = {"params": unflat(params),
           "model_state": {"batch_stats": unflat(stats)} if stats else {}}
  run_config = base_config()
  run_config.model = model_config
  run_config.data = ml_collections.ConfigDict({"name": ""})
  run_config.input.image_size = side
  info = DatasetInfo(name=f"torch:{os.path.basename(input_path)}",
                     bands=band_list,
                     class_names=tuple(f"class_{i}" for i in range(classes)),
                     image_size=(side, side))
  meta = {"config": run_config.to_json_best_effort(), "info": info.to_dict(),
          "converted_from": {"path": os.path.abspath(input_path), "arch": arch,
                             "notes": converted.notes}}
  checkpointer = Checkpointer(directory, keep=1)
  checkpointer.save(0, state, None, meta)
  checkpointer.close()
  return os.path.join(directory, "0")


def main(argv: Sequence[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  from eo_jax import errors  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", required=True, choices=ARCHS)
  parser.add_argument("--input", required=True,
                      help="a .pth / .pt / .bin or .safetensors state dict")
  parser.add_argument("--output", required=True, help="the workdir to write")
  parser.add_argument("--bands", default="rgb",
                      help="bands the weights were trained on: a sensor "
                           "('rgb', 'sentinel2', ...) or names ('B04,B03,B02')")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="classifier outputs (default: the checkpoint's)")
  parser.add_argument("--model", default="",
                      help="JSON config.model fields, e.g. '{\"num_heads\": 6}'")
  args = parser.parse_args(argv)
  try:
    overrides = json.loads(args.model) if args.model else {}
    if not isinstance(overrides, dict):
      raise ValueError("not a JSON object")
  except ValueError as e:
    print(f"error: --model must be a JSON object of config.model fields ({e}).",
          file=sys.stderr)
    return 1
  try:
    where = convert_checkpoint(args.arch, args.input, args.output,
                               bands=args.bands, num_classes=args.num_classes,
                               model=overrides)
  except errors.UserError as e:
    print(f"error: {errors.message(e)}", file=sys.stderr)
    return 1
  print(f"Wrote {where}. Start a run from it with "
        f"--config.init_from.workdir={os.path.abspath(args.output)}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
