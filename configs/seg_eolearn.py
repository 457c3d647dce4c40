r"""Land-cover segmentation of the embedded Sentinel-2 sample: a decoder on a ViT or a ResNet.

  python main.py --config=configs/seg_eolearn.py:decoder=segmenter --workdir=runs/seg_eolearn

Data: 'eolearn_sample' with task 'segmentation' (no download): 16 x 16 px
windows of the five Sentinel-2 L1C dates, 13 bands, four land-cover
classes (forest, grassland, shrubland, artificial surface), unlabelled
pixels ignored; train, val and test windows come from spatially disjoint
blocks with a 16 px margin (eo_jax/data/datasets/eolearn.py). Flips and
rot90 augment training windows.

Model: 'segmentation' = a backbone and a decoder (eo_jax/models/decoders/):
`decoder=` linear | ms_linear | conv | segmenter | deeplabv3plus.
  backbone=vit     ViT-Ti/8 (4 blocks when trained from scratch); windows
                   are upsampled to `image_size` = 32 px (a 4 x 4 token grid;
                   labels follow by nearest neighbour, so every source pixel
                   counts 4 times and the scores are those of the 16 px maps);
  backbone=resnet  ResNet-18 at its native 16 px with a low-resolution stem
                   and output stride 8 (2 x 2 maps at the deepest stage).
`init=<workdir>` takes the encoder of a pretraining run (MAE or DINO, e.g.
configs/mae_s2.py / configs/dino_s2.py, or a supervised run): its model
config is read from the run's checkpoint, so the backbone is built exactly
as it was trained, and its weights are copied under 'backbone/'.
`freeze=True` (default with `init`) trains the decoder only, on frozen
features; `freeze=False` fine-tunes everything with layer-wise lr decay 0.75.

Objective: 'segmentation', cross-entropy over labelled pixels with
median-frequency class weights from the training split (forest is 83% of
its pixels), plus DeepLabV3+'s FCN auxiliary head at weight 0.4. AdamW, lr
1e-3 (decoder) with a 2-epoch warmup and cosine decay, 40 epochs of 11
steps at batch 16; the reported state is the best validation mIoU.

Variants: decoder=, backbone=vit|resnet, init=, freeze=, epochs=, lr=,
image_size=, runlocal=True (a few steps of a tiny model).
"""
import ml_collections

from eo_jax.config import base_config, parse_arg, smoke_run, tiny_vit
from eo_jax.train.init_from import pretrained_encoder

DECODERS = ("linear", "ms_linear", "conv", "segmenter", "deeplabv3plus")


def get_config(arg=None):
  arg = parse_arg(arg, decoder="linear", backbone="vit", init="", freeze=None,
                  epochs=40, lr=1e-3, image_size=32, runlocal=False)
  if arg.decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {arg.decoder!r}.")
  if arg.backbone not in ("vit", "resnet"):
    raise ValueError(f"backbone must be 'vit' or 'resnet', got {arg.backbone!r}.")
  freeze = bool(arg.init) if arg.freeze is None else bool(arg.freeze)
  c = base_config()
  c.objective = "segmentation"
  c.data = ml_collections.ConfigDict(dict(name="eolearn_sample", task="segmentation"))
  c.input.batch_size = 16
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  backbone = _backbone(arg)
  decoder_settings = {}
  if arg.decoder == "deeplabv3plus":
    # A 4 x 4 (ViT) or 2 x 2 (ResNet) deepest map: DeepLab's 6/12/18 rates
    # would all fall outside it.
    decoder_settings = dict(aspp_rates=(1, 2, 3))
  c.model = ml_collections.ConfigDict(dict(
      name="segmentation", decoder=arg.decoder, freeze_backbone=freeze,
      decoder_settings=decoder_settings, backbone=backbone))
  if arg.backbone == "vit":
    c.input.image_size = int(arg.image_size)
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
  c.optim.lr = float(arg.lr)
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 2.0
  c.train.epochs = float(arg.epochs)
  c.train.log_every_steps = 11
  c.train.early_stopping.metric = "val/miou"
  c.train.early_stopping.patience = 1000  # keep the best; never stop early

  if arg.runlocal:
    c.input.batch_size = 8
    if arg.backbone == "vit" and not arg.init:
      tiny_vit(c.model.backbone, depth=4)
      c.model.backbone.variant = "Ti/8"
    smoke_run(c, 4)
    c.optim.warmup_epochs = 0.0
  return c


def _backbone(arg) -> ml_collections.ConfigDict:
  if arg.backbone == "resnet":
    return ml_collections.ConfigDict(dict(
        name="resnet18", low_res_stem=True, output_stride=8))
  return ml_collections.ConfigDict(dict(name="vit", variant="Ti/8", depth=4))
