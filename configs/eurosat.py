r"""EuroSAT land-use classification with the seed study's truncated ResNet-18.

  python main.py --config=configs/eurosat.py:variant=all,path=/data/EuroSAT_MS --workdir=runs/eurosat_all

EuroSAT (Helber et al. 2019): 27,000 Sentinel-2 patches of 64 x 64 px in 10
classes. `variant=rgb` reads the JPEG release (`<Class>/<Class>_<n>.jpg`,
from https://madm.dfki.de/files/sentinel/EuroSAT.zip), `variant=all` the
13-band GeoTIFF release (EuroSATallBands.zip; band order B01..B12 with B8A
last, handled by name). `path` may be the extracted folder or the zip.
`source=tfds` reads prepared TFDS data (`eurosat/rgb`, `eurosat/all`) from
the TFDS data_dir given as `path`.

The split is stratified per class, 60/20/20, with a fixed seed. Patches are
resized to 128 x 128 (as in the seed study) and fed to 'resnet18_truncated':
the ResNet-18 stem and first two stages (856,778 parameters with the MLP head,
hidden 1024, ReLU, dropout 0.2). Backbone and head get their own learning
rates (1e-4 and 1e-3).

Variants: variant=rgb|all, path=..., source=files|tfds, bands=B04+B03+B02
(a '+'-separated band selection by name), runlocal=True (tiny, for tests).
"""
from eo_jax.config import base_config, parse_arg, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, variant="all", path="", source="files", bands="",
                  runlocal=False)
  c = base_config()
  c.data.name = "eurosat"
  c.data.variant = arg.variant
  c.data.path = arg.path or None
  c.data.source = arg.source
  c.data.split_fractions = (0.6, 0.2, 0.2)
  c.data.split_seed = 0
  c.data.bands = tuple(arg.bands.split("+")) if arg.bands else ()

  c.input.batch_size = 64
  c.input.image_size = 128
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model.name = "resnet18_truncated"

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.schedule = "step"
  c.optim.step_every_epochs = 7.0
  c.optim.step_factor = 0.1
  # The pretrained-backbone recipe of the seed: a slower backbone, a faster head.
  c.optim.groups = (("^head/", 1.0), (".*", 0.1))

  c.train.epochs = 20
  c.train.log_every_steps = 50
  c.train.early_stopping.metric = "val/macro_f1"
  c.train.early_stopping.patience = 5

  if arg.runlocal:
    c.input.batch_size = 8
    c.input.image_size = 32
    smoke_run(c, 4)
  return c
