"""The 'supervised' objective's loss and eval outputs, recomputed in numpy.

A real training batch of the embedded Sentinel-2 sample (through the
training pipeline, augmentations on), the quickstart's small ResNet at a
perturbed (non-initial) point with non-trivial BatchNorm statistics, and
the loss options written out here: the objective's loss must equal the
numpy loss of the model's own logits to float32 rounding, so a weight,
smoothing or focal setting that is dropped or misrouted fails.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import config as config_lib
from eo_jax.data import pipeline
from eo_jax.data.datasets import build_dataset
from eo_jax.objectives import OBJECTIVES
from eo_jax.objectives.base import TrainState
import numpy_reference as ref

WEIGHTS = (1.0, 2.8, 5.4, 8.9)
QUICKSTART = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "quickstart.py")


def _config(**loss):
  c = config_lib.load_config(f"{QUICKSTART}:runlocal=True", lock=False)
  for key, value in loss.items():
    c.loss[key] = value
  return c


@pytest.fixture(scope="module")
def setup():
  """(objective factory, real batch, perturbed state), shared by the tests."""
  config = _config()
  dataset = build_dataset(config.data)
  loader = pipeline.train_loader(dataset, config.input, seed=3)
  batch = {k: jnp.asarray(v) for k, v in next(iter(loader)).items()}
  objective = OBJECTIVES.get("supervised")(config, dataset.info)
  params, model_state = jax.jit(lambda r, b: (lambda v: (v.params, v.model_state))(
      objective.init(r, b)))(jax.random.key(0), batch)
  # Away from the initialisation (whose head is zero): every parameter and
  # running statistic moved by a random amount.
  noise = lambda tree, seed, scale: jax.tree.map(
      lambda x, k: x + scale * jax.random.normal(k, x.shape),
      tree, _keys(tree, seed))
  params = noise(params, 1, 0.2)
  model_state = jax.tree.map(lambda x: jnp.abs(x) + 0.3, model_state)
  state = TrainState(step=jnp.asarray(17, jnp.int32), params=params,
                     model_state=model_state, opt_state=None, extra={})
  make = lambda **loss: OBJECTIVES.get("supervised")(_config(**loss), dataset.info)
  return make, batch, state


def _keys(tree, seed):
  leaves, treedef = jax.tree.flatten(tree)
  return jax.tree.unflatten(treedef, list(jax.random.split(jax.random.key(seed),
                                                           len(leaves))))


def _train_logits(objective, state, image):
  """The model's own training-mode logits and updated BatchNorm statistics."""
  (logits, _), new_state = objective.model.apply(
      {"params": state.params, **state.model_state}, image, train=True,
      mutable=list(state.model_state))
  return logits, new_state


@pytest.mark.parametrize("loss", [
    dict(label_smoothing=0.1, class_weights=WEIGHTS),
    dict(focal_gamma=2.0, label_smoothing=0.05, class_weights=WEIGHTS),
    dict(focal_gamma=1.5, class_weights=()),
    dict(class_weights=()),
], ids=["ce_smooth_weights", "focal_smooth_weights", "focal", "plain_ce"])
def test_training_loss_equals_numpy_loss_of_the_models_logits(setup, loss):
  make, batch, state = setup
  objective = make(**loss)
  value, out = jax.jit(objective.loss)(state.params, state, batch,
                                       jax.random.key(5))
  logits, new_state = jax.jit(functools.partial(_train_logits, objective))(
      state, batch["image"])
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(batch["label"])
  assert len(np.unique(labels)) >= 2  # the weights must be able to matter
  expected = ref.classification_loss(
      logits, labels, smoothing=loss.get("label_smoothing", 0.0),
      gamma=loss.get("focal_gamma", 0.0),
      class_weights=loss["class_weights"] or None).mean()
  np.testing.assert_allclose(float(value), expected, rtol=2e-6)
  np.testing.assert_allclose(float(out.metrics["accuracy"]),
                             np.mean(logits.argmax(-1) == labels))
  # The new BatchNorm statistics are the training pass's, not the old ones.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               out.model_state, new_state)
  assert not np.allclose(jax.tree.leaves(out.model_state)[0],
                         jax.tree.leaves(state.model_state)[0])


def test_eval_step_is_plain_cross_entropy_of_inference_logits(setup):
  make, batch, state = setup
  # Training devices (smoothing, weights, focal) must not leak into the
  # validation loss, which stays comparable across configs.
  objective = make(label_smoothing=0.1, focal_gamma=2.0, class_weights=WEIGHTS)
  out = jax.jit(objective.eval_step)(state, batch)
  logits, _ = jax.jit(objective.model.apply)(
      {"params": state.params, **state.model_state}, batch["image"])
  logits = np.asarray(logits, np.float64)
  np.testing.assert_allclose(out["logits"], logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["label"], batch["label"])
  np.testing.assert_allclose(
      out["loss"], ref.classification_loss(logits, np.asarray(batch["label"])),
      rtol=2e-6, atol=1e-6)  # float32 log-softmax of confident logits: ~1e-7 abs
  # Inference uses the running statistics: training-mode logits differ.
  train_logits, _ = jax.jit(functools.partial(_train_logits, objective))(
      state, batch["image"])
  assert not np.allclose(train_logits, logits, atol=1e-3)
