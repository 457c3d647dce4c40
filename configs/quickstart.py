r"""Land-cover patches from the embedded real Sentinel-2 sample, small ResNet.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart

Trains in a couple of minutes on 2 CPU cores with no download: the data is the
eo-learn TestEOPatch sample shipped inside the package (5 Sentinel-2 L1C dates
of a 1 km x 1 km area near Ljubljana, 13 bands, per-pixel land-cover labels;
see eo_jax/data/sample/PROVENANCE.md). Each example is a small 13-band patch
labelled with the land cover of its centre pixel; train, validation and test
patches come from spatially disjoint parts of the area.

Variants: `configs/quickstart.py:runlocal=True` (a few steps, for tests).
"""
from eo_jax.config import base_config, parse_arg, smoke_run


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = base_config()
  c.data.name = "eolearn_sample"

  c.input.batch_size = 64
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model.name = "resnet"
  c.model.stage_sizes = (1, 1, 1)
  c.model.block = "basic"
  c.model.width = 32
  c.model.low_res_stem = True

  # The training patches are 85% forest and 1% artificial surface; weights of
  # about 1/sqrt(class frequency) trade 5 points of accuracy for 3.7 of
  # macro-F1 (0.415 -> 0.452 on the test split, benchmarks/README.md).
  c.loss.class_weights = (1.0, 2.8, 5.4, 8.9)

  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 1.0

  c.train.epochs = 12
  c.train.log_every_steps = 20
  c.train.early_stopping.metric = "val/macro_f1"
  c.train.early_stopping.patience = 100  # record the best; never stop a 12-epoch run

  if arg.runlocal:
    c.input.batch_size = 16
    c.model.width = 8
    smoke_run(c, 6)
    c.optim.warmup_epochs = 0.0
  return c
