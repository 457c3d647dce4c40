"""DINOv2 self-distillation ('dino') for ViTs on any number of bands.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision"
(2023): DINO's class-token self-distillation + iBOT's masked-patch loss +
the KoLeo regulariser, with a teacher that is an EMA of the student.

Per training step (batches from `train_views()`: 'global_crops'
(B, 2, G, G, C) and 'local_crops' (B, L, l, l, C)):

* teacher (EMA parameters, no gradient): both global crops, unmasked, ->
  class-token and patch-token prototype logits -> centred targets at
  temperature tau_t (Sinkhorn-Knopp or softmax centring, centering.py);
* student: both global crops with iBOT block masks (mask token replaces the
  masked patches; data/block_masking.py) and the L local crops, unmasked;
* loss = dino_weight * DINO(class tokens, every student crop vs every OTHER
  teacher crop) + ibot_weight * iBOT(masked patches) + koleo_weight *
  sum over the 2 global crops of KoLeo(student class tokens).

State: `params` = {'student': {'backbone', 'dino_head'[, 'ibot_head']}} is
all the optimiser sees; `extra` = {'teacher': the same tree as an EMA copy,
'dino_center', 'ibot_center' (softmax centring only)}. A downstream run takes
the encoder with `config.init_from.source_prefix = 'student/backbone'`.

Schedules (DINOv2's, in steps; epochs are converted with the run's steps per
epoch, computed as the trainer does):
* teacher momentum: cosine from `momentum` (0.992) to `final_momentum` (1)
  over the run, applied in `after_update` with the index of the update that
  was just made;
* teacher temperature: linear `warmup_teacher_temp` (0.04) ->
  `teacher_temp` (0.07) over `warmup_teacher_temp_epochs`, then constant;
* the DINO head's last layer (prototypes) is frozen for
  `freeze_last_layer_epochs`: inside `loss` its parameters pass through
  `stop_gradient` while `step` < the freeze length, so its gradient is
  exactly 0. Chosen over an optimiser group because it needs nothing from
  the optimiser; AdamW's moments stay 0 so the update is 0, and its
  decoupled weight decay, which does shrink the stored vectors, cannot
  change the function: the layer is weight-normalised (only directions
  count). One difference from PyTorch, which skips the parameter entirely:
  Adam's bias correction counts global steps, so the first updates after
  unfreezing are at most ~3x a fresh Adam step (about 1x for a freeze of a
  few hundred steps, as b2 = 0.999 is then still far from converged);
* weight decay 0.04 -> 0.4 (cosine), gradient clipping, layer-wise lr decay
  and the learning-rate warmup are `config.optim` settings
  (`weight_decay_end`, `grad_clip_norm`, `layer_decay` through `layer_id`).

iBOT with static shapes: masks are drawn inside the step from its RNG key
(half the global crops, ratios 0.1-0.5, `block_masking.ibot_masks`). Each
crop's masked patches are gathered into a buffer of M = floor(N *
max_ratio) slots; padding slots carry weight 0 in the loss and in the
centring, so the heads always run on 2B x M patch tokens.

Evaluation (`eval_step`, per example, on the plain eval image): the
cross-entropy between the teacher's plain softmax at the final temperature
(no centring: Sinkhorn-Knopp is a batch operation, and a per-example value
must not depend on its batch) and the student's distribution; the cosine
between student and teacher class tokens; the teacher's and the student's
entropies and KL(teacher || student) (= loss - teacher entropy); and its
top prototype, from which the 'dino' evaluator (eo_jax/evaluate/dino.py)
counts the prototypes in use (a collapse alarm: 1 means every image maps to
the same prototype). `diagnostics` adds the class and patch tokens of the
embedded network for the 'collapse' evaluator (eo_jax/evaluate/collapse.py).
`embed` gives the TEACHER's class token (DINO evaluates the teacher, which
is the better network; `embed_from='student'` switches). `visualize` draws
`attention.png` (last-block class-token attention per head) and
`patch_pca.png` (first three PCA components of the patch tokens), with a
`_<split>` suffix for splits other than 'val'. The backbone may be any token
backbone (eo_jax/models/backbone.py).

Spatial-spectral ViT ('spectral_vit'): the iBOT masks are (B, N) masks of
its spatial patch grid (`mask=` hides every band group of a patch) and the
iBOT loss reads its 'patch_tokens' (the mean over groups), so everything
above works unchanged. Spectral masking adds to it:
`config.dino.spectral_mask_ratio` > 0 hides, in every STUDENT global crop,
round(G * ratio) of its G band groups (at most G - 1: one group always
stays), drawn per crop (`masking.random_group_mask`) from the step's key;
the backbone replaces their tokens by its mask token (`group_mask=`), so
the student's output does not depend on those bands, while the teacher
and the local crops see every group. The student must then match the
teacher's view of the whole spectrum from part of it. A backbone without
band groups (`num_groups`) refuses a ratio > 0.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from eo_jax import schedules
from eo_jax.data import block_masking
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import DatasetInfo
from eo_jax.data.multicrop import MultiCrop
from eo_jax.data.spectral_augment import SpectralAugment
from eo_jax.errors import ConfigValueError
from eo_jax.models.common import l2_normalize
from eo_jax.models.dino_head import DINOHead
from eo_jax.objectives import centering
from eo_jax.objectives import masking
from eo_jax.objectives.base import (OBJECTIVES, Objective, StepOutput,
                                    TrainState, Variables, display_bands,
                                    objective_settings, png_name, token_backbone)
from eo_jax.objectives.dino_loss import cross_entropy, dino_cls_loss
from eo_jax.objectives.ibot_loss import ibot_patch_loss
from eo_jax.objectives.koleo import koleo_loss

#: `config.dino` keys and their defaults (DINOv2's ViT-L recipe, where it
#: has one: Oquab et al. 2023, table 16, and its released training config).
DEFAULTS: dict[str, Any] = {
    # Multi-crop views.
    "global_size": 224,
    "local_size": 96,
    "num_local": 8,
    "global_scale": (0.32, 1.0),
    "local_scale": (0.05, 0.32),
    # Photometric augmentation (data/spectral_augment.py); DINOv2's per-view
    # probabilities of blur and solarisation are kept, these set strengths.
    "jitter_prob": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "band_scaling": 0.2,
    "blur_sigma": (0.1, 2.0),
    "solarize_prob": 0.2,        # second global crop only, as DINOv2
    # Heads.
    "num_prototypes": 65536,
    "head_hidden_dim": 2048,
    "head_bottleneck_dim": 256,
    "head_layers": 3,
    # Loss weights and temperatures.
    "dino_weight": 1.0,
    "koleo_weight": 0.1,
    "ibot_weight": 1.0,
    "student_temp": 0.1,
    "teacher_temp": 0.07,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 30.0,
    # Teacher.
    "momentum": 0.992,
    "final_momentum": 1.0,
    "centering": "sinkhorn_knopp",  # or 'softmax'
    "sinkhorn_iterations": 3,
    "center_momentum": 0.9,         # softmax centring
    "freeze_last_layer_epochs": 1.0,
    # iBOT.
    "ibot_separate_head": False,
    "ibot_num_prototypes": 65536,   # separate head only
    "mask_ratio": (0.1, 0.5),
    "mask_probability": 0.5,
    "mask_attempts": 16,
    # Spectral masking (band-group backbones): fraction of the band groups
    # hidden in each student global crop; 0 = off.
    "spectral_mask_ratio": 0.0,
    # Evaluation.
    "embed_from": "teacher",        # or 'student'
    "vis_examples": 4,
}

CENTERINGS = ("sinkhorn_knopp", "softmax")

# Folded into the step's key for the spectral masks, so that the keys of the
# iBOT masks, dropout and local crops stay those of a run without them.
_SPECTRAL_MASK_SALT = 0x5BEC


def default_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`config.dino` with DINOv2's defaults and `overrides` applied."""
  return ml_collections.ConfigDict(
      objective_settings("dino", overrides, DEFAULTS))


def shrink_for_smoke_run(dino: ml_collections.ConfigDict) -> None:
  """`config.dino` for the configs' `runlocal` runs: 16 / 8 px crops (2 local),
  64 prototypes, a 32-wide head, teacher warmup over one epoch."""
  dino.global_size = 16
  dino.local_size = 8
  dino.num_local = 2
  dino.num_prototypes = 64
  dino.head_hidden_dim = 32
  dino.head_bottleneck_dim = 16
  dino.warmup_teacher_temp_epochs = 1.0
  dino.vis_examples = 2


def set_dinov2_optim(optim: ml_collections.ConfigDict) -> None:
  """Sets `config.optim` to DINOv2's recipe, except the lr.

  AdamW (0.9, 0.999) on a cosine schedule, weight decay 0.04 -> 0.4 on a
  cosine, gradient clipping at 3.0, layer-wise lr decay 0.9 and the patch
  embedding at 0.2 x the lr. The lr and warmup depend on the batch and the
  run's length; configs set those.
  """
  optim.name = "adamw"
  optim.b1, optim.b2 = 0.9, 0.999
  optim.schedule = "cosine"
  optim.weight_decay = 0.04
  optim.weight_decay_end = 0.4
  optim.grad_clip_norm = 3.0
  optim.layer_decay = 0.9
  optim.groups = (("^student/backbone/embedding/", 0.2),)


def set_small_batch_recipe(config: ml_collections.ConfigDict) -> None:
  """`small_batch=True` of the DINO configs: batch 64 with what
  benchmarks/ssl_study.py measured at that batch on a CPU (benchmarks/README.md).

  * teacher temperature 0.04 throughout (no warmup to 0.07): the only
    setting of the study that moved the teacher away from uniform (entropy
    0.88 of ln K after 80 steps against 0.96) without costing effective rank;
    its kNN macro-F1 was above each seed's random encoder in 3 of 3 seeds
    (+0.012 +- 0.006), less than the seed-to-seed spread;
  * LayerScale off: at 1e-5 (DINOv2's) a 150-step run ended with a uniform
    student.
  The configs' lr rule then gives 0.004 x sqrt(64 / 1024) = 1e-3.
  """
  config.input.batch_size = 64
  config.dino.teacher_temp = 0.04
  config.dino.warmup_teacher_temp = 0.04
  config.model.layerscale_init = None


def _settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  s = objective_settings("dino", config.get("dino", None), DEFAULTS)
  if s["centering"] not in CENTERINGS:
    raise ConfigValueError(f"config.dino.centering must be one of {CENTERINGS}, got "
                     f"{s['centering']!r}.")
  if s["embed_from"] not in ("teacher", "student"):
    raise ConfigValueError("config.dino.embed_from must be 'teacher' or 'student', "
                     f"got {s['embed_from']!r}.")
  return s


def crop_major(crops: jax.Array) -> jax.Array:
  """(B, V, H, W, C) -> (V * B, H, W, C): all first views, then all second..."""
  b, v = crops.shape[:2]
  return jnp.swapaxes(crops, 0, 1).reshape((v * b,) + crops.shape[2:])


def ema(teacher: Any, student: Any, momentum: jax.Array) -> Any:
  """teacher * m + student * (1 - m), leaf by leaf."""
  return jax.tree.map(lambda t, s: t * momentum + s * (1.0 - momentum),
                      teacher, student)


def freeze_last_layer(student_params: Mapping[str, Any], frozen: jax.Array
                      ) -> dict[str, Any]:
  """Student params whose heads' 'last_layer' gets no gradient while `frozen`."""
  out = dict(student_params)
  for head in ("dino_head", "ibot_head"):
    if head in out:
      h = dict(out[head])
      h["last_layer"] = jnp.where(frozen, jax.lax.stop_gradient(h["last_layer"]),
                                  h["last_layer"])
      out[head] = h
  return out


# ---------------------------------------------------------------------------
# The objective.
# ---------------------------------------------------------------------------


@OBJECTIVES.register("dino")
class DINO(Objective):
  """DINOv2 self-distillation; see the module docstring."""

  main_metric = "loss"
  default_evaluator = "dino"
  encoder_prefix = "student/backbone"

  def __init__(self, config: ml_collections.ConfigDict, info: DatasetInfo,
               run_length: tuple[int, int] | None = None):
    super().__init__(config, info, run_length)
    s = self.settings = _settings(config)
    self.backbone = token_backbone(config, info, "dino",
                                   "masks patch tokens").with_mask_token()
    self.patch_size = int(self.backbone.patch_size)
    for key in ("global_size", "local_size"):
      if int(s[key]) % self.patch_size:
        raise ConfigValueError(f"config.dino.{key}={s[key]} is not a multiple of the "
                         f"ViT's patch_size {self.patch_size}.")
    self.grid = (int(s["global_size"]) // self.patch_size,) * 2
    num_patches = self.grid[0] * self.grid[1]
    # Validates the ratios for this grid at build time.
    block_masking.mask_targets(jax.random.key(0), 2, num_patches,
                               s["mask_ratio"], s["mask_probability"])
    self.max_masked = block_masking.max_masked(num_patches, s["mask_ratio"][1])
    self.use_ibot = (float(s["ibot_weight"]) > 0 and self.max_masked > 0
                     and float(s["mask_probability"]) > 0)
    head = lambda k: DINOHead(
        num_prototypes=int(k), hidden_dim=int(s["head_hidden_dim"]),
        bottleneck_dim=int(s["head_bottleneck_dim"]),
        num_layers=int(s["head_layers"]),
        dtype=getattr(self.backbone, "dtype", jnp.float32))
    self.dino_head = head(s["num_prototypes"])
    self.separate_ibot_head = bool(s["ibot_separate_head"]) and self.use_ibot
    self.ibot_head = (head(s["ibot_num_prototypes"]) if self.separate_ibot_head
                      else self.dino_head)
    self._num_prefix = int(self.backbone.num_prefix_tokens)
    self.num_masked_groups = self._spectral_masking(
        float(s["spectral_mask_ratio"]))

    steps_per_epoch, total_steps = (
        run_length if run_length is not None else pipeline.run_length(
            build_dataset(config.data, with_stats=False), config))
    self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
    self.teacher_temp = schedules.linear_warmup(
        s["warmup_teacher_temp"], s["teacher_temp"],
        float(s["warmup_teacher_temp_epochs"]) * steps_per_epoch)
    self.momentum = schedules.cosine(s["momentum"], s["final_momentum"],
                                     total_steps)
    self.freeze_steps = int(round(float(s["freeze_last_layer_epochs"])
                                  * steps_per_epoch))
    self._vis_fn = None

  def _spectral_masking(self, ratio: float) -> int:
    """Band groups hidden per student global crop (0 = off), or an error."""
    if not 0.0 <= ratio < 1.0:
      raise ConfigValueError(f"config.dino.spectral_mask_ratio must be in "
                             f"[0, 1), got {ratio}.")
    if ratio == 0.0:
      return 0
    groups = getattr(self.backbone, "num_groups", None)
    if groups is None:
      raise ConfigValueError(
          f"config.dino.spectral_mask_ratio={ratio} hides band groups and "
          f"needs a backbone with band groups (config.model.name="
          f"'spectral_vit'); {type(self.backbone).__name__} has none. Set "
          "config.dino.spectral_mask_ratio=0.")
    count = masking.num_masked_groups(int(groups), ratio)
    if count < 1:
      raise ConfigValueError(
          f"config.dino.spectral_mask_ratio={ratio} hides no band group of "
          f"{groups} (one must stay visible); use a larger ratio or more "
          "groups (config.model.group_size / groups).")
    return count

  def spectral_masks(self, rng: jax.Array, num_crops: int) -> jax.Array | None:
    """(num_crops, G) bool groups hidden from the student for the step's key
    `rng` (None when spectral masking is off)."""
    if not self.num_masked_groups:
      return None
    return masking.random_group_mask(
        jax.random.fold_in(rng, _SPECTRAL_MASK_SALT), num_crops,
        int(self.backbone.num_groups), self.num_masked_groups)

  # ---------------------------------------------------------------- views
  def train_views(self) -> MultiCrop:
    s = self.settings
    common = dict(jitter_prob=float(s["jitter_prob"]),
                  brightness=float(s["brightness"]),
                  contrast=float(s["contrast"]),
                  band_scaling=float(s["band_scaling"]),
                  sigma_range=tuple(s["blur_sigma"]))
    return MultiCrop(
        global_size=int(s["global_size"]), local_size=int(s["local_size"]),
        num_local=int(s["num_local"]), global_scale=tuple(s["global_scale"]),
        local_scale=tuple(s["local_scale"]),
        augment=SpectralAugment.dinov2_global_1(**common),
        global_augment_2=SpectralAugment.dinov2_global_2(
            **common, solarize_prob=float(s["solarize_prob"])),
        local_augment=SpectralAugment.dinov2_local(**common))

  # -------------------------------------------------------------- forward
  def _heads(self, params: Mapping[str, Any]) -> tuple[Any, Any]:
    """(DINO head fn, iBOT head fn) bound to `params`."""
    dino = lambda x: self.dino_head.apply({"params": params["dino_head"]}, x)
    if not self.separate_ibot_head:
      return dino, dino
    return dino, lambda x: self.ibot_head.apply({"params": params["ibot_head"]},
                                                x)

  def _backbone(self, params, image: jax.Array, *, mask=None,
                group_mask: jax.Array | None = None,
                rng: jax.Array | None = None) -> dict[str, jax.Array]:
    rngs = {"dropout": rng} if rng is not None else {}
    # `group_mask` only when set: a plain ViT does not take it.
    extra = {} if group_mask is None else {"group_mask": group_mask}
    _, features = self.backbone.apply({"params": params}, image, rng is not None,
                                      mask=mask, rngs=rngs, **extra)
    return features

  def _masked_tokens(self, features: Mapping[str, jax.Array],
                     indices: jax.Array) -> jax.Array:
    """(S, M, D) patch tokens at `indices` (S, M) of each crop."""
    tokens = features["patch_tokens"]
    tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
    return jnp.take_along_axis(tokens, indices[..., None], axis=1)

  def _teacher_targets(self, logits: jax.Array, temp: jax.Array,
                       center: jax.Array | None,
                       weights: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array | None]:
    """Centred (R, K) targets, and the next centre (softmax centring)."""
    s = self.settings
    if s["centering"] == "sinkhorn_knopp":
      return centering.sinkhorn_knopp(logits, temp, int(s["sinkhorn_iterations"]),
                                      weights), center
    probs = centering.softmax_center(logits, center, temp)
    return probs, centering.update_center(center, logits,
                                          float(s["center_momentum"]), weights)

  # ------------------------------------------------------------ interface
  def init(self, rng: jax.Array, batch: Mapping[str, jax.Array]) -> Variables:
    crops = batch["global_crops"]
    image = crops[:, 0]
    bb_rng, dino_rng, ibot_rng, drop_rng = jax.random.split(rng, 4)
    variables = dict(self.backbone.init({"params": bb_rng, "dropout": drop_rng},
                                        image, False))
    backbone = variables.pop("params")
    if variables:
      raise ConfigValueError(f"The DINO backbone has non-parameter collections "
                       f"{sorted(variables)}; DINO needs a ViT without "
                       "BatchNorm (config.model.head_norm must be False).")
    dummy = jnp.zeros((1, int(self.backbone.width)), jnp.float32)
    student = {"backbone": backbone,
               "dino_head": self.dino_head.init(dino_rng, dummy)["params"]}
    if self.separate_ibot_head:
      student["ibot_head"] = self.ibot_head.init(ibot_rng, dummy)["params"]
    # The teacher starts as the student; `+ 0` makes separate buffers, as the
    # trainer donates the state.
    extra = {"teacher": jax.tree.map(lambda x: x + 0, student)}
    if self.settings["centering"] == "softmax":
      extra["dino_center"] = jnp.zeros((self.dino_head.num_prototypes,),
                                       jnp.float32)
      if self.use_ibot:
        extra["ibot_center"] = jnp.zeros((self.ibot_head.num_prototypes,),
                                         jnp.float32)
    return Variables(params={"student": student}, extra=extra)

  def loss(self, params, state: TrainState, batch: Mapping[str, jax.Array],
           rng: jax.Array) -> tuple[jax.Array, StepOutput]:
    s = self.settings
    globals_ = crop_major(batch["global_crops"])           # (2B, G, G, C)
    b = batch["global_crops"].shape[0]
    num_global = 2
    temp = self.teacher_temp(state.step)
    mask_rng, global_rng, local_rng = jax.random.split(rng, 3)
    student = freeze_last_layer(params["student"],
                                state.step < self.freeze_steps)
    # Nothing in `extra` (teacher, centres) is trained by gradient.
    extra = dict(jax.lax.stop_gradient(state.extra))
    teacher = extra["teacher"]
    t_dino, t_ibot = self._heads(teacher)
    s_dino, s_ibot = self._heads(student)
    metrics = {"teacher_temp": temp}

    # Masks for the student's global crops (none without iBOT).
    mask = None
    if self.use_ibot:
      mask = block_masking.ibot_masks(
          mask_rng, num_global * b, self.grid, s["mask_ratio"],
          s["mask_probability"], attempts=int(s["mask_attempts"]))
      indices, valid = block_masking.masked_patch_indices(mask, self.max_masked)
      metrics["masked_fraction"] = jnp.mean(mask.astype(jnp.float32))
    group_mask = self.spectral_masks(rng, num_global * b)
    if group_mask is not None:
      metrics["masked_group_fraction"] = jnp.mean(
          group_mask.astype(jnp.float32))

    # Teacher: global crops, unmasked.
    t_features = self._backbone(teacher["backbone"], globals_)
    t_cls_logits = t_dino(t_features["cls"])                 # (2B, K)
    t_cls, center = self._teacher_targets(t_cls_logits, temp,
                                          extra.get("dino_center"))
    if center is not None:
      extra["dino_center"] = center

    # Student: masked global crops (band groups too, with spectral masking)
    # and local crops.
    s_features = self._backbone(student["backbone"], globals_, mask=mask,
                                group_mask=group_mask, rng=global_rng)
    s_cls_logits = [s_dino(s_features["cls"]).reshape(num_global, b, -1)]
    if "local_crops" in batch:
      locals_ = crop_major(batch["local_crops"])
      l_features = self._backbone(student["backbone"], locals_, rng=local_rng)
      s_cls_logits.append(s_dino(l_features["cls"]).reshape(-1, b,
                                                             s_cls_logits[0].shape[-1]))
    dino = dino_cls_loss(jnp.concatenate(s_cls_logits, axis=0),
                         t_cls.reshape(num_global, b, -1),
                         float(s["student_temp"]))
    # Per global crop: a crop's nearest neighbour must not be its twin view.
    koleo = jnp.sum(jnp.stack([koleo_loss(x) for x in
                               s_features["cls"].reshape(num_global, b, -1)]))
    total = float(s["dino_weight"]) * dino + float(s["koleo_weight"]) * koleo
    metrics.update(dino_loss=dino, koleo_loss=koleo / num_global)

    if self.use_ibot:
      t_patch_logits = t_ibot(self._masked_tokens(t_features, indices))
      k = t_patch_logits.shape[-1]
      t_patch, center = self._teacher_targets(
          t_patch_logits.reshape(-1, k), temp, extra.get("ibot_center"),
          valid.reshape(-1))
      if center is not None:
        extra["ibot_center"] = center
      s_patch_logits = s_ibot(self._masked_tokens(s_features, indices))
      ibot = ibot_patch_loss(s_patch_logits, t_patch.reshape(t_patch_logits.shape),
                             valid, float(s["student_temp"]))
      total = total + float(s["ibot_weight"]) * ibot
      metrics["ibot_loss"] = ibot
    return total, StepOutput(metrics=metrics, model_state=state.model_state,
                             extra=extra)

  def after_init_from(self, params: Any, extra: Any) -> Any:
    # The teacher starts as the (now loaded) student, as at init.
    return {**extra, "teacher": jax.tree.map(lambda x: x + 0, params["student"])}

  def after_update(self, state: TrainState) -> Any:
    # `state.step` already counts the update just made; DINOv2 indexes its
    # momentum schedule by that update's 0-based index.
    momentum = self.momentum(state.step - 1)
    extra = dict(state.extra)
    extra["teacher"] = ema(state.extra["teacher"], state.params["student"],
                           momentum)
    return extra

  def eval_step(self, state: TrainState, batch) -> dict[str, jax.Array]:
    return self._eval_outputs(state, batch["image"])[0]

  def _eval_outputs(self, state: TrainState, image: jax.Array
                    ) -> tuple[dict[str, jax.Array], dict[str, dict[str, jax.Array]]]:
    """(per-example eval outputs, {'teacher'|'student': backbone features})."""
    s = self.settings
    teacher, student = state.extra["teacher"], state.params["student"]
    t_features = self._backbone(teacher["backbone"], image)
    s_features = self._backbone(student["backbone"], image)
    t_logits = self._heads(teacher)[0](t_features["cls"])
    s_logits = self._heads(student)[0](s_features["cls"])
    t_probs = jax.nn.softmax(t_logits / float(s["teacher_temp"]), axis=-1)
    s_log_probs = jax.nn.log_softmax(s_logits / float(s["student_temp"]), axis=-1)
    t_entropy = -jnp.sum(t_probs * jnp.log(jnp.maximum(t_probs, 1e-30)), axis=-1)
    s_entropy = -jnp.sum(jnp.exp(s_log_probs) * s_log_probs, axis=-1)
    loss = cross_entropy(t_probs, s_logits, float(s["student_temp"]))
    cosine = jnp.sum(l2_normalize(t_features["cls"].astype(jnp.float32), eps=1e-8)
                     * l2_normalize(s_features["cls"].astype(jnp.float32), eps=1e-8),
                     axis=-1)
    outputs = {"loss": loss, "cosine": cosine, "teacher_entropy": t_entropy,
               "student_entropy": s_entropy,
               # KL(teacher || student) = H(teacher, student) - H(teacher).
               "kl": loss - t_entropy,
               "prototype": jnp.argmax(t_logits, axis=-1).astype(jnp.int32)}
    return outputs, {"teacher": t_features, "student": s_features}

  def diagnostics(self, state: TrainState, image: jax.Array) -> dict[str, jax.Array]:
    outputs, features = self._eval_outputs(state, image)
    embedded = features[self.settings["embed_from"]]
    patch = embedded["patch_tokens"]
    # 1 = the teacher's distribution is uniform: it tells images apart no
    # better than chance (the other collapse, next to one prototype for all).
    uniformity = outputs["teacher_entropy"] / np.log(int(self.settings["num_prototypes"]))
    return {**outputs, "teacher_uniformity": uniformity,
            "cls": embedded["cls"].astype(jnp.float32),
            "patch": patch.reshape(patch.shape[0], -1, patch.shape[-1]
                                   ).astype(jnp.float32)}

  def embed(self, state: TrainState, image: jax.Array) -> jax.Array:
    if self.settings["embed_from"] == "teacher":
      params = state.extra["teacher"]["backbone"]
    else:
      params = state.params["student"]["backbone"]
    return self._backbone(params, image)["cls"].astype(jnp.float32)

  def backbones(self) -> dict[str, Any]:
    # The heads sit above the backbone for layer-wise decay.
    return {"student/backbone": self.backbone}

  # ----------------------------------------------------------- visualise
  def _attention_and_tokens(self, params, image: jax.Array
                            ) -> tuple[jax.Array, jax.Array]:
    _, features = self.backbone.with_attention(True).apply({"params": params},
                                                          image, False)
    # The last block's attention is the only one asked for.
    (attention,) = [v for k, v in features.items() if k.startswith("attention_")]
    return attention, features["patch_tokens"]

  def visualize(self, state: TrainState, batch: Mapping[str, Any], step: int,
                split: str = "val") -> dict[str, Any]:
    # Imported here: plotting pulls in matplotlib, which training never needs.
    from eo_jax.visualize import attention as attention_plot  # pylint: disable=g-import-not-at-top
    from eo_jax.visualize import pca as pca_plot  # pylint: disable=g-import-not-at-top
    n = min(int(self.settings["vis_examples"]), len(batch["image"]))
    image = np.asarray(batch["image"][:n], np.float32)
    if n <= 0 or image.shape[1] % self.patch_size or image.shape[2] % self.patch_size:
      return {}
    if self._vis_fn is None:
      self._vis_fn = jax.jit(self._attention_and_tokens)
    attention, tokens = jax.device_get(self._vis_fn(
        jax.device_get(state.extra["teacher"]["backbone"]), image))
    grid = (image.shape[1] // self.patch_size, image.shape[2] // self.patch_size)
    indices, shown = display_bands(self.info)
    return {
        png_name("attention", split): attention_plot.plot_attention(
            image[0], indices, np.asarray(attention[0]), grid, self._num_prefix,
            self.patch_size,
            title=(f"{self.info.name} {split}: teacher class-token attention, "
                   f"last block, step {step} (RGB = {shown})")),
        png_name("patch_pca", split): pca_plot.plot_patch_pca(
            image, indices, pca_plot.pca_rgb(np.asarray(tokens)),
            title=(f"{self.info.name} {split}: teacher patch-token PCA, "
                   f"step {step}")),
    }

