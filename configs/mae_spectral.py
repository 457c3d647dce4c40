r"""MAE pretraining of the spatial-spectral ViT on any image cube.

  python main.py --config=configs/mae_spectral.py:path=/data/scene.hdr --workdir=runs/mae_spectral

Data: 'cube' (eo_jax/data/datasets/cube.py): one cube file (.npy / .npz,
GeoTIFF, ENVI .hdr + raw, MATLAB .mat) given by `path=` (or
--config.data.path), task 'unlabelled', windows of `window` px (32) cut
from spatially disjoint train / val / test blocks. Band wavelengths come
from the file (ENVI header, GDAL metadata); a file without them needs
--config.data.wavelength_range='(400, 1000)' or
--config.data.wavelengths=..., since the model's tokens are built from the
wavelengths. Other cube keys (pixel_order, scale, image_variable, band
names, split fractions) are in the cube module's docstring; set them with
--config.data.<key>=... . Augmentation: random resized crops (MAE's scale
range 0.2-1) and the eight flips / rotations.

Model: 'spectral_vit' (eo_jax/models/spectral_vit.py), ViT-Ti/8 sizes, the
bands sorted by wavelength and cut into groups of `group_size` (8) bands;
tokens are (band group x 8 x 8 px patch), with wavelength-generated patch
embeddings (one parameter set for any band set), fixed 2-D sine-cosine
spatial and wavelength position embeddings; `mode` 'factorized' (default:
spatial and spectral attention in parallel branches) or 'joint' (full
attention over every token, quadratic in groups x patches).

Objective: 'mae' (eo_jax/objectives/mae.py) with per-(group, patch)
targets: each token's p*p*|g| pixels, normalised per token, padded to the
largest group with a mask so padding never counts. `masking` chooses what
the 75% hides: 'patches' (whole spatial patches, every group), 'tokens'
(single group-patch tokens; mode=joint only) or 'groups' (whole band
groups). The decoder (128 wide, 2 blocks, 4 heads) sees every token with
its spatial and wavelength positions. AdamW (0.9, 0.95), weight decay
0.05, lr = base_lr x batch / 256, 5% linear warmup, cosine to 0 (MAE).

Variants (`configs/mae_spectral.py:key=value,...`):
  path=              the cube file (required).
  variant=Ti/8       encoder size, '<size>/<patch>'.
  mode=factorized    or 'joint'.
  masking=patches    or 'tokens' (joint only) or 'groups'.
  group_size=8       bands per group (wavelength order; the last may be
                     smaller).
  mask_ratio=0.75
  window=32          training window in px (a multiple of the patch).
  base_lr=1.5e-4     lr per 256 images.
  epochs=100
  runlocal=True      no files: the 'synthetic' dataset with 16 bands
                     (400-1000 nm), 16 x 16 px, a tiny spectral ViT (patch 4,
                     width 32, groups of 3 bands: 6 groups, the last of one
                     band, so group padding is exercised), a few steps.

Collapse diagnostics at every evaluation (the 'collapse' evaluator): effective
rank, normalised std and mean cosine of the encoder's embeddings.

Downstream: the encoder is params['encoder'] (config.init_from
.source_prefix = 'encoder'); with embed='wavelength' it loads onto another
sensor's bands.
"""
import ml_collections

from eo_jax.config import base_config, collapse_eval, parse_arg, smoke_run, tiny_vit
from eo_jax.objectives import mae

MODES = ("factorized", "joint")


def get_config(arg=None):
  arg = parse_arg(arg, path="", variant="Ti/8", mode="factorized",
                  masking="patches", group_size=8, mask_ratio=0.75, window=32,
                  base_lr=1.5e-4, epochs=100.0, runlocal=False)
  if arg.mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {arg.mode!r}.")
  if arg.masking not in mae.MASKINGS:
    raise ValueError(f"masking must be one of {mae.MASKINGS}, got "
                     f"{arg.masking!r}.")
  c = base_config()
  c.objective = "mae"

  c.data = ml_collections.ConfigDict(dict(
      name="cube", path=str(arg.path), task="unlabelled",
      patch_size=int(arg.window)))

  c.input.batch_size = 64
  c.input.augment.random_resized_crop = True
  c.input.augment.crop_scale = (0.2, 1.0)
  c.input.augment.flips = True
  c.input.augment.rot90 = True

  c.model = ml_collections.ConfigDict(dict(
      name="spectral_vit", variant=arg.variant, mode=arg.mode,
      group_size=int(arg.group_size), posemb="sincos2d"))

  c.mae = mae.default_config(mask_ratio=float(arg.mask_ratio),
                             masking=arg.masking, norm_pix_loss=True,
                             decoder_width=128, decoder_depth=2,
                             decoder_heads=4)

  mae.set_mae_optim(c.optim, base_lr=float(arg.base_lr),
                    batch_size=c.input.batch_size, epochs=float(arg.epochs))

  c.train.epochs = float(arg.epochs)
  c.train.log_every_steps = 10
  c.train.keep_checkpoints = 2
  # Effective rank, prototype use, entropies: a warning when it collapses.
  collapse_eval(c)

  if arg.runlocal:
    c.data = ml_collections.ConfigDict(dict(
        name="synthetic", task="unlabelled", num_bands=16, image_size=16,
        num_train=32, num_val=8, num_test=8))
    c.input.batch_size = 8
    c.input.augment.random_resized_crop = False
    tiny_vit(c.model, depth=1)
    # Groups of 3 of 16 bands: 5 full groups and one of a single band.
    c.model.group_size = 3
    c.mae.decoder_width = 32
    c.mae.decoder_depth = 1
    c.mae.decoder_heads = 2
    c.mae.vis_examples = 2
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 0.0
    c.evals.val.final = True
    del c.evals["test"]
    smoke_run(c, 6)
  return c
