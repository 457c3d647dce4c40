r"""Linear probe or fine-tuning of an MAE-pretrained ViT on the eo-learn sample.

  python main.py --config=configs/mae_s2.py --workdir=runs/mae_s2
  python main.py --config=configs/vit_eolearn.py:mode=probe --workdir=runs/vit_eolearn_probe
  python main.py --config=configs/vit_eolearn.py:mode=finetune --workdir=runs/vit_eolearn_ft

The first command pretrains the encoder (configs/mae_s2.py); this config
starts from its latest checkpoint (`init=runs/mae_s2`, i.e.
config.init_from.workdir, taking the 'encoder' subtree) with a fresh head.
`init=` (empty) trains the same network from a random initialisation, the
baseline.

Data: 'eolearn_sample' exactly as configs/quickstart.py (9 x 9 x 13 patches
labelled by their centre pixel, 4 land-cover classes, the quickstart's
spatially disjoint train / val / test blocks), resized to 16 x 16 so that
the ViT-Ti/8 sees a 2 x 2 grid of patches (each 4.5 x 4.5 source pixels;
the encoder was pretrained on 8 x 8-pixel patches, so objects look 1.8x
larger here). The encoder's sine-cosine position embedding needs no
resizing; a learned one is resized by init_from.

Modes:
  probe     MAE's linear-probe protocol: the encoder is frozen
            (config.optim.frozen = ('^(?!head/)',)), the head is a BatchNorm
            without scale/offset followed by a linear layer
            (config.model.head_norm); AdamW, no weight decay.
  finetune  everything trains, layer-wise lr decay 0.75 (the supervised
            objective takes the ViT's layer_id), drop-path 0.1, label
            smoothing 0.1, AdamW (0.9, 0.999), weight decay 0.05.

Pooling is the mean of the patch tokens (MAE's fine-tuning choice; the cls
token of a short pretraining run is weak). The model fields must match
configs/mae_s2.py (tests check it). The best validation macro-F1 state is
evaluated on test, as in the quickstart.

Variants: mode=probe|finetune, init=<MAE workdir or ''>, variant=Ti/8,
epochs=10, runlocal=True (tiny model matching mae_s2's runlocal, a few
steps, init_from left empty for the tests to fill in).
"""
import ml_collections

from eo_jax.config import base_config, parse_arg, smoke_run, tiny_vit

MODES = ("probe", "finetune")


def get_config(arg=None):
  arg = parse_arg(arg, mode="probe", init="runs/mae_s2", variant="Ti/8",
                  epochs=10.0, runlocal=False)
  if arg.mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {arg.mode!r}.")
  probe = arg.mode == "probe"
  c = base_config()
  c.objective = "supervised"

  # The quickstart's data and split; the ViT wants a multiple of its patch.
  c.data.name = "eolearn_sample"
  c.input.image_size = 16
  c.input.batch_size = 64
  c.input.eval_batch_size = 256
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model.name = "vit"
  c.model.variant = arg.variant
  c.model.posemb = "sincos2d"
  c.model.pool = "mean"
  c.model.head_norm = probe
  c.model.drop_path = 0.0 if probe else 0.1

  c.init_from.workdir = str(arg.init or "")
  c.init_from.source_prefix = "encoder"

  c.optim.name = "adamw"
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 0.1 * arg.epochs
  if probe:
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.frozen = ("^(?!head/)",)
  else:
    c.optim.lr = 5e-4
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.75
    c.loss.label_smoothing = 0.1

  c.train.epochs = float(arg.epochs)
  c.train.log_every_steps = 20
  c.train.early_stopping.metric = "val/macro_f1"
  c.train.early_stopping.patience = 100  # record the best; never stop early

  if arg.runlocal:
    # Fewer patches (every 6th centre) and the tiny ViT of mae_s2's runlocal.
    c.data = ml_collections.ConfigDict(dict(name="eolearn_sample", stride=6,
                                            eval_stride=6))
    c.input.image_size = 8
    c.input.batch_size = 16
    c.input.eval_batch_size = 64
    tiny_vit(c.model, depth=1)
    c.model.posemb = "learn"
    c.init_from.workdir = ""
    c.optim.warmup_epochs = 0.0
    smoke_run(c, 4)
  return c
