r"""DINOv2 + spectral masking: the spatial-spectral ViT on any image cube.

  python main.py --config=configs/dino_spectral.py:path=/data/scene.hdr --workdir=runs/dino_spectral

Data: 'cube' (eo_jax/data/datasets/cube.py): one cube file (.npy / .npz,
GeoTIFF, ENVI .hdr + raw, MATLAB .mat) given by `path=` (or
--config.data.path), task 'unlabelled', `window` px windows (64) from
spatially disjoint train / val / test blocks. Band wavelengths come from
the file; a file without them needs --config.data.wavelength_range=
'(400, 1000)' (or --config.data.wavelengths=...): the model's tokens are
built from the wavelengths. Other cube keys are in the cube module's
docstring (--config.data.<key>=...).

Model: 'spectral_vit' (eo_jax/models/spectral_vit.py), ViT-Ti/8 sizes,
LayerScale 1e-5, drop-path 0.1; bands sorted by wavelength in groups of
`group_size` (8); tokens (band group x 8 x 8 px patch) with
wavelength-generated patch embeddings; `mode` 'factorized' (default) or
'joint'.

Objective: 'dino' (eo_jax/objectives/dino.py) with configs/dino_s2.py's
small-data recipe (2 global crops of 64 px, 4 local of 32 px; head hidden
512, 4,096 prototypes shared with iBOT; Sinkhorn-Knopp; teacher temperature
0.04 -> 0.07 over 5 epochs; momentum 0.992 -> 1; KoLeo 0.1; iBOT block masks
on the spatial patch grid of half the global crops; AdamW, lr 0.004 x
sqrt(batch / 1024), 5-epoch warmup, weight decay 0.04 -> 0.4, grad clip 3,
layer-wise decay 0.9), plus spectral masking: in every student global
crop `spectral_mask` (25%) of the band groups, at least one kept, are
replaced by the mask token (config.dino.spectral_mask_ratio); the teacher
sees every band.

Probe: with `label_path=` (a label map of the same cube), kNN and linear
probes on the teacher's class token over the cube's classification
patches (9 x 9 px around labelled pixels, resized to `probe_size` = 16 px,
a 2 x 2 grid of 8 px patches). Without it, only DINO's own metrics.

Collapse diagnostics at every evaluation (the 'collapse' evaluator, on the
val split): entropies, KL, prototype use, effective ranks; a console warning
when the run collapses.

Variants (`configs/dino_spectral.py:key=value,...`):
  path=              the cube file (required).
  label_path=        a label map for the probes (optional).
  variant=Ti/8       encoder size and patch.
  mode=factorized    or 'joint'.
  group_size=8       bands per group.
  spectral_mask=0.25 fraction of the groups hidden from the student; 0 =
                     off.
  window=64          pretraining window in px.
  global_size=64, local_size=32, num_local=4   the crops.
  batch_size=64
  epochs=50
  probe_size=16      the probe's input side (a multiple of the patch).
  small_batch=True   batch 64, teacher temperature 0.04 throughout, LayerScale
                     off (dino.set_small_batch_recipe; benchmarks/ssl_study.py).
  runlocal=True      no files: the 'synthetic' dataset with 16 bands, a tiny
                     spectral ViT (patch 4, groups of 4 bands: one of the 4
                     groups hidden per student crop), a few steps; probed on
                     synthetic classification with the same bands.

Downstream: the encoder is params['student']['backbone']
(config.init_from.source_prefix = 'student/backbone').
"""
import math

import ml_collections

from eo_jax.config import (base_config, collapse_eval, parse_arg, probe_evals,
                           smoke_run, tiny_vit)
from eo_jax.objectives import dino

MODES = ("factorized", "joint")


def get_config(arg=None):
  arg = parse_arg(arg, path="", label_path="", variant="Ti/8",
                  mode="factorized", group_size=8, spectral_mask=0.25,
                  window=64, global_size=64, local_size=32, num_local=4,
                  batch_size=64, epochs=50, probe_size=16, small_batch=False,
                  runlocal=False)
  if arg.mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {arg.mode!r}.")
  c = base_config()
  c.objective = "dino"

  c.data = ml_collections.ConfigDict(dict(
      name="cube", path=str(arg.path), task="unlabelled",
      patch_size=int(arg.window)))

  c.model = ml_collections.ConfigDict(dict(
      name="spectral_vit", variant=arg.variant, mode=arg.mode,
      group_size=int(arg.group_size), layerscale_init=1e-5, drop_path=0.1))

  c.dino = dino.default_config(
      global_size=int(arg.global_size), local_size=int(arg.local_size),
      num_local=int(arg.num_local), num_prototypes=4096, head_hidden_dim=512,
      warmup_teacher_temp_epochs=5.0,
      spectral_mask_ratio=float(arg.spectral_mask))

  c.input.batch_size = int(arg.batch_size)
  c.input.eval_batch_size = 256

  dino.set_dinov2_optim(c.optim)
  c.train.epochs = float(arg.epochs)
  warmup_epochs = 5.0

  c.train.log_every_steps = 10
  c.train.eval_every_steps = 0
  c.train.keep_checkpoints = 2
  # Effective rank, prototype use, entropies: a warning when it collapses.
  collapse_eval(c)
  if arg.label_path:
    probe_data = ml_collections.ConfigDict(dict(
        name="cube", label_path=str(arg.label_path), task="classification"))
    # The probe reads the pretraining cube, wherever it is set.
    probe_data.path = c.data.get_ref("path")
    probe_evals(c, probe_data, image_size=int(arg.probe_size))

  if arg.small_batch:
    dino.set_small_batch_recipe(c)

  if arg.runlocal:
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=16, image_size=16,
        num_train=32, num_val=8, num_test=8))
    probe_evals(c, ml_collections.ConfigDict(dict(
        name="synthetic", task="classification", num_bands=16, num_classes=3,
        image_size=16, num_train=24, num_val=12, num_test=4)),
                k=(3,), epochs=20, batch_size=8)
    tiny_vit(c.model, depth=2)
    c.model.group_size = 4
    dino.shrink_for_smoke_run(c.dino)
    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.evals.val.final = True
    del c.evals["test"]
    smoke_run(c, 6)
    warmup_epochs = 0.0

  # DINOv2's lr rule: 0.004 for a batch of 1024, scaled by sqrt(batch / 1024).
  c.optim.lr = 0.004 * math.sqrt(c.input.batch_size / 1024)
  c.optim.end_lr_factor = 1e-6 / c.optim.lr
  c.optim.warmup_epochs = warmup_epochs
  return c
