"""The evaluation runner: every real example once, padding dropped, features
shared within an evaluation round."""
import ml_collections
import numpy as np

from eo_jax import sharding
from eo_jax.data import transforms
from eo_jax.data.datasets import build_dataset
from eo_jax.evaluate.runner import EvalRunner


def _setup(batch_size=8):
  dataset = build_dataset(ml_collections.ConfigDict(dict(
      name="synthetic", num_bands=3, num_classes=3, image_size=4, num_train=16,
      num_val=13, num_test=4)))
  runner = EvalRunner(sharding.make_mesh(), ml_collections.ConfigDict(dict(
      batch_size=batch_size, eval_batch_size=0, image_size=0, prefetch=2)))
  return dataset, runner


def _band_means(state, batch):
  return {"features": batch["image"].mean(axis=(1, 2)) * state}


def test_outputs_cover_the_split_once_in_order_without_padding():
  dataset, runner = _setup()
  source = dataset.split("val")
  mean, std = transforms.band_mean_std(dataset.info.bands)
  expected = np.stack([(source[i]["image"] - mean) / std
                       for i in range(len(source))]).mean(axis=(1, 2))
  outputs = list(runner.outputs(_band_means, 2.0, dataset, "val", keep=("label",)))
  assert [len(o["features"]) for o, _ in outputs] == [8, 5]  # 13 = 8 + 5
  got = np.concatenate([o["features"] for o, _ in outputs])
  np.testing.assert_allclose(got, 2.0 * expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([o["label"] for o, _ in outputs]),
                                [source[i]["label"] for i in range(13)])
  # The local batches handed out for pictures hold the real examples only.
  assert [len(local["image"]) for _, local in outputs] == [8, 5]


def test_features_are_computed_once_per_round():
  dataset, runner = _setup()
  first = runner.features(_band_means, 1.0, dataset, "val", step=4)
  again = runner.features(_band_means, 1.0, dataset, "val", step=4)
  assert again[0] is first[0]          # shared by probes of the same round
  later = runner.features(_band_means, 3.0, dataset, "val", step=8)
  assert later[0] is not first[0]      # a new round extracts again
  np.testing.assert_allclose(later[0], 3.0 * first[0], rtol=1e-6)
  np.testing.assert_array_equal(later[1], first[1])
