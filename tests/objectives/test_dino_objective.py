"""The 'dino' objective: state layout, gradients, EMA, schedules, errors.

Built from configs/dino_whu.py's runlocal variant (synthetic 32-band data,
a width-32 depth-2 ViT), so its compiled programs are shared with the
end-to-end tests through the compilation cache.
"""
import functools
import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data import block_masking
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives import dino as dino_lib
from eo_jax.objectives.base import TrainState
from eo_jax.evaluate.dino import DINOMetrics
from eo_jax.objectives.dino import crop_major
import numpy_reference as ref

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "dino_whu.py")


def dino_config(arg="runlocal=True", **dino_overrides):
  config = config_lib.load_config(f"{CONFIG}:{arg}", lock=False)
  for key, value in dino_overrides.items():
    config.dino[key] = value
  return config


def _objective(config):
  return OBJECTIVES.get("dino")(config, build_dataset(config.data).info)


def _batch(objective, batch_size=8, seed=0):
  s = objective.settings
  rng = np.random.default_rng(seed)
  c = objective.info.num_bands
  g, l, n = s["global_size"], s["local_size"], s["num_local"]
  return {"global_crops": jnp.asarray(rng.normal(size=(batch_size, 2, g, g, c)),
                                      jnp.float32),
          "local_crops": jnp.asarray(rng.normal(size=(batch_size, n, l, l, c)),
                                     jnp.float32)}


def _state(objective, batch, step=0):
  v = objective.init(jax.random.key(0), batch)
  return TrainState(step=jnp.asarray(step, jnp.int32), params=v.params,
                    model_state=v.model_state, opt_state=None, extra=v.extra)


@pytest.fixture(scope="module")
def softmax_objective():
  # Softmax centring and a separate iBOT head: the state-carrying variant.
  return _objective(dino_config(centering="softmax", ibot_separate_head=True))


def test_teacher_is_extra_state_and_gets_no_gradient(softmax_objective):
  obj = softmax_objective
  batch = _batch(obj)
  state = _state(obj, batch)
  assert set(state.params) == {"student"}
  assert set(state.params["student"]) == {"backbone", "dino_head", "ibot_head"}
  assert set(state.extra) == {"teacher", "dino_center", "ibot_center"}
  # The teacher starts as a copy of the student.
  jax.tree.map(np.testing.assert_array_equal, state.extra["teacher"],
               state.params["student"])

  def loss_of(params, extra, step):
    return obj.loss(params, state.replace(extra=extra, step=step), batch,
                    jax.random.key(1))

  grad_fn = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True))
  assert obj.freeze_steps == 4  # 1 epoch of 32 examples in batches of 8
  (loss, out), (g_params, g_extra) = grad_fn(state.params, state.extra, 0)
  assert np.isfinite(loss)
  for leaf in jax.tree.leaves(g_extra):
    np.testing.assert_array_equal(leaf, 0.0)
  student = g_params["student"]
  assert float(jnp.abs(student["backbone"]["block_1"]["mlp"]["fc1"]["kernel"]).max()) > 0
  # First epoch: the prototypes (last layers) are frozen, the rest is not.
  for head in ("dino_head", "ibot_head"):
    np.testing.assert_array_equal(student[head]["last_layer"], 0.0)
    assert float(jnp.abs(student[head]["mlp_0"]["kernel"]).max()) > 0
  (_, _), (g_params, _) = grad_fn(state.params, state.extra, obj.freeze_steps)
  for head in ("dino_head", "ibot_head"):
    assert float(jnp.abs(g_params["student"][head]["last_layer"]).max()) > 0

  # The softmax centre moved to 0.1 x the batch mean of the teacher logits.
  globals_ = crop_major(batch["global_crops"])
  _, features = obj.backbone.apply(
      {"params": state.extra["teacher"]["backbone"]}, globals_, False)
  logits = obj.dino_head.apply({"params": state.extra["teacher"]["dino_head"]},
                               features["cls"])
  np.testing.assert_allclose(out.extra["dino_center"],
                             0.1 * np.asarray(logits).mean(0), rtol=1e-4,
                             atol=1e-7)
  assert float(jnp.abs(out.extra["ibot_center"]).max()) > 0
  assert set(out.metrics) >= {"dino_loss", "ibot_loss", "koleo_loss",
                              "teacher_temp", "masked_fraction"}
  np.testing.assert_allclose(out.metrics["teacher_temp"], 0.04)


def test_after_update_is_an_ema_with_cosine_momentum(softmax_objective):
  obj = softmax_objective
  state = _state(obj, _batch(obj))
  assert obj.total_steps == 6
  ones = jax.tree.map(jnp.ones_like, state.params)
  zeros = jax.tree.map(jnp.zeros_like, state.extra["teacher"])
  for step in (1, 4, 6):  # after the 1st, 4th and last update
    s = state.replace(step=jnp.asarray(step), params=ones,
                      extra=dict(state.extra, teacher=zeros))
    new = obj.after_update(s)
    m = 1.0 + 0.5 * (0.992 - 1.0) * (1 + np.cos(np.pi * (step - 1) / 6))
    for leaf in jax.tree.leaves(new["teacher"]):
      # float32 m: 1 - m keeps ~4 significant digits.
      np.testing.assert_allclose(leaf, 1.0 - m, rtol=1e-4)
    np.testing.assert_array_equal(new["dino_center"], state.extra["dino_center"])


def test_layer_ids_follow_the_backbone_and_put_heads_on_top(softmax_objective):
  obj = softmax_objective
  depth = obj.backbone.depth
  assert obj.layer_id("student/backbone/embedding/kernel") == 0
  assert obj.layer_id("student/backbone/mask_token") == 0
  assert obj.layer_id("student/backbone/block_1/attn/query/kernel") == 2
  assert obj.layer_id("student/backbone/encoder_norm/scale") == depth + 1
  assert obj.layer_id("student/dino_head/mlp_0/kernel") == depth + 1
  assert obj.layer_id("student/ibot_head/last_layer") == depth + 1


def test_train_views_make_the_configured_crops(softmax_objective):
  views_fn = pickle.loads(pickle.dumps(softmax_objective.train_views()))
  image = np.random.default_rng(0).normal(size=(16, 16, 32)).astype(np.float32)
  views = views_fn(image, np.random.default_rng(1))
  assert views["global_crops"].shape == (2, 16, 16, 32)
  assert views["local_crops"].shape == (2, 8, 8, 32)


def test_evaluator_counts_prototypes_in_use():
  ev = DINOMetrics()
  ones = np.ones(4)
  ev.update({"loss": ones, "cosine": ones, "teacher_entropy": 2 * ones,
             "prototype": np.array([3, 3, 3, 3])})
  ev.update({"loss": 3 * ones, "cosine": ones, "teacher_entropy": ones,
             "prototype": np.array([3, 3, 5, 5])})
  r = ev.result()
  assert r["loss"] == 2.0 and r["teacher_entropy"] == 1.5
  assert r["prototypes_used"] == 2
  p = np.array([6, 2]) / 8
  np.testing.assert_allclose(r["prototype_perplexity"],
                             np.exp(-(p * np.log(p)).sum()))


def test_config_mistakes_fail_with_the_key_to_fix():
  config = dino_config()
  config.model = ml_collections.ConfigDict(dict(
      name="resnet", stage_sizes=(1,), block="basic", width=8))
  with pytest.raises(ValueError, match="config.model.name='vit'"):
    _objective(config)
  with pytest.raises(ValueError, match="local_size=6 is not a multiple"):
    _objective(dino_config(local_size=6))
  with pytest.raises(ValueError, match="centering"):
    _objective(dino_config(centering="mean"))
  with pytest.raises(KeyError, match=r"Unknown config.dino keys.*prototypes"):
    _objective(dino_config(prototypes=3))


def test_run_length_from_the_trainer_drives_the_schedules():
  config = dino_config(freeze_last_layer_epochs=2.0,
                       warmup_teacher_temp_epochs=3.0)
  info = build_dataset(config.data).info
  counted = OBJECTIVES.get("dino")(config, info)  # counts the dataset itself
  given = OBJECTIVES.get("dino")(
      config, info, run_length=(counted.steps_per_epoch, counted.total_steps))
  assert (given.steps_per_epoch, given.total_steps) == (
      counted.steps_per_epoch, counted.total_steps)
  other = OBJECTIVES.get("dino")(config, info, run_length=(10, 100))
  assert (other.steps_per_epoch, other.total_steps) == (10, 100)
  assert other.freeze_steps == 20                    # 2 epochs x 10 steps
  s = other.settings
  # Teacher temperature reaches its final value after 3 epochs = 30 steps.
  assert float(other.teacher_temp(0)) == pytest.approx(s["warmup_teacher_temp"])
  assert float(other.teacher_temp(30)) == pytest.approx(s["teacher_temp"])
  assert float(other.teacher_temp(15)) == pytest.approx(
      (s["warmup_teacher_temp"] + s["teacher_temp"]) / 2)


# ------------------------------------------ the whole loss, in numpy
#
# A real batch of multi-crop views from the training pipeline; the student
# and the teacher at different points (as mid-way through the EMA); step 12
# of a run of 100 steps of 10 per epoch: the teacher temperature is mid-way
# through its 3-epoch warm-up, 0.04 + (0.07 - 0.04) * 12 / 30 = 0.052, and
# the prototypes were unfrozen after 1 epoch. Drop-path 0, so the student's
# training pass is deterministic and can be recomputed view by view.

STEP, TEMP = 12, 0.052


def _perturbed(tree, seed, scale):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _wired(centering, num_local=2, model="vit"):
  config = dino_config(f"runlocal=True,model={model}", centering=centering,
                       warmup_teacher_temp_epochs=3.0,
                       num_local=num_local,
                       freeze_last_layer_epochs=1.0,
                       ibot_separate_head=centering == "softmax",
                       ibot_num_prototypes=48)
  config.model.drop_path = 0.0
  dataset = build_dataset(config.data)
  obj = OBJECTIVES.get("dino")(config, dataset.info, run_length=(10, 100))
  loader = pipeline.train_loader(dataset, config.input, seed=4,
                                 views_fn=obj.train_views())
  batch = {k: jnp.asarray(v) for k, v in next(iter(loader)).items()}
  images = next(iter(pipeline.eval_loader(dataset, "val", config.input)))["image"]
  v = jax.jit(lambda r, b: (lambda x: (x.params, x.extra))(obj.init(r, b)))(
      jax.random.key(0), batch)
  params = _perturbed(v[0], 1, 0.05)
  extra = dict(v[1], teacher=_perturbed(v[1]["teacher"], 2, 0.05))
  for name in ("dino_center", "ibot_center"):
    if name in extra:
      extra[name] = 0.1 * jax.random.normal(jax.random.key(3), extra[name].shape)
  state = TrainState(step=jnp.asarray(STEP, jnp.int32), params=params,
                     model_state={}, opt_state=None, extra=extra)
  return obj, batch, jnp.asarray(images), state


def _apply(obj, params, image, mask=None, group_mask=None):
  """(class-token logits, patch-token logits of the iBOT head, features)."""
  hide = {} if group_mask is None else {"group_mask": group_mask}
  _, f = obj.backbone.apply({"params": params["backbone"]}, image, mask=mask,
                            **hide)
  tokens = f["patch_tokens"].reshape(image.shape[0], -1, f["patch_tokens"].shape[-1])
  if "ibot_head" in params:
    patch_logits = obj.ibot_head.apply({"params": params["ibot_head"]}, tokens)
  else:
    patch_logits = obj.dino_head.apply({"params": params["dino_head"]}, tokens)
  return (obj.dino_head.apply({"params": params["dino_head"]}, f["cls"]),
          patch_logits, f["cls"])


def _dino_by_hand(obj, batch, state, mask_key, group_masks=None,
                  student_crops=None):
  """DINOv2's loss and metrics, crop by crop, in numpy.

  `group_masks` (2B, G): band groups hidden from the student's global crops
  (crop-major, as the iBOT masks); `student_crops` replaces the global crops
  the student sees (the teacher still sees the batch's).
  """
  apply = jax.jit(functools.partial(_apply, obj))
  teacher, student = state.extra["teacher"], state.params["student"]
  crops = np.asarray(batch["global_crops"])
  s_crops = crops if student_crops is None else np.asarray(student_crops)
  b = crops.shape[0]
  groups = lambda v: (None if group_masks is None
                      else jnp.asarray(group_masks[v * b:(v + 1) * b]))
  # The iBOT masks of the 2B global crops, all first crops then all second.
  masks = np.asarray(block_masking.ibot_masks(mask_key, 2 * b, (4, 4), (0.1, 0.5),
                                              0.5, attempts=16))
  t_cls, t_patch, s_cls, s_patch, s_tokens = [], [], [], [], []
  for v in range(2):
    out = [np.asarray(x, np.float64) for x in apply(teacher, crops[:, v])]
    t_cls.append(out[0])
    t_patch.append(out[1])
    out = [np.asarray(x, np.float64) for x in apply(
        student, s_crops[:, v], jnp.asarray(masks[v * b:(v + 1) * b]),
        groups(v))]
    s_cls.append(out[0])
    s_patch.append(out[1])
    s_tokens.append(out[2])
  local = [np.asarray(apply(student, np.asarray(batch["local_crops"])[:, j])[0],
                      np.float64) for j in range(obj.settings["num_local"])]

  rows = lambda v: masks[v * b:(v + 1) * b]
  t_masked = np.concatenate([t_patch[v][rows(v)] for v in range(2)])
  if obj.settings["centering"] == "sinkhorn_knopp":
    targets = ref.sinkhorn_knopp(np.concatenate(t_cls), TEMP, 3)
    patch_targets = ref.sinkhorn_knopp(t_masked, TEMP, 3)
    centers = {}
  else:
    dino_c = np.asarray(state.extra["dino_center"], np.float64)
    ibot_c = np.asarray(state.extra["ibot_center"], np.float64)
    targets = ref.softmax((np.concatenate(t_cls) - dino_c) / TEMP)
    patch_targets = ref.softmax((t_masked - ibot_c) / TEMP)
    centers = {"dino_center": 0.9 * dino_c + 0.1 * np.concatenate(t_cls).mean(0),
               "ibot_center": 0.9 * ibot_c + 0.1 * t_masked.mean(0)}
  dino = ref.dino_loss(s_cls + local, [targets[:b], targets[b:]], 0.1)
  koleo = ref.koleo(s_tokens[0]) + ref.koleo(s_tokens[1])
  # Each image's masked patches, in crop-major order like the masks.
  counts = masks.sum(1)
  splits = np.cumsum(counts)[:-1]
  s_masked = np.split(np.concatenate([s_patch[v][rows(v)] for v in range(2)]), splits)
  ibot = ref.ibot_loss(s_masked, np.split(patch_targets, splits), masks, 0.1)
  assert counts.min() == 0 and counts.max() > 0  # half the crops are masked
  metrics = {"dino_loss": dino, "koleo_loss": koleo / 2, "ibot_loss": ibot,
             "teacher_temp": TEMP, "masked_fraction": masks.mean()}
  if group_masks is not None:
    metrics["masked_group_fraction"] = np.mean(group_masks)
  return 1.0 * dino + 0.1 * koleo + 1.0 * ibot, metrics, centers


@pytest.mark.parametrize("centering,num_local", [
    ("sinkhorn_knopp", 2), ("softmax", 2), ("sinkhorn_knopp", 0)])
def test_training_loss_equals_dinov2_in_numpy(centering, num_local):
  obj, batch, _, state = _wired(centering, num_local)
  assert ("local_crops" in batch) == (num_local > 0)
  rng = jax.random.key(7)
  loss, out = jax.jit(obj.loss)(state.params, state, batch, rng)
  mask_key = jax.random.split(rng, 3)[0]   # the objective's (mask, ...) split
  expected, metrics, centers = _dino_by_hand(obj, batch, state, mask_key)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  for name, value in metrics.items():
    np.testing.assert_allclose(float(out.metrics[name]), value, rtol=2e-5,
                               err_msg=name)
  for name, value in centers.items():
    np.testing.assert_allclose(out.extra[name], value, rtol=1e-4, atol=1e-6,
                               err_msg=name)
  # The teacher is carried over untouched (its EMA comes after the update).
  jax.tree.map(np.testing.assert_array_equal, out.extra["teacher"],
               state.extra["teacher"])


def test_eval_step_in_numpy():
  obj, _, images, state = _wired("sinkhorn_knopp")
  out = jax.jit(obj.eval_step)(state, {"image": images})
  apply = jax.jit(functools.partial(_apply, obj))
  t_logits, _, t_cls = [np.asarray(x, np.float64)
                        for x in apply(state.extra["teacher"], images)]
  s_logits, _, s_cls = [np.asarray(x, np.float64)
                        for x in apply(state.params["student"], images)]
  # The teacher's plain softmax at the FINAL temperature (0.07): a
  # per-example value must not depend on its batch or on the step.
  t_probs = ref.softmax(t_logits / 0.07)
  np.testing.assert_allclose(out["loss"], ref.cross_entropy(t_probs, s_logits, 0.1),
                             rtol=1e-5)
  cosine = (t_cls * s_cls).sum(-1) / (np.linalg.norm(t_cls, axis=-1)
                                      * np.linalg.norm(s_cls, axis=-1))
  np.testing.assert_allclose(out["cosine"], cosine, rtol=1e-5)
  assert cosine.max() < 0.9999  # teacher and student really differ here
  np.testing.assert_allclose(out["teacher_entropy"],
                             -(t_probs * np.log(t_probs)).sum(-1), rtol=1e-4)
  np.testing.assert_array_equal(out["prototype"], t_logits.argmax(-1))
  s_probs = ref.softmax(s_logits / 0.1)
  np.testing.assert_allclose(out["student_entropy"],
                             -(s_probs * np.log(s_probs)).sum(-1), rtol=1e-4)
  np.testing.assert_allclose(
      out["kl"], (t_probs * (np.log(t_probs) - np.log(s_probs))).sum(-1),
      rtol=1e-3, atol=1e-5)
  # The collapse evaluator's inputs: the same outputs plus the embedded
  # (teacher) network's class token and its patch tokens, flattened.
  diag = jax.jit(obj.diagnostics)(state, images)
  for key, value in out.items():
    np.testing.assert_array_equal(diag[key], value, err_msg=key)
  np.testing.assert_allclose(diag["teacher_uniformity"],
                             out["teacher_entropy"] / np.log(t_logits.shape[-1]),
                             rtol=1e-6)
  np.testing.assert_allclose(diag["cls"], t_cls, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(diag["cls"], obj.embed(state, images), rtol=1e-5,
                             atol=1e-6)
  assert diag["patch"].shape[:2] == (len(images), obj.backbone.token_grid(
      *images.shape[1:3])[0] * obj.backbone.token_grid(*images.shape[1:3])[1])


def test_after_update_mid_schedule_in_numpy():
  obj, _, _, state = _wired("sinkhorn_knopp")
  step = 40  # the 40th update has index 39 of 100
  new = jax.jit(obj.after_update)(state.replace(step=jnp.asarray(step)))
  m = ref.cosine_schedule(0.992, 1.0, 100, step - 1)
  expected = jax.tree.map(lambda t, s: m * np.asarray(t, np.float64)
                          + (1 - m) * np.asarray(s, np.float64),
                          state.extra["teacher"], state.params["student"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new["teacher"], expected)


# ------------------------------------- the spatial-spectral ViT backbone
#
# configs/dino_whu.py:model=spectral_vit: the 32 bands in 8 groups of 4, a
# factorized spatial-spectral ViT; iBOT's block masks on its 4 x 4 spatial
# grid, and 2 of the 8 groups hidden from every student global crop.


def _group_masks_by_hand(obj, rng, num_crops):
  """The step's spectral masks: uniform noise per (crop, group) from the
  step key folded with the objective's salt; the 2 lowest are hidden."""
  noise = np.asarray(jax.random.uniform(
      jax.random.fold_in(rng, dino_lib._SPECTRAL_MASK_SALT),  # pylint: disable=protected-access
      (num_crops, 8)))
  rank = np.argsort(np.argsort(noise, axis=1), axis=1)
  return rank < 2


def test_spectral_vit_variant_masks_groups_of_the_student_only():
  obj, batch, _, state = _wired("sinkhorn_knopp", 2, "spectral_vit")
  assert obj.backbone.num_groups == 8 and obj.num_masked_groups == 2
  rng = jax.random.key(7)
  loss, out = jax.jit(obj.loss)(state.params, state, batch, rng)
  b = batch["global_crops"].shape[0]
  groups = _group_masks_by_hand(obj, rng, 2 * b)
  np.testing.assert_array_equal(obj.spectral_masks(rng, 2 * b), groups)
  mask_key = jax.random.split(rng, 3)[0]
  expected, metrics, _ = _dino_by_hand(obj, batch, state, mask_key, groups)
  np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
  for name, value in metrics.items():
    np.testing.assert_allclose(float(out.metrics[name]), value, rtol=2e-5,
                               err_msg=name)
  assert float(out.metrics["masked_group_fraction"]) == 0.25

  # The hidden groups' bands do not reach the student: new values there,
  # in the student's crops only, give the same loss, ...
  crops = np.array(batch["global_crops"])
  channels = [np.concatenate([obj.backbone.group_channels[g]
                              for g in np.flatnonzero(row)])
              for row in groups]
  noisy = crops.copy()
  rng_np = np.random.default_rng(5)
  for v in range(2):
    for i in range(b):
      noisy[i, v][..., channels[v * b + i]] = rng_np.normal(
          size=noisy[i, v][..., channels[v * b + i]].shape)
  same, _, _ = _dino_by_hand(obj, batch, state, mask_key, groups,
                             student_crops=noisy)
  np.testing.assert_allclose(same, expected, rtol=2e-5)
  # ... while a visible group's bands do count,
  shown = crops.copy()
  visible = [g for g in range(8) if not groups[0, g]][0]
  shown[0, 0][..., list(obj.backbone.group_channels[visible])] += 1.0
  moved, _, _ = _dino_by_hand(obj, batch, state, mask_key, groups,
                              student_crops=shown)
  assert abs(moved - expected) > 1e-4 * abs(expected)
  # and in the objective, new values in the hidden bands of the batch leave
  # the student's class tokens (KoLeo reads only them) as they were but
  # move the loss: the teacher sees every group.
  loss_noisy, out_noisy = jax.jit(obj.loss)(
      state.params, state, dict(batch, global_crops=jnp.asarray(noisy)), rng)
  np.testing.assert_allclose(out_noisy.metrics["koleo_loss"],
                             out.metrics["koleo_loss"], rtol=1e-6)
  assert abs(float(loss_noisy) - float(loss)) > 1e-5 * abs(float(loss))


def test_spectral_masking_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="config.model.name='spectral_vit'"):
    _objective(dino_config(spectral_mask_ratio=0.25))
  spectral = "runlocal=True,model=spectral_vit"
  with pytest.raises(ValueError, match="hides no band group of 8"):
    _objective(dino_config(spectral, spectral_mask_ratio=0.05))
  with pytest.raises(ValueError, match=r"must be in \[0, 1\)"):
    _objective(dino_config(spectral, spectral_mask_ratio=1.0))
  # Off (the default) on either backbone.
  assert _objective(dino_config(spectral, spectral_mask_ratio=0.0)
                    ).num_masked_groups == 0
