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


# ------------------------------------------- extra keys of the examples


class ListSource:
  """A source over a list of example dicts (shapes may differ per example)."""

  def __init__(self, examples):
    self._examples = examples

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


def extras_dataset(n_train=24, n_val=10, size=8, spatial=True):
  """Examples with extra keys whose values are known functions of the image.

  Band 0 is 10 * id + u, u in [0.2, 0.8] per pixel (bilinear resampling keeps
  it inside that range, so floor(band 0 / 10) is the id); bands 1 and 2 are
  the pixel's row and column. 'weight' is band 0 itself (float64, to be made
  float32), 'pixel_id' row * size + column (int16, (H, W, 1)), 'valid' a
  boolean pattern of it and 'mask' a class id derived from it (int64, to be
  made int32); 'date' (float32 scalar) and 'meta' (int64 vector) depend on
  the id only.
  """
  rows, cols = np.mgrid[:size, :size]
  pixel_id = rows * size + cols

  def make(n, base, seed):
    ids = base + np.arange(n)
    u = np.random.default_rng(seed).uniform(0.2, 0.8, (n, size, size))
    image = np.empty((n, size, size, 3), np.float32)
    image[..., 0] = 10 * ids[:, None, None] + u
    image[..., 1], image[..., 2] = rows, cols
    arrays = dict(image=image, label=(ids % 7).astype(np.int32),
                  date=(0.5 * ids + 0.25).astype(np.float32),
                  meta=np.stack([ids, -ids, 2 * ids], 1).astype(np.int64))
    if spatial:
      arrays.update(
          weight=image[..., 0].astype(np.float64),
          pixel_id=np.broadcast_to(pixel_id[..., None],
                                   (n, size, size, 1)).astype(np.int16),
          valid=np.broadcast_to((rows + cols) % 3 == 0, (n, size, size)),
          mask=np.broadcast_to(pixel_id % 5, (n, size, size)).astype(np.int64))
    return ArraySource(**arrays)

  splits = {"train": make(n_train, 0, 1), "val": make(n_val, 100, 2)}
  return Dataset(DatasetInfo("extras", BANDS, tuple("abcdefg"),
                             image_size=(size, size)), splits)


def denormalised(batch, band):
  return batch["image"][..., band] * STDS[band] + MEANS[band]


def check_carried(batch):
  """'date', 'meta' and 'label' belong to the example of the image beside
  them (its id read from band 0), in the batch's order."""
  ids = np.floor(denormalised(batch, 0)[:, 0, 0] / 10).astype(int)
  assert batch["date"].dtype == np.float32 and batch["date"].shape == ids.shape
  np.testing.assert_array_equal(batch["date"], 0.5 * ids + 0.25)
  assert batch["meta"].dtype == np.int64
  np.testing.assert_array_equal(batch["meta"],
                                np.stack([ids, -ids, 2 * ids], 1))
  np.testing.assert_array_equal(batch["label"], ids % 7)
  return ids


def check_spatial(batch, size):
  """Dtypes, shapes, and every spatial key aligned with the image."""
  n = len(batch["image"])
  assert batch["weight"].dtype == np.float32
  assert batch["weight"].shape == (n, size, size)
  assert batch["pixel_id"].dtype == np.int16
  assert batch["pixel_id"].shape == (n, size, size, 1)
  assert batch["valid"].dtype == bool and batch["mask"].dtype == np.int32
  # Same bilinear arithmetic on the same float32 values: band 0 of the image
  # is the weight map bit for bit, and so is its normalisation.
  np.testing.assert_array_equal((batch["weight"] - MEANS[0]) / STDS[0],
                                batch["image"][..., 0])
  # Nearest resampling keeps integer values from the original set, and
  # picks the source pixel nearest to where the image's bilinear sample
  # (the row and column bands) was taken: less than a pixel away.
  pid = batch["pixel_id"][..., 0].astype(int)
  assert pid.min() >= 0 and pid.max() < 64
  assert np.abs(denormalised(batch, 1) - pid // 8).max() < 1.0
  assert np.abs(denormalised(batch, 2) - pid % 8).max() < 1.0
  # Every nearest-resampled key took the same source pixel.
  np.testing.assert_array_equal(batch["valid"], (pid // 8 + pid % 8) % 3 == 0)
  np.testing.assert_array_equal(batch["mask"], pid % 5)


def test_extra_keys_follow_the_augmentation_and_stay_aligned():
  ds = extras_dataset()
  config = input_config(batch_size=6, flips=True, rot90=True,
                        random_resized_crop=True)
  config.augment.crop_scale = (0.2, 1.0)
  it = iter(pipeline.train_loader(ds, config, seed=7, process_index=0,
                                  process_count=1, image_size=6))
  orientations, seen = set(), []
  for batch in take(it, 8):
    assert set(batch) == {"image", "label", "weight", "pixel_id", "valid",
                          "mask", "date", "meta"}
    check_spatial(batch, 6)
    seen.append(check_carried(batch))
    # Which way the row and column bands grow (rounded: de-normalising
    # leaves float noise): all 8 orientations occur.
    for r, c in zip(np.round(denormalised(batch, 1), 3),
                    np.round(denormalised(batch, 2), 3)):
      orientations.add(tuple(np.sign([r[-1, 0] - r[0, 0], r[0, -1] - r[0, 0],
                                      c[-1, 0] - c[0, 0], c[0, -1] - c[0, 0]])))
  assert len(orientations) == 8
  # Each epoch (4 steps of 6) is a permutation of the 24 examples.
  np.testing.assert_array_equal(np.sort(np.concatenate(seen[:4])),
                                np.arange(24))
  # The extra keys change nothing of the image: the draws depend on it alone.
  plain = extras_dataset(spatial=False)
  it = iter(pipeline.train_loader(plain, config, seed=7, process_index=0,
                                  process_count=1, image_size=6))
  again = iter(pipeline.train_loader(ds, config, seed=7, process_index=0,
                                     process_count=1, image_size=6))
  for a, b in zip(take(it, 3), take(again, 3)):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_pure_geometry_moves_integer_keys_with_the_image_exactly():
  ds = extras_dataset()
  config = input_config(batch_size=6, flips=True, rot90=True,
                        random_resized_crop=True)
  config.augment.crop_scale = (1.0, 1.0)
  config.augment.crop_ratio = (1.0, 1.0)
  it = iter(pipeline.train_loader(ds, config, seed=1, process_index=0,
                                  process_count=1))
  for batch in take(it, 4):
    check_spatial(batch, 8)
    rows = np.round(denormalised(batch, 1)).astype(int)
    cols = np.round(denormalised(batch, 2)).astype(int)
    np.testing.assert_array_equal(batch["pixel_id"][..., 0], rows * 8 + cols)


@pytest.mark.parametrize("image_size", [None, 4])
def test_eval_carries_the_extra_keys_unaugmented_in_order(image_size):
  ds = extras_dataset(n_val=10)
  config = input_config(batch_size=4, flips=True, rot90=True,
                        random_resized_crop=True)
  batches = list(pipeline.eval_loader(ds, "val", config, process_index=0,
                                      process_count=1, image_size=image_size))
  assert [len(b["date"]) for b in batches] == [4, 4, 2]
  ids = np.concatenate([check_carried(b) for b in batches])
  np.testing.assert_array_equal(ids, 100 + np.arange(10))
  for b in batches:
    check_spatial(b, image_size or 8)
  if image_size is None:  # no geometry at all: the source's arrays
    source = ds.split("val")
    for k in range(10):
      b, i = batches[k // 4], k % 4
      np.testing.assert_array_equal(b["weight"][i],
                                    source[k]["weight"].astype(np.float32))
      np.testing.assert_array_equal(b["pixel_id"][i], source[k]["pixel_id"])
      np.testing.assert_array_equal(b["valid"][i], source[k]["valid"])


def test_views_drop_spatial_extras_with_one_warning(caplog):
  ds = extras_dataset()
  config = input_config(batch_size=6, flips=True, random_resized_crop=True)
  with caplog.at_level("WARNING"):
    loader = pipeline.train_loader(
        ds, config, seed=3, process_index=0, process_count=1,
        views_fn=lambda image, rng: {"seen": image[::2, ::2]})
    batches = take(iter(loader), 5)
  warnings = [r.getMessage() for r in caplog.records
              if "drop the spatial keys" in r.getMessage()]
  assert len(warnings) == 1
  assert "['pixel_id', 'valid', 'weight']" in warnings[0]
  for batch in batches:
    # The views replace the image; non-spatial keys and the (resized, not
    # augmented) mask are carried as without views.
    assert set(batch) == {"seen", "label", "mask", "date", "meta"}
    ids = np.floor((batch["seen"][:, 0, 0, 0] * STDS[0] + MEANS[0]) / 10)
    np.testing.assert_array_equal(batch["date"], 0.5 * ids + 0.25)
    np.testing.assert_array_equal(batch["meta"][:, 0], ids)
    np.testing.assert_array_equal(batch["label"], ids % 7)
    np.testing.assert_array_equal(
        batch["mask"], np.broadcast_to(np.arange(64).reshape(8, 8) % 5,
                                       (6, 8, 8)))
  with pytest.raises(ValueError, match=r"views_fn returned \['date'\]"):
    next(iter(pipeline.train_loader(
        ds, config, seed=3, process_index=0, process_count=1,
        views_fn=lambda image, rng: {"date": image})))


def test_extra_key_errors_name_the_key_and_the_example():
  size = 4
  image = np.zeros((size, size, 3), np.float32)

  def loader(examples, split="val"):
    ds = Dataset(DatasetInfo("bad", BANDS, image_size=(size, size)),
                 {split: ListSource(examples)})
    return pipeline.eval_loader(ds, split, input_config(batch_size=4),
                                process_index=0, process_count=1)

  good = {"image": image, "vector": np.zeros(3)}
  with pytest.raises(ValueError, match=r"'vector'.*\(3,\) in example 0, "
                     r"\(2,\) in example 2"):
    list(loader([good, good, {"image": image, "vector": np.zeros(2)}]))
  with pytest.raises(ValueError, match="example 1 has keys"):
    list(loader([good, {"image": image}]))
  with pytest.raises(ValueError,
                     match=r"example 0 has 'mask' of shape \(4, 5\)"):
    loader([{"image": image, "mask": np.zeros((4, 5), np.int32)}])
  with pytest.raises(ValueError, match=r"example 0 has 'stack' of shape"):
    loader([{"image": image, "stack": np.zeros((4, 4, 2, 2))}])
  with pytest.raises(TypeError, match=r"example 0, key 'phase'.*complex"):
    loader([{"image": image, "phase": np.zeros((4, 4), np.complex64)}])
  # Leading dimensions other than the image's: not spatial, carried as is.
  batch = next(iter(loader([{"image": image, "rows": np.ones((4, 3))}] * 2)))
  assert batch["rows"].shape == (2, 4, 3) and batch["rows"].dtype == np.float64


# ----------------------------------------- augmentation options: one source


def test_augment_options_come_from_the_config_schema_only():
  schema = base_config().input.augment.to_dict()
  options = pipeline._augment_options(base_config().input)  # pylint: disable=protected-access
  assert options == schema
  ds = id_dataset(constant=False)
  config = input_config(flips=True, rot90=True, random_resized_crop=True)
  plain = {"batch_size": 8, "augment": config.augment.to_dict()}
  for a, b in zip(take(iter(pipeline.train_loader(
      ds, config, seed=0, process_index=0, process_count=1)), 3),
                  take(iter(pipeline.train_loader(
      ds, plain, seed=0, process_index=0, process_count=1)), 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
  partial = dict(plain, augment={k: v for k, v in schema.items()
                                 if k != "rot90"})
  with pytest.raises(KeyError, match="lacks keys.*'rot90'"):
    pipeline.train_loader(ds, partial, seed=0, process_index=0,
                          process_count=1)
  with pytest.raises(KeyError, match="no 'augment'"):
    pipeline.train_loader(ds, {"batch_size": 8}, seed=0, process_index=0,
                          process_count=1)
  # Evaluation never augments, so it takes a config without 'augment'.
  batch = next(iter(pipeline.eval_loader(ds, "val", {"prefetch": 2},
                                         process_index=0, process_count=1,
                                         batch_size=4)))
  assert batch["image"].shape == (4, 6, 6, 3)
