r"""BagNet / ResNet-18 low-resolution study: receptive field vs. accuracy.

  python main.py --config=configs/bagnet.py:model=bagnet17,data=eolearn,opt=sgd \
      --workdir=runs/bagnet17_eolearn_sgd

Variants (`configs/bagnet.py:key=value,...`):
  model=bagnet9|bagnet17|bagnet33|resnet18   BagNets (Brendel & Bethge 2019)
      with receptive fields 9/17/33 px, or the baseline ResNet-18 with the
      low-resolution stem (3x3/1 conv, no max pool). Default bagnet17.
  data=tiny_imagenet|eurosat|eurosat_all|eolearn   Tiny ImageNet (64 px RGB,
      200 classes), EuroSAT RGB or all 13 bands (64 px, 10 classes), or the
      eo-learn Sentinel-2 sample shipped with the package (runs anywhere).
      Default eolearn.
  opt=sgd|adam|adadelta   SGD with momentum 0.9 (lr 0.01), Adam (lr 1e-3) or
      Adadelta (lr 1.0, rho 0.9, eps 1e-6); all with coupled L2 weight decay
      1e-4 and the learning rate x0.1 every 7 epochs, as in the seed study.
  width_mult=F   channels x F (1.0 = 64 in the stem, as in the papers; the
      default is 1.0, and 0.125 for eolearn, whose training split holds 3,365
      patches).
  shallow=True|False   one bottleneck per stage instead of (3, 4, 6, 3); the
      receptive field does not change (BagNets only; default True for
      eolearn, where the deep version mostly costs compile time).
  path=DIR   the data: the tiny-imagenet-200 folder, the EuroSAT folder or
      .zip, or an eo-learn .npz / EOPatch folder (eolearn needs none).
  init_from=WORKDIR   start from another run's checkpoint with a new head
      (backbone copied, head re-initialised): the seed's pretrained-backbone
      row, Tiny ImageNet -> EuroSAT RGB. The bands must match: a Tiny
      ImageNet backbone only fits data=eurosat (R, G, B), and the model and
      width_mult must be those of the source run.
  runlocal=True   tiny model, 4 steps, for tests (seconds).

eolearn: the sample's patches must fit inside one split's 20-px wide blocks
(see eo_jax/data/datasets/eolearn.py), so they cannot reach the 33 px a
BagNet-33 needs. The study takes 11 x 11 px patches (110 m) and resizes them
x3 to 33 x 33 (config.input.image_size), so every model sees the same input:
BagNet-9 / 17 / 33 look at 3 / 5.7 / 11 original pixels, the ResNet-18 at the
whole patch. Validation/test centres are taken every 2 px (985 / 1,000
patches).

Pretrained-backbone row (two runs):
  python main.py --config=configs/bagnet.py:model=bagnet17,data=tiny_imagenet,path=/data/tiny-imagenet-200 \
      --workdir=runs/bagnet17_tin
  python main.py --config=configs/bagnet.py:model=bagnet17,data=eurosat,path=/data/EuroSAT.zip,init_from=runs/bagnet17_tin \
      --workdir=runs/bagnet17_eurosat_from_tin

The whole grid: benchmarks/sweep.py (see benchmarks/README.md).
"""
from eo_jax.config import base_config, parse_arg, smoke_run

MODELS = ("bagnet9", "bagnet17", "bagnet33", "resnet18")
DATASETS = ("tiny_imagenet", "eurosat", "eurosat_all", "eolearn")
OPTIMIZERS = ("sgd", "adam", "adadelta")

# Per dataset: input size, batch, epochs, default width multiplier and depth,
# and whether a 90-degree rotation is a valid augmentation (not for photos).
_DATA = {
    "tiny_imagenet": dict(image_size=64, batch_size=128, epochs=30,
                          width_mult=1.0, shallow=False, rot90=False),
    "eurosat": dict(image_size=64, batch_size=64, epochs=30, width_mult=1.0,
                    shallow=False, rot90=True),
    "eurosat_all": dict(image_size=64, batch_size=64, epochs=30,
                        width_mult=1.0, shallow=False, rot90=True),
    "eolearn": dict(image_size=33, batch_size=32, epochs=8, width_mult=0.125,
                    shallow=True, rot90=True),
}

_OPTIMIZERS = {
    "sgd": dict(name="sgd", lr=0.01, momentum=0.9),
    "adam": dict(name="adam", lr=1e-3),
    # PyTorch's Adadelta defaults (lr 1.0, rho 0.9, eps 1e-6).
    "adadelta": dict(name="adadelta", lr=1.0, rho=0.9, eps=1e-6),
}

_BAGNET_BLOCKS = (3, 4, 6, 3)
_SHALLOW_BLOCKS = (1, 1, 1, 1)


def _choice(value, allowed, what):
  if value not in allowed:
    raise ValueError(f"configs/bagnet.py: {what}={value!r} is not one of "
                     f"{list(allowed)}.")
  return value


def _data(c, data: str, path) -> None:
  if data == "tiny_imagenet":
    c.data.name = "tiny_imagenet"
    c.data.path = path
    c.data.val_fraction = 0.1
  elif data in ("eurosat", "eurosat_all"):
    c.data.name = "eurosat"
    c.data.path = path
    c.data.variant = "rgb" if data == "eurosat" else "all"
  else:
    c.data.name = "eolearn_sample"
    c.data.path = path
    c.data.patch_size = 11
    c.data.stride = 2
    c.data.eval_stride = 2


def _model(c, model: str, width: int, shallow: bool) -> None:
  c.model.name = model
  c.model.width = width
  if model == "resnet18":
    c.model.low_res_stem = True
  else:
    c.model.blocks = _SHALLOW_BLOCKS if shallow else _BAGNET_BLOCKS


def get_config(arg=None):
  """The study's config for one (model, data, opt) cell; see the docstring."""
  arg = parse_arg(arg, model="bagnet17", data="eolearn", opt="sgd",
                  width_mult=0.0, shallow=None, path="", init_from="",
                  runlocal=False)
  model = _choice(arg.model, MODELS, "model")
  data = _choice(arg.data, DATASETS, "data")
  opt = _choice(arg.opt, OPTIMIZERS, "opt")
  preset = _DATA[data]
  width_mult = float(arg.width_mult or preset["width_mult"])
  if width_mult <= 0:
    raise ValueError(f"configs/bagnet.py: width_mult must be > 0, got "
                     f"{arg.width_mult}.")
  shallow = preset["shallow"] if arg.shallow is None else bool(arg.shallow)

  c = base_config()
  _data(c, data, str(arg.path) or None)
  _model(c, model, max(1, round(64 * width_mult)), shallow)

  c.input.image_size = preset["image_size"]
  c.input.batch_size = preset["batch_size"]
  # Larger eval batches: fewer, faster steps; no gradients to hold.
  c.input.eval_batch_size = 256
  c.input.augment.flips = True
  c.input.augment.rot90 = preset["rot90"]

  for key, value in _OPTIMIZERS[opt].items():
    c.optim[key] = value
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "step"
  c.optim.step_every_epochs = 7.0
  c.optim.step_factor = 0.1
  c.optim.warmup_epochs = 0.0

  c.train.epochs = preset["epochs"]
  c.train.log_every_steps = 50
  # Record the best validation accuracy and evaluate the test split at that
  # state; the patience is never reached, so every run trains to the end.
  c.train.early_stopping.metric = "val/accuracy"
  c.train.early_stopping.patience = 10**6
  c.train.keep_checkpoints = 1

  if arg.init_from:
    c.init_from.workdir = str(arg.init_from)

  if arg.runlocal:
    c.input.batch_size = 8
    c.input.eval_batch_size = 64
    # Every model needs >= 33 px (BagNet-33's receptive field).
    c.input.image_size = 33
    c.model.width = 4
    if model != "resnet18":
      c.model.blocks = _SHALLOW_BLOCKS
    if data == "eolearn":
      c.data.stride = 5
      c.data.eval_stride = 5
    smoke_run(c, 4)
  return c
