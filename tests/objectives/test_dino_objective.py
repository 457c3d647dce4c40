"""The 'dino' objective: state layout, gradients, EMA, schedules, errors.

Built from configs/dino_whu.py's runlocal variant (synthetic 32-band data,
a width-32 depth-2 ViT), so its compiled programs are shared with the
end-to-end tests through the compilation cache.
"""
import os
import pickle

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data.datasets import build_dataset
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import TrainState
from eo_jax.objectives.dino import DINOEvaluator, crop_major

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
  ev = DINOEvaluator()
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
