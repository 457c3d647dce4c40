r"""MAE pretraining of a ViT-Ti/8 on 64 x 64 x 13 patches of a real Sentinel-2 scene.

  python main.py --config=configs/mae_s2.py:path=/data/s2_scene --workdir=runs/mae_s2

Data: 's2_scene', unlabelled 64 x 64 px windows (640 m) of a Sentinel-2 L1C
scene, one GeoTIFF per band (all 13 bands on the 10 m grid; `path=` or
--config.data.path; eo_jax/data/datasets/s2_scene.py says where to get the
1947 x 1933 px sample scene the benchmarks use), corners every 32 px, the bottom
10% of the rows held out as 'val'. Augmentation: random resized crops
(MAE's scale range 0.2-1) and the eight flips/rotations (a scene has no
up).

Model: ViT-Ti/8 (192 wide, 12 blocks, 3 heads; 8 x 8 px patches, so 64
patch tokens + cls) with fixed 2-D sine-cosine position embeddings, as MAE.
75% of the patches are masked; the loss is the normalised-pixel MSE on the
masked patches over all 13 bands. The decoder is 128 wide, 2 blocks, 4
heads by default ('decoder=light') so that a 2-core CPU trains ~90 img/s
(1.4 steps/s at batch 64); 'decoder=mae' is the paper's 512 wide, 8 blocks,
16 heads (18x slower on CPU).

Optimiser (MAE): AdamW (0.9, 0.95), weight decay 0.05, lr = base_lr x
batch / 256 with base_lr 1.5e-4, linear warmup over the first 5% of
training, then cosine to 0.

Variants (`configs/mae_s2.py:key=value,...`):
  path=            the scene folder (required);
  variant=Ti/8     encoder size, '<size>/<patch>' (S/8 is ViT-S/8);
  decoder=light    or 'mae';
  base_lr=1.5e-4   lr per 256 images (short runs want more, e.g. 1.5e-3);
  epochs=200       training length (about 48 steps an epoch);
  runlocal=True    synthetic 13-band 16 x 16 data and a tiny ViT, a few
                   steps (what the tests run; uses a LEARNED position
                   embedding so that downstream tests exercise its resizing).

Collapse diagnostics ('collapse' evaluator, every evaluation): effective
rank, normalised std and mean cosine of the encoder's pooled and patch
embeddings of the val windows.

Downstream: configs/vit_eolearn.py linear-probes or fine-tunes the encoder
with config.init_from (source_prefix 'encoder').
"""
import ml_collections

from eo_jax.config import base_config, collapse_eval, parse_arg, smoke_run, tiny_vit
from eo_jax.objectives import mae

DECODERS = {"light": dict(decoder_width=128, decoder_depth=2, decoder_heads=4),
            "mae": dict(decoder_width=512, decoder_depth=8, decoder_heads=16)}


def get_config(arg=None):
  arg = parse_arg(arg, path="", variant="Ti/8", decoder="light", base_lr=1.5e-4,
                  epochs=200.0, runlocal=False)
  if arg.decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got "
                     f"{arg.decoder!r}.")
  c = base_config()
  c.objective = "mae"

  c.data.name = "s2_scene"
  c.data.path = str(arg.path)
  c.data.patch_size = 64
  c.data.stride = 32
  c.data.val_fraction = 0.1

  c.input.batch_size = 64
  c.input.augment.random_resized_crop = True
  c.input.augment.crop_scale = (0.2, 1.0)
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model.name = "vit"
  c.model.variant = arg.variant
  c.model.posemb = "sincos2d"

  c.mae = mae.default_config(mask_ratio=0.75, norm_pix_loss=True,
                             **DECODERS[arg.decoder])

  mae.set_mae_optim(c.optim, base_lr=float(arg.base_lr),
                    batch_size=c.input.batch_size, epochs=float(arg.epochs))

  c.train.epochs = float(arg.epochs)
  c.train.log_every_steps = 10
  c.train.keep_checkpoints = 2
  # Effective rank, prototype use, entropies: a warning when it collapses.
  collapse_eval(c)
  # The scene has train and val rows only: val during training and, on the
  # final state, once more at the end.
  c.evals.val.final = True
  del c.evals["test"]

  if arg.runlocal:
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=13, image_size=16,
        num_train=32, num_val=8, num_test=8))
    c.input.batch_size = 8
    c.input.augment.random_resized_crop = False
    tiny_vit(c.model, depth=1)
    c.model.posemb = "learn"
    c.mae.decoder_width = 32
    c.mae.decoder_depth = 1
    c.mae.decoder_heads = 2
    c.mae.vis_examples = 2
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 0.0
    smoke_run(c, 6)
  return c
