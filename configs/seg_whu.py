r"""Land-cover segmentation of WHU-OHS (32 bands, 24 classes) with a decoder on a ViT.

  python main.py --config=configs/seg_whu.py:path=/data/WHU-OHS,init=runs/dino_whu,decoder=segmenter --workdir=runs/seg_whu

Data: 'whu_ohs' with task 'segmentation' (eo_jax/data/datasets/whu_ohs.py
says where to download it and the layout): 64 x 64 px windows of the
512 x 512 tiles, all 32 Orbita bands (466-940 nm), the 24 land-cover classes
(label 0, unlabelled, is ignored); the published tr/ val/ ts/ tiles are the
train, val and test splits. Flips and rot90 augment training windows.
`path=` sets config.data.path; without it the run stops with where to get
the data.

Model: 'segmentation', a decoder (`decoder=` linear | ms_linear | conv |
segmenter | deeplabv3plus) on a ViT. `init=<workdir>` takes the encoder of
a pretraining run (configs/dino_whu.py or an MAE run on the same bands):
its model config is read from the run's checkpoint and its weights are
copied under 'backbone/'; `freeze=True` (default with `init`) trains the
decoder on frozen features, `freeze=False` fine-tunes with layer-wise lr
decay 0.75. Without `init`: ViT-S/8 from scratch.

Objective: 'segmentation', cross-entropy over labelled pixels with
median-frequency class weights from the training split, DeepLabV3+'s
auxiliary head at 0.4. AdamW lr 1e-3 (5e-4 fine-tuning), 2-epoch warmup,
cosine decay, 30 epochs, batch 64; the reported state is the best
validation mIoU.

Variants: path=, init=, decoder=, freeze=, epochs=, max_tiles= (tiles per
split, 0 = all), runlocal=True (a tiny ViT for a few steps: on synthetic
32-band segmentation data without `path`, on the given folder with 16 px
windows otherwise, as the tests' WHU-OHS fixture).
"""
import ml_collections

from eo_jax.config import base_config, parse_arg, smoke_run, tiny_vit
from eo_jax.train.init_from import pretrained_encoder

DECODERS = ("linear", "ms_linear", "conv", "segmenter", "deeplabv3plus")


def get_config(arg=None):
  arg = parse_arg(arg, path="", init="", decoder="linear", freeze=None,
                  epochs=30, max_tiles=0, runlocal=False)
  if arg.decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {arg.decoder!r}.")
  freeze = bool(arg.init) if arg.freeze is None else bool(arg.freeze)
  c = base_config()
  c.objective = "segmentation"
  c.data = ml_collections.ConfigDict(dict(
      name="whu_ohs", path=str(arg.path), task="segmentation", patch_size=64,
      max_tiles=int(arg.max_tiles)))
  c.input.batch_size = 64
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  decoder_settings = {}
  if arg.decoder == "deeplabv3plus":
    decoder_settings = dict(aspp_rates=(1, 2, 3))  # an 8 x 8 token grid
  c.model = ml_collections.ConfigDict(dict(
      name="segmentation", decoder=arg.decoder, freeze_backbone=freeze,
      decoder_settings=decoder_settings,
      backbone=ml_collections.ConfigDict(dict(name="vit", variant="S/8"))))
  if arg.init:
    encoder, prefix = pretrained_encoder(str(arg.init))
    c.model.backbone = encoder
    c.init_from.workdir = str(arg.init)
    c.init_from.source_prefix = prefix
    c.init_from.target_prefix = "backbone"
  if freeze:
    c.optim.frozen = ("^backbone/",)
  elif arg.init:
    c.optim.layer_decay = 0.75

  c.loss.class_weighting = "median"
  c.optim.name = "adamw"
  c.optim.lr = 1e-3 if freeze or not arg.init else 5e-4
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 2.0
  c.train.epochs = float(arg.epochs)
  c.train.log_every_steps = 50
  c.train.early_stopping.metric = "val/miou"
  c.train.early_stopping.patience = 1000  # keep the best; never stop early

  if arg.runlocal:
    if arg.path:
      c.data.patch_size = 16
    else:
      c.data = ml_collections.ConfigDict(dict(
          name="synthetic", task="segmentation", num_bands=32, num_classes=4,
          image_size=16, num_train=32, num_val=8, num_test=8))
    if not arg.init:
      tiny_vit(c.model.backbone, depth=2)
    c.input.batch_size = 8
    smoke_run(c, 4)
    c.optim.warmup_epochs = 0.0
  return c
