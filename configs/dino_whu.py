r"""DINOv2 pretraining of a ViT on WHU-OHS hyperspectral patches (32 bands).

  python main.py --config=configs/dino_whu.py:path=/data/WHU-OHS --workdir=runs/dino_whu

Data: 'whu_ohs' (see eo_jax/data/datasets/whu_ohs.py for the download and
the layout), task 'unlabelled': every 64 x 64 px patch of the tr/ tiles, all
32 bands (466-940 nm), labels not read. `path=` sets config.data.path; the
probe's path follows it (a FieldReference), so `--config.data.path=...`
works as well. Without the data the reader stops with where to get it.

Objective: 'dino' (eo_jax/objectives/dino.py) with DINOv2's recipe (Oquab
et al. 2023): 2 global crops (64 px, 32-100% of the patch area) and 8 local
crops (32 px, 5-32%), spectral jitter / blur / solarisation per view;
DINO head 3 layers, hidden 2048, bottleneck 256, 65,536 prototypes, shared
with iBOT; Sinkhorn-Knopp centring; teacher temperature 0.04 -> 0.07 over 30
epochs, EMA momentum 0.992 -> 1 (cosine); KoLeo 0.1; iBOT block masks on
half the global crops, ratios 0.1-0.5; last layer frozen for the first
epoch. Model: ViT-S/8 (8 x 8 patch grid on a global crop), LayerScale 1e-5,
drop-path 0.3. AdamW, lr 0.004 x sqrt(batch / 1024) (DINOv2's rule) with a
10-epoch warmup and cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine), grad
clip 3.0, layer-wise lr decay 0.9, patch-embedding lr x 0.2.

Probe: at every evaluation, kNN and linear probes on the teacher's class
token over WHU-OHS classification patches (64 px, the majority class of
patches at least 25% labelled; train tiles -> train, val tiles -> val; at
most 100 tiles per split to bound the feature extraction).

Collapse diagnostics at every evaluation (the 'collapse' evaluator, on the
val split): entropies, KL, prototype use, effective ranks; a console warning
when the run collapses.

Variants (`configs/dino_whu.py:key=value,...`):
  path=            the WHU-OHS folder (holding tr/, val/, ts/).
  variant=S/8      ViT size and patch.
  model=vit        or 'spectral_vit': the spatial-spectral ViT
                   (eo_jax/models/spectral_vit.py) of the same size, the 32
                   bands in 8 groups of 4 (wavelength order), factorized
                   spatial / spectral attention, with DINO's spectral
                   masking: 2 of the 8 groups (spectral_mask_ratio 0.25)
                   hidden from the student in every global crop. Every
                   other setting (and runlocal) as for the ViT.
  epochs=100
  small_data=True  DINOv2's defaults scaled to a few hundred tiles and a
                   small GPU or a CPU; each change and why:
                   * 200 tiles per split (12,800 train patches): the "small
                     data" this variant is for, and it bounds evaluation;
                   * ViT-Ti/8 and drop-path 0.1: a short run of a small
                     model underfits, it does not need DINOv2's ViT-L
                     regularisation;
                   * 4,096 prototypes (not 65,536): K well below the number
                     of images keeps each prototype used by many images
                     per epoch (with ~13k images, 65,536 prototypes are
                     mostly dead), and the head's last layer shrinks from
                     16.8M to 1M parameters;
                   * head hidden 512 (not 2048): 2048 is sized for ViT-L's
                     1024-wide features; 512 keeps the head/backbone ratio;
                   * batch 64 (not 1024): memory and the small dataset (200
                     steps an epoch); lr follows DINOv2's sqrt rule (0.001);
                   * 4 local crops (not 8): half the student's local-crop
                     compute; DINOv2 reports a small loss for fewer crops;
                   * teacher temperature warmup 5 epochs (not 30) and lr
                     warmup 5 epochs (not 10): in a 50-epoch run, 30 epochs
                     of warmup would be most of training.
  small_batch=True batch 64, teacher temperature 0.04 throughout, LayerScale
                   off (dino.set_small_batch_recipe; benchmarks/ssl_study.py).
  runlocal=True    a tiny ViT for a few steps. Without `path`: the
                   'synthetic' dataset with 32 bands (runs on a fresh clone,
                   no data), probed on synthetic classification with the
                   same bands. With `path`: the real reader on that folder
                   with 16 px patches (the tests' WHU-OHS fixture).

Downstream: the encoder is params['student']['backbone']
(config.init_from.source_prefix = 'student/backbone'); the teacher, the
better network, lives in the checkpoint's extra state.
"""
import math

import ml_collections

from eo_jax.config import (base_config, collapse_eval, parse_arg, probe_evals,
                           smoke_run, tiny_vit)
from eo_jax.objectives import dino

MODELS = ("vit", "spectral_vit")


def get_config(arg=None):
  arg = parse_arg(arg, path="", variant="S/8", model="vit", epochs=100,
                  small_data=False, small_batch=False, runlocal=False)
  if arg.model not in MODELS:
    raise ValueError(f"model must be one of {MODELS}, got {arg.model!r}.")
  c = base_config()
  c.objective = "dino"

  c.data = ml_collections.ConfigDict(dict(
      name="whu_ohs", path=str(arg.path), task="unlabelled", patch_size=64,
      max_tiles=0))

  c.model.name = arg.model
  c.model.variant = arg.variant
  c.model.layerscale_init = 1e-5
  c.model.drop_path = 0.3

  c.dino = dino.default_config(global_size=64, local_size=32, num_local=8)
  if arg.model == "spectral_vit":
    # 466-940 nm in 8 groups of 4 neighbouring bands; a quarter of them
    # hidden from the student's global crops.
    c.model.mode = "factorized"
    c.model.group_size = 4
    c.dino.spectral_mask_ratio = 0.25

  c.input.batch_size = 256
  c.input.eval_batch_size = 256

  dino.set_dinov2_optim(c.optim)
  c.train.epochs = float(arg.epochs)
  warmup_epochs = 10.0

  c.train.log_every_steps = 20
  c.train.eval_every_steps = 0
  c.train.keep_checkpoints = 2
  # Effective rank, prototype use, entropies: a warning when it collapses.
  collapse_eval(c)

  probe_data = ml_collections.ConfigDict(dict(
      name="whu_ohs", task="classification", patch_size=64, max_tiles=100,
      split_dirs={"train": "tr", "val": "val"}))
  probe_data.path = c.data.get_ref("path")
  probe_evals(c, probe_data)

  if arg.small_data:
    c.data.max_tiles = 200
    c.model.variant = "Ti/8"
    c.model.drop_path = 0.1
    c.dino.num_prototypes = 4096
    c.dino.head_hidden_dim = 512
    c.dino.num_local = 4
    c.dino.warmup_teacher_temp_epochs = 5.0
    c.input.batch_size = 64
    c.input.eval_batch_size = 256
    warmup_epochs = 5.0

  if arg.small_batch:
    dino.set_small_batch_recipe(c)

  if arg.runlocal:
    _runlocal(c, with_data=bool(arg.path))
    warmup_epochs = 0.0

  # DINOv2's lr rule: 0.004 for a batch of 1024, scaled by sqrt(batch / 1024).
  c.optim.lr = 0.004 * math.sqrt(c.input.batch_size / 1024)
  c.optim.end_lr_factor = 1e-6 / c.optim.lr
  c.optim.warmup_epochs = warmup_epochs
  return c


def _runlocal(c, with_data: bool) -> None:
  """A tiny ViT and a few steps; WHU-OHS only when a path is given."""
  if with_data:
    c.data.patch_size = 16
    probe_data = c.evals.knn.data
    probe_data.patch_size = 16
    probe_data.max_tiles = 0
  else:
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=32, image_size=16,
        num_train=32, num_val=8, num_test=8))
    probe_data = ml_collections.ConfigDict(dict(
        name="synthetic", task="classification", num_bands=32, num_classes=3,
        image_size=16, num_train=24, num_val=12, num_test=4))
    c.evals.val.final = True
    del c.evals["test"]
  tiny_vit(c.model, depth=2)
  c.model.drop_path = 0.1
  dino.shrink_for_smoke_run(c.dino)
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  probe_evals(c, probe_data, k=(3,), epochs=20, batch_size=8)
  smoke_run(c, 6)
