r"""Transfer of a pretrained ResNet to a classification dataset: probe, partial or full fine-tuning.

  python main.py --config=configs/transfer.py:dataset=eurosat_rgb,path=/data/EuroSAT,weights=/weights/resnet50.pth,stage=probe --workdir=runs/transfer_probe

The feature-extraction study in three config variants (`stage=`), for any
classification dataset eo_jax reads:

  probe    the backbone is frozen (inference mode, so its BatchNorm running
           statistics stay the pretrained ones, and no gradient): its pooled
           features feed a new linear classifier, the only thing trained.
  partial  the stem and stages 1-3 frozen; stage 4 trains at `lr` and the
           new head at 10 x `lr` (per-group learning rates, config.optim.groups).
  full     everything trains, the head at 10 x `lr`.

Weights: `weights=` a torchvision ResNet state dict (.pth or .safetensors,
config.init_from.torch_checkpoint; e.g. torchvision's resnet50 ImageNet
weights, saved with `torch.save(model.state_dict(), path)`), or `init=` the
workdir of an eo_jax run (config.init_from.workdir); neither trains from a
random initialisation (the baseline). The head is never loaded. When the
checkpoint's bands (`checkpoint_bands=rgb` for ImageNet weights) differ from
the data's, the stem's input filters are adapted by wavelength
(`band_rule=nearest|mean|copy`, eo_jax/interop/band_adaptation.py); the log
says band by band what was done.

Datasets (`dataset=`, with `path=` where it lives; each reader's module says
where to download it and the layout it expects):
  eurosat_rgb     EuroSAT RGB JPEGs (64 px, 10 classes), stratified 60/20/20
  eurosat_ms      EuroSAT 13-band GeoTIFFs, the same split
  tiny_imagenet   Tiny ImageNet (64 px, 200 classes), 10% of train as val
  cifar10         CIFAR-10 binary release (32 px), 10% of train as val
  cifar10_tfds    the same from prepared TFDS data (path= the TFDS data_dir)
  eolearn_sample  the embedded eo-learn Sentinel-2 sample (no download)
Images are resized to `image_size` (default 128 px, as in the seed study's
EuroSAT runs; 0 keeps the native size).

Evaluation: validation accuracy / macro-F1 each epoch, the best-validation
state on test, and at the end a kNN probe (k=10) of the backbone's pooled
features on test with the PCA picture of those features coloured by class
(`knn_pca.png` in the workdir).

Variants (`configs/transfer.py:key=value,...`): stage=probe|partial|full,
arch=resnet18|resnet34|resnet50, dataset=..., path=..., weights=..., init=...,
checkpoint_bands=rgb (or names joined by '+', e.g. B04+B03+B02),
band_rule=nearest, image_size=128, epochs=10,
lr=(1e-3 probe, 1e-4 otherwise), batch_size=64, runlocal=True (a tiny ResNet
on the embedded sample, a few steps, whatever dataset= says).
"""
import ml_collections

from eo_jax.config import base_config, parse_arg, smoke_run

STAGES = ("probe", "partial", "full")
ARCHS = ("resnet18", "resnet34", "resnet50")
# dataset= -> config.data (path added from path=).
DATASETS = {
    "eurosat_rgb": dict(name="eurosat", variant="rgb",
                        split_fractions=(0.6, 0.2, 0.2), split_seed=0),
    "eurosat_ms": dict(name="eurosat", variant="all",
                       split_fractions=(0.6, 0.2, 0.2), split_seed=0),
    "tiny_imagenet": dict(name="tiny_imagenet", val_fraction=0.1),
    "cifar10": dict(name="cifar10", val_fraction=0.1),
    "cifar10_tfds": dict(name="cifar10", source="tfds", val_fraction=0.1),
    "eolearn_sample": dict(name="eolearn_sample"),
}
_NUM_STAGES = 4


def _frozen(stage: str) -> tuple[int, tuple[str, ...]]:
  """(ResNet frozen_stages, config.optim.frozen regexes) of a stage."""
  if stage == "probe":
    return _NUM_STAGES, ("^(?!head/)",)
  if stage == "partial":
    return _NUM_STAGES - 1, ("^stem_", "^stage_[1-3]_")
  return -1, ()


def get_config(arg=None):
  arg = parse_arg(arg, stage="probe", arch="resnet50", dataset="eurosat_rgb",
                  path="", weights="", init="", checkpoint_bands="rgb",
                  band_rule="nearest", image_size=128, epochs=10.0, lr=0.0,
                  batch_size=64, runlocal=False)
  if arg.stage not in STAGES:
    raise ValueError(f"stage must be one of {STAGES}, got {arg.stage!r}.")
  if arg.arch not in ARCHS:
    raise ValueError(f"arch must be one of {ARCHS}, got {arg.arch!r}.")
  if arg.dataset not in DATASETS:
    raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got "
                     f"{arg.dataset!r}.")
  if arg.weights and arg.init:
    raise ValueError("Give weights= (a PyTorch file) or init= (an eo_jax "
                     "workdir), not both.")
  c = base_config()
  c.objective = "supervised"
  c.data = ml_collections.ConfigDict(dict(DATASETS[arg.dataset]))
  if arg.dataset != "eolearn_sample":
    c.data.path = arg.path or None

  c.input.batch_size = int(arg.batch_size)
  c.input.eval_batch_size = 256
  c.input.image_size = int(arg.image_size)
  c.input.augment.flips = True
  c.input.augment.rot90 = arg.dataset.startswith(("eurosat", "eolearn"))

  frozen_stages, frozen = _frozen(arg.stage)
  c.model.name = arg.arch
  c.model.frozen_stages = frozen_stages

  c.init_from.torch_checkpoint = arg.weights
  c.init_from.workdir = arg.init
  # '+' separates names on the command line (',' separates variants).
  c.init_from.checkpoint_bands = arg.checkpoint_bands.replace("+", ",")
  c.init_from.band_rule = arg.band_rule

  c.optim.name = "adamw"
  c.optim.lr = float(arg.lr) or (1e-3 if arg.stage == "probe" else 1e-4)
  c.optim.weight_decay = 0.0 if arg.stage == "probe" else 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 0.0 if arg.stage == "probe" else 1.0
  c.optim.frozen = frozen
  c.optim.groups = () if arg.stage == "probe" else (("^head/", 10.0),)
  c.train.epochs = float(arg.epochs)
  c.train.early_stopping.metric = "val/macro_f1"
  c.train.early_stopping.patience = 1000  # keep the best state, never stop

  c.evals.knn = ml_collections.ConfigDict(dict(
      type="knn", split="test", k=(10,), every_steps=-1, final=True,
      pca_figure=True, batch_size=256))

  if arg.runlocal:
    c.data = ml_collections.ConfigDict(dict(name="eolearn_sample", stride=9,
                                            eval_stride=4))
    c.model.name = "resnet"
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 4
    c.input.batch_size = 16
    c.input.eval_batch_size = 64
    c.input.image_size = 32
    smoke_run(c, 4)
    c.optim.warmup_epochs = 0.0
  return c
