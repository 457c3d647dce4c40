"""The 'segmentation' objective's loss and eval outputs, recomputed in numpy
from the model's own logits (a real pipeline batch of the embedded sample,
perturbed parameters, every loss option written out here)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.data import stats
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import TrainState
import numpy_reference as ref

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "seg_eolearn.py")
IGNORE = 255


def _config(decoder, **loss):
  c = config_lib.load_config(f"{CONFIG}:runlocal=True,decoder={decoder},backbone=resnet",
                             lock=False)
  for key, value in loss.items():
    c.loss[key] = value
  return c


def _perturbed(tree, seed, scale):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape)
                                      for x, k in zip(leaves, keys)])


@functools.lru_cache(maxsize=None)
def _setup(decoder):
  config = _config(decoder)
  dataset = build_dataset(config.data)
  batch = next(iter(pipeline.train_loader(dataset, config.input, seed=2)))
  objective = OBJECTIVES.get("segmentation")(config, dataset.info)
  params, model_state = jax.jit(lambda r, b: (lambda v: (v.params, v.model_state))(
      objective.init(r, b)))(jax.random.key(0), {"image": batch["image"]})
  state = TrainState(step=jnp.asarray(3), params=_perturbed(params, 1, 0.1),
                     model_state=jax.tree.map(lambda x: jnp.abs(x) + 0.2, model_state),
                     opt_state=None, extra={})
  return dataset, {k: jnp.asarray(v) for k, v in batch.items()}, state


def _numpy_loss(logits, mask, *, weights=None, smoothing=0.0, gamma=0.0, dice=0.0):
  valid = mask != IGNORE
  safe = np.where(valid, mask, 0)
  per_pixel = ref.classification_loss(logits, safe, smoothing=smoothing, gamma=gamma,
                                      class_weights=weights)
  loss = (per_pixel * valid).sum() / max(valid.sum(), 1)
  if dice:
    probs = ref.softmax(logits)
    onehot = np.eye(logits.shape[-1])[safe] * valid[..., None]
    p = probs * valid[..., None]
    overlap = (p * onehot).sum((0, 1, 2))
    total = p.sum((0, 1, 2)) + onehot.sum((0, 1, 2))
    loss += dice * (1 - np.mean((2 * overlap + 1) / (total + 1)))
  return loss


@pytest.mark.parametrize("decoder,loss", [
    ("linear", dict(class_weighting="median", label_smoothing=0.1)),
    ("linear", dict(class_weighting="", focal_gamma=2.0, dice_weight=0.5)),
    ("deeplabv3plus", dict(class_weighting="", class_weights=(1.0, 2.0, 3.0, 4.0),
                           aux_weight=0.4)),
], ids=["median_weights_smoothing", "focal_dice", "aux_head_weights"])
def test_training_loss_equals_numpy_loss_of_the_models_logits(decoder, loss):
  dataset, batch, state = _setup(decoder)
  objective = OBJECTIVES.get("segmentation")(_config(decoder, **loss), dataset.info)
  value, out = jax.jit(objective.loss)(state.params, state, batch, jax.random.key(4))
  (logits, features), _ = jax.jit(lambda s, x: objective.model.apply(
      {"params": s.params, **s.model_state}, x, train=True,
      mutable=list(s.model_state), rngs={"dropout": jax.random.key(4)}))(state, batch["image"])
  mask = np.asarray(batch["mask"])
  assert (mask == IGNORE).any() and (mask != IGNORE).any()
  if loss.get("class_weighting"):
    counts = stats.class_pixel_counts(dataset, "train")
    # Median-frequency balancing, written out: median(freq) / freq.
    freq = counts / counts.sum()
    weights = np.median(freq[counts > 0]) / freq
  else:
    weights = np.asarray(loss["class_weights"]) if "class_weights" in loss else None
  kw = dict(weights=weights, smoothing=loss.get("label_smoothing", 0.0),
            gamma=loss.get("focal_gamma", 0.0), dice=loss.get("dice_weight", 0.0))
  expected = _numpy_loss(np.asarray(logits, np.float64), mask, **kw)
  if "aux_logits" in features:
    expected += 0.4 * _numpy_loss(np.asarray(features["aux_logits"], np.float64), mask, **kw)
  np.testing.assert_allclose(float(value), expected, rtol=2e-5)


def test_eval_step_is_integer_predictions_and_plain_ce_per_example():
  dataset, batch, state = _setup("linear")
  objective = OBJECTIVES.get("segmentation")(
      _config("linear", label_smoothing=0.2, class_weighting="median"), dataset.info)
  out = jax.jit(objective.eval_step)(state, batch)
  logits, _ = jax.jit(lambda s, x: objective.model.apply(
      {"params": s.params, **s.model_state}, x))(state, batch["image"])
  logits = np.asarray(logits, np.float64)
  mask = np.asarray(batch["mask"])
  assert out["pred"].dtype == jnp.int32 and out["pred"].shape == mask.shape
  np.testing.assert_array_equal(out["pred"], logits.argmax(-1))
  for i in range(len(mask)):
    valid = mask[i] != IGNORE
    ce = -ref.log_softmax(logits[i])[valid, mask[i][valid]]
    np.testing.assert_allclose(out["loss"][i], ce.mean() if valid.any() else 0.0,
                               rtol=1e-5, atol=1e-6)
