"""The kNN and linear-probe evaluators score the objective's features of the
probe data's train and eval splits with their own settings."""
import ml_collections
import numpy as np

from eo_jax import sharding
from eo_jax.data.datasets import build_dataset
from eo_jax.evaluate import EvalContext, build_evaluators
from eo_jax.evaluate.probes import knn_probe_metrics, linear_probe_metrics
from eo_jax.evaluate.runner import EvalRunner

DATA = dict(name="synthetic", num_bands=3, num_classes=3, image_size=4,
            num_train=40, num_val=30, num_test=4, noise=3.0)


class _BandMeans:
  """An objective whose features are each image's band means times `state`."""
  has_embed = True

  def __init__(self, info):
    self.info = info
    self.default_evaluator = "classification"
    self._fn = lambda state, batch: {"features": batch["image"].mean(axis=(1, 2)) * state}

  def eval_fn(self, name):
    assert name == "embed"
    return self._fn


def _features(dataset, split):
  # The pipeline's normalisation, written out.
  mean = np.array([b.mean for b in dataset.info.bands])
  std = np.array([b.std for b in dataset.info.bands])
  source = dataset.split(split)
  x = np.stack([(source[i]["image"] - mean) / std for i in range(len(source))])
  return x.mean(axis=(1, 2)), np.array([source[i]["label"] for i in range(len(source))])


def test_probe_evaluators_use_their_data_splits_and_settings():
  dataset = build_dataset(ml_collections.ConfigDict(DATA))
  context = EvalContext(
      objective=_BandMeans(dataset.info), dataset=dataset,
      runner=EvalRunner(sharding.make_mesh(), ml_collections.ConfigDict(dict(
          batch_size=8, eval_batch_size=0, image_size=0, prefetch=2))))
  common = dict(data=DATA, split="val", train_split="train", prefix="probe",
                batch_size=8)
  evals = ml_collections.ConfigDict(dict(
      knn=dict(type="knn", k=(1, 7), temperature=0.01, **common),
      linear=dict(type="linear_probe", epochs=30, **common)))
  knn, linear = build_evaluators(evals, context)
  train, val = _features(dataset, "train"), _features(dataset, "val")
  got = knn.run(2.0, step=1).metrics
  scaled = lambda xy: (2.0 * xy[0], xy[1])
  expected = knn_probe_metrics(scaled(train), scaled(val), num_classes=3, k=(1, 7),
                               temperature=0.01)
  assert set(got) == {"knn1/accuracy", "knn1/macro_f1", "knn7/accuracy", "knn7/macro_f1"}
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
  # The temperature matters here: votes at another temperature score otherwise.
  other = knn_probe_metrics(scaled(train), scaled(val), num_classes=3, k=(7,),
                            temperature=1.0)
  assert other["knn7/accuracy"] != expected["knn7/accuracy"]
  got = linear.run(2.0, step=1).metrics
  expected = linear_probe_metrics(scaled(train), scaled(val), num_classes=3, epochs=30)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-6, err_msg=key)
