r"""DINOv2 pretraining of a ViT-Ti/8 on a real Sentinel-2 scene (13 bands).

  python main.py --config=configs/dino_s2.py:path=/data/s2_scene --workdir=runs/dino_s2

Data: 's2_scene', unlabelled 64 x 64 px windows (640 m) of a Sentinel-2
L1C scene, one GeoTIFF per band (all 13 bands resampled to the 10 m grid;
`path=` or --config.data.path; eo_jax/data/datasets/s2_scene.py says where
to get the 1947 x 1933 px sample scene the benchmarks use),
corners every 32 px, the bottom 10% of the rows held out as 'val' (the
windows of configs/mae_s2.py, so the two encoders see the same pixels).

Objective: 'dino' with configs/dino_whu.py's small-data recipe (see there for
each choice): 2 global crops of 64 px and 4 local crops of 32 px, a ViT-Ti/8
(8 x 8 patch grid per global crop; the MAE benchmark's encoder size),
LayerScale 1e-5, drop-path 0.1; head 3 layers, hidden 512, bottleneck 256,
4,096 prototypes shared with iBOT; Sinkhorn-Knopp centring; teacher
temperature 0.04 -> 0.07 over 5 epochs; momentum 0.992 -> 1; KoLeo 0.1; iBOT
masks on half the global crops (ratios 0.1-0.5); last layer frozen for the
first epoch. AdamW, lr 0.001 (DINOv2's 0.004 x sqrt(64 / 1024)), 5-epoch
warmup, cosine to 1e-6; weight decay 0.04 -> 0.4; grad clip 3; layer-wise lr
decay 0.9; patch-embedding lr x 0.2.

Probe: kNN and linear probes on the teacher's class token over
'eolearn_sample' (13 Sentinel-2 L1C bands in the same order, land cover of a
patch's centre pixel). Its patches are 9 x 9 px; a ViT needs whole patches,
so the probe resizes them to `probe_size` = 16 px (config.evals.knn.image_size):
a 2 x 2 grid of 8-px patches, as configs/vit_eolearn.py does for the MAE
encoder. One token then covers 4.5 source pixels; in pretraining a token
covers 9-16 source pixels of a global crop and 7-18 of a local crop, so the
probe sees objects ~2x larger than pretraining did (9 px -> 8 would be the
same scale but a single token).

Collapse diagnostics ('collapse' evaluator on the scene's val windows, every
evaluation): teacher / student entropy and KL, prototypes in use and their
perplexity, effective rank, normalised std and mean cosine of the class and
patch tokens; a console warning below rank 4 or 8 prototypes.

LayerScale 1e-5 is DINOv2's and suits long runs; in a 150-step CPU run it
kept the class token nearly image-independent and the student settled on
uniform outputs (benchmarks/README.md), so benchmarks/dino_s2.py turns it off.

Variants (`configs/dino_s2.py:key=value,...`):
  path=...            the scene folder (required).
  variant=Ti/8        ViT size and patch.
  epochs=50
  global_size=64, local_size=32, num_local=4   the crops (benchmarks/dino_s2.py
                      uses 32 / 16 to fit a 2-core CPU budget).
  batch_size=64
  probe_size=16       the probe's input side (a multiple of the patch).
  small_batch=True    batch 64, teacher temperature 0.04 throughout,
                      LayerScale off: the recipe benchmarks/ssl_study.py
                      chose at batch 64 (dino.set_small_batch_recipe).
  runlocal=True       synthetic 13-band data (the Sentinel-2 bands), a tiny
                      ViT and a few steps; probed on synthetic
                      classification with the same bands.
"""
import math

import ml_collections

from eo_jax.config import (base_config, collapse_eval, parse_arg, probe_evals,
                           smoke_run, tiny_vit)
from eo_jax.objectives import dino


def get_config(arg=None):
  arg = parse_arg(arg, path="", variant="Ti/8", epochs=50,
                  global_size=64, local_size=32, num_local=4, batch_size=64,
                  probe_size=16, small_batch=False, runlocal=False)
  c = base_config()
  c.objective = "dino"

  c.data = ml_collections.ConfigDict(dict(
      name="s2_scene", path=str(arg.path), patch_size=64, stride=32,
      val_fraction=0.1))

  c.model.name = "vit"
  c.model.variant = arg.variant
  c.model.layerscale_init = 1e-5
  c.model.drop_path = 0.1

  c.dino = dino.default_config(
      global_size=int(arg.global_size), local_size=int(arg.local_size),
      num_local=int(arg.num_local), num_prototypes=4096, head_hidden_dim=512,
      warmup_teacher_temp_epochs=5.0)

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
  # The scene has train and val rows only: val during training and, on the
  # final state, once more at the end.
  c.evals.val.final = True
  del c.evals["test"]
  probe_evals(c, ml_collections.ConfigDict(dict(name="eolearn_sample")),
              image_size=int(arg.probe_size))

  if arg.small_batch:
    dino.set_small_batch_recipe(c)

  if arg.runlocal:
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=13, image_size=16,
        num_train=32, num_val=8, num_test=8))
    probe_evals(c, ml_collections.ConfigDict(dict(
        name="synthetic", task="classification", num_bands=13, num_classes=3,
        image_size=16, num_train=24, num_val=12, num_test=4)),
                k=(3,), epochs=20, batch_size=8)
    tiny_vit(c.model, depth=2)
    dino.shrink_for_smoke_run(c.dino)
    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    smoke_run(c, 6)
    warmup_epochs = 0.0

  # DINOv2's lr rule: 0.004 for a batch of 1024, scaled by sqrt(batch / 1024).
  c.optim.lr = 0.004 * math.sqrt(c.input.batch_size / 1024)
  c.optim.end_lr_factor = 1e-6 / c.optim.lr
  c.optim.warmup_epochs = warmup_epochs
  return c
