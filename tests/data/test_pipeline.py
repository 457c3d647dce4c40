"""Tests of the Grain train/eval pipelines."""
import ml_collections
import numpy as np
import pytest

from eo_jax.config import base_config
from eo_jax.data import pipeline
from eo_jax.data.bands import Band
from eo_jax.data.datasets.base import (SEGMENTATION, ArraySource, Dataset,
                                       DatasetInfo)

MEANS = np.array([1000.0, -5.0, 0.0], np.float32)
STDS = np.array([2.0, 0.5, 10.0], np.float32)
BANDS = tuple(Band(f"b{k}", 500.0 + k, mean=float(m), std=float(s))
              for k, (m, s) in enumerate(zip(MEANS, STDS)))


def id_dataset(n_train=50, n_val=23, size=6, constant=True):
  """Images whose every pixel encodes the example id (if `constant`), so ids
  survive any flip/rotation; otherwise a unique ramp per example."""
  def make(n, base):
    ids = base + np.arange(n, dtype=np.float32)
    ramp = np.arange(size * size, dtype=np.float32).reshape(size, size) / 1000
    img = ids[:, None, None, None] + (0 if constant else ramp[None, :, :, None])
    img = np.broadcast_to(img, (n, size, size, 3)).copy()
    img[..., 1] = img[..., 1] * 0.5  # distinct bands
    return ArraySource(image=img, label=(ids % 7).astype(np.int32))
  splits = {"train": make(n_train, 0), "val": make(n_val, 10_000)}
  return Dataset(DatasetInfo("ids", BANDS, tuple("abcdefg"),
                             image_size=(size, size)), splits)


def input_config(batch_size=8, **augment):
  c = base_config().input
  c.batch_size = batch_size
  c.augment.flips = augment.get("flips", False)
  c.augment.rot90 = augment.get("rot90", False)
  c.augment.random_resized_crop = augment.get("random_resized_crop", False)
  return c


def raw_ids(batch):
  """Example ids back from a normalised batch (band 0 of the corner pixel)."""
  raw = batch["image"][:, 0, 0, 0] * STDS[0] + MEANS[0]
  return np.round(raw).astype(int)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_batches_are_normalised_shaped_and_typed():
  ds = id_dataset()
  it = iter(pipeline.train_loader(ds, input_config(), seed=0,
                                  process_index=0, process_count=1))
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (8, 6, 6, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  ids = raw_ids(batch)
  source = ds.split("train")
  for k, i in enumerate(ids):
    expected = (source[i]["image"] - MEANS) / STDS
    np.testing.assert_allclose(batch["image"][k], expected, rtol=1e-6, atol=1e-6)
    assert batch["label"][k] == i % 7


def test_each_epoch_is_a_fresh_permutation_without_remainder():
  ds = id_dataset(n_train=50)
  config = input_config(batch_size=8)
  assert pipeline.steps_per_epoch(ds, config) == 6  # 50 // 8, remainder dropped
  it = iter(pipeline.train_loader(ds, config, seed=1, process_index=0,
                                  process_count=1))
  epochs = [np.concatenate([raw_ids(b) for b in take(it, 6)]) for _ in range(3)]
  for ids in epochs:
    assert len(set(ids.tolist())) == 48 and ids.min() >= 0 and ids.max() < 50
  assert not np.array_equal(epochs[0], epochs[1])
  # Over many epochs every example shows up: the dropped remainder varies.
  assert set(np.concatenate(epochs).tolist()) | set(
      np.concatenate([raw_ids(b) for b in take(it, 30)]).tolist()) == set(range(50))


def test_same_seed_same_stream_other_seed_other_stream():
  ds = id_dataset(constant=False)
  config = input_config(flips=True, rot90=True, random_resized_crop=True)
  runs = [take(iter(pipeline.train_loader(ds, config, seed=s, process_index=0,
                                          process_count=1)), 4)
          for s in (3, 3, 4)]
  for a, b in zip(runs[0], runs[1]):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(runs[0][0]["image"], runs[2][0]["image"])


@pytest.mark.parametrize("augment", [{}, {"flips": True, "rot90": True,
                                           "random_resized_crop": True}])
def test_checkpoint_state_round_trip_gives_the_same_next_batches(augment):
  ds = id_dataset(constant=False)
  config = input_config(**augment)
  loader = pipeline.train_loader(ds, config, seed=5, process_index=0,
                                 process_count=1)
  it = iter(loader)
  take(it, 9)  # crosses the first epoch boundary (6 steps)
  state = it.get_state()
  assert isinstance(state, bytes)
  expected = take(it, 7)
  fresh = iter(pipeline.train_loader(ds, config, seed=5, process_index=0,
                                     process_count=1))
  fresh.set_state(state)
  for a, b in zip(expected, take(fresh, 7)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_augmentation_is_keyed_by_seed_and_stream_position():
  ds = id_dataset(n_train=50, constant=False)
  config = input_config(batch_size=8, flips=True, rot90=True,
                        random_resized_crop=True)
  it = iter(pipeline.train_loader(ds, config, seed=9, process_index=0,
                                  process_count=1))
  batches = take(it, 7)  # step 6 is the first of epoch 1
  options = pipeline._augment_options(config)  # pylint: disable=protected-access
  source = ds.split("train")
  for step in (0, 6):
    epoch, first = divmod(step * 8, 6 * 8)
    order = np.random.default_rng([9, epoch]).permutation(50)
    for k in range(8):
      g = step * 8 + k
      image, _ = pipeline.augment(source[order[first + k]]["image"], None,
                                  pipeline.example_rng(9, g), (6, 6), options)
      np.testing.assert_allclose(batches[step]["image"][k],
                                 (image - MEANS) / STDS, rtol=1e-6, atol=1e-6)


def test_two_processes_split_every_global_batch():
  ds = id_dataset(constant=False)
  config = input_config(batch_size=8, flips=True, rot90=True)
  single = take(iter(pipeline.train_loader(ds, config, seed=2, process_index=0,
                                           process_count=1)), 8)
  halves = [take(iter(pipeline.train_loader(ds, config, seed=2, process_index=p,
                                            process_count=2)), 8)
            for p in (0, 1)]
  for k in range(8):
    assert halves[0][k]["image"].shape[0] == 4
    together = np.concatenate([halves[0][k]["image"], halves[1][k]["image"]])
    # Same examples AND same augmentation, whatever the process layout.
    np.testing.assert_array_equal(together, single[k]["image"])
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    pipeline.train_loader(ds, input_config(batch_size=9), seed=0,
                          process_index=0, process_count=2)
  with pytest.raises(ValueError, match="larger than the train split"):
    pipeline.steps_per_epoch(ds, input_config(batch_size=64))


def test_augmentation_applies_the_same_geometry_to_masks():
  size, n = 8, 16
  rng = np.random.default_rng(0)
  mask = rng.integers(0, 5, (n, size, size)).astype(np.int32)
  image = np.repeat(mask[..., None].astype(np.float32), 3, axis=-1)
  ds = Dataset(DatasetInfo("seg", BANDS, tuple("abcde"), task=SEGMENTATION,
                           image_size=(size, size)),
               {"train": ArraySource(image=image, mask=mask)})
  # Full-size unit-ratio crops are pure geometry, so mask == image exactly.
  config = input_config(batch_size=4, flips=True, rot90=True,
                        random_resized_crop=True)
  config.augment.crop_scale = (1.0, 1.0)
  config.augment.crop_ratio = (1.0, 1.0)
  it = iter(pipeline.train_loader(ds, config, seed=0, process_index=0,
                                  process_count=1))
  for batch in take(it, 8):
    assert set(batch) == {"image", "mask"} and batch["mask"].dtype == np.int32
    raw = batch["image"][..., 0] * STDS[0] + MEANS[0]
    np.testing.assert_allclose(raw, batch["mask"], atol=1e-3)


def test_image_size_resizes_train_and_eval():
  ds = id_dataset(size=6)
  config = input_config(random_resized_crop=True)
  train = next(iter(pipeline.train_loader(ds, config, seed=0, process_index=0,
                                          process_count=1, image_size=10)))
  config.image_size = 4
  val = next(iter(pipeline.eval_loader(ds, "val", config, process_index=0,
                                       process_count=1)))
  assert train["image"].shape == (8, 10, 10, 3)
  assert val["image"].shape == (8, 4, 4, 3)


def test_eval_covers_the_split_once_in_order_with_a_short_last_batch():
  ds = id_dataset(n_val=23)
  config = input_config(batch_size=5, flips=True, rot90=True)
  loader = pipeline.eval_loader(ds, "val", config, process_index=0,
                                process_count=1)
  for _ in range(2):  # re-iterable
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 3]
    ids = np.concatenate([raw_ids(b) for b in batches])
    np.testing.assert_array_equal(ids, 10_000 + np.arange(23))
  source = ds.split("val")
  np.testing.assert_allclose(batches[-1]["image"][-1],
                             (source[22]["image"] - MEANS) / STDS, rtol=1e-6)


@pytest.mark.parametrize("n_val,batch", [(23, 4), (5, 4), (3, 8)])
def test_eval_shards_over_two_processes_cover_the_split(n_val, batch):
  ds = id_dataset(n_val=n_val)
  config = input_config(batch_size=batch)
  loaders = [pipeline.eval_loader(ds, "val", config, process_index=p,
                                  process_count=2) for p in (0, 1)]
  assert len(loaders[0]) == len(loaders[1])  # same number of steps
  ids = [np.concatenate([raw_ids(b) for b in loader]) for loader in loaders]
  assert all(len(b["label"]) <= batch // 2 for loader in loaders for b in loader)
  assert not set(ids[0]) & set(ids[1])
  np.testing.assert_array_equal(np.sort(np.concatenate(ids)),
                                10_000 + np.arange(n_val))
  # Contiguous shards.
  assert all(np.all(np.diff(i) == 1) for i in ids if len(i) > 1)
  explicit = pipeline.eval_loader(ds, "val", config, process_index=1,
                                  process_count=2, batch_size=3)
  np.testing.assert_array_equal(
      np.concatenate([raw_ids(b) for b in explicit]), ids[1])
  assert all(len(b["label"]) <= 3 for b in explicit)


def test_bad_augment_key_and_missing_stats_fail():
  ds = id_dataset()
  config = input_config()
  config.augment = ml_collections.ConfigDict({"flip": True})
  with pytest.raises(KeyError, match="flip"):
    pipeline.train_loader(ds, config, seed=0, process_index=0, process_count=1)
  plain = Dataset(DatasetInfo("ids", tuple(Band(b.name, 500) for b in BANDS)),
                  ds.splits)
  with pytest.raises(ValueError, match="build_dataset"):
    pipeline.eval_loader(plain, "val", input_config(), process_index=0,
                         process_count=1)


def test_worker_processes_give_the_same_batches():
  from absl import flags
  flags.FLAGS.mark_as_parsed()
  ds = id_dataset(constant=False)
  config = input_config(flips=True, rot90=True)
  ref = take(iter(pipeline.train_loader(ds, config, seed=0, process_index=0,
                                        process_count=1)), 4)
  config.worker_count = 2
  it = iter(pipeline.train_loader(ds, config, seed=0, process_index=0,
                                  process_count=1))
  for a, b in zip(ref, take(it, 4)):
    np.testing.assert_array_equal(a["image"], b["image"])
