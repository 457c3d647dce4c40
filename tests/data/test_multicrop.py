"""Multi-crop views: shapes, crop areas, where views come from, determinism,
and multi-view batches from the training pipeline."""
import math

import numpy as np
import pytest

from eo_jax.config import base_config
from eo_jax.data import pipeline, transforms
from eo_jax.data.bands import Band
from eo_jax.data.datasets.base import ArraySource, Dataset, DatasetInfo
from eo_jax.data.multicrop import MultiCrop
from eo_jax.data.spectral_augment import SpectralAugment


def _image(size=48, bands=5, seed=0):
  return np.random.default_rng(seed).normal(
      size=(size, size, bands)).astype(np.float32)


@pytest.mark.parametrize("bands", [3, 4, 13, 32])
def test_shapes_and_dtype_for_any_band_count(bands):
  crop = MultiCrop(global_size=16, local_size=8, num_local=3)
  views = crop(_image(bands=bands), np.random.default_rng(0))
  assert set(views) == {"global_crops", "local_crops"}
  assert views["global_crops"].shape == (2, 16, 16, bands)
  assert views["local_crops"].shape == (3, 8, 8, bands)
  assert all(v.dtype == np.float32 and v.flags.c_contiguous
             for v in views.values())
  assert all(np.isfinite(v).all() for v in views.values())


def test_no_local_crops_key_without_local_crops():
  views = MultiCrop(16, 8, 0)(_image(), np.random.default_rng(0))
  assert set(views) == {"global_crops"}


def _area_bounds(scale, ratio, size):
  """Range of h*w/size^2 for targets in `scale`, allowing the rounding of
  h and w to whole pixels (<= 0.5 px each)."""
  lo, hi = scale
  widest = math.sqrt(max(ratio[1], 1 / ratio[0]))
  def rounded(target, sign):
    side = math.sqrt(target) * size
    return ((side * widest + sign * 0.5) * (side / widest + sign * 0.5)
            / size ** 2)
  return rounded(lo, -1), rounded(hi, +1)


def test_crop_areas_cover_the_scale_ranges():
  size = 200  # large, so whole-pixel rounding barely moves the area
  crop = MultiCrop(global_size=8, local_size=4, num_local=6,
                   augment=SpectralAugment.identity())
  image = np.zeros((size, size, 2), np.float32)
  fractions = {"global_boxes": [], "local_boxes": []}
  for seed in range(40):
    _, boxes = crop.crop_with_boxes(image, np.random.default_rng(seed))
    for key, value in boxes.items():
      top, left, h, w = value.T
      assert np.all((top >= 0) & (left >= 0) & (top + h <= size)
                    & (left + w <= size))
      assert np.all((w / h >= 0.75 - 0.02) & (w / h <= 4 / 3 + 0.02))
      fractions[key].extend(h * w / size ** 2)
  for key, scale in (("global_boxes", (0.32, 1.0)),
                     ("local_boxes", (0.05, 0.32))):
    f = np.array(fractions[key])
    low, high = _area_bounds(scale, crop.ratio, size)
    assert f.min() >= low and f.max() <= high, key
    # ... and the samples spread over the range, not one corner of it.
    span = scale[1] - scale[0]
    assert f.min() < scale[0] + 0.15 * span and f.max() > scale[1] - 0.15 * span


def test_views_are_the_resized_boxes_up_to_a_flip():
  image = _image(size=30, bands=3)
  crop = MultiCrop(global_size=12, local_size=6, num_local=4,
                   augment=SpectralAugment.identity())
  views, boxes = crop.crop_with_boxes(image, np.random.default_rng(3))
  pairs = [(views["global_crops"], boxes["global_boxes"], 12),
           (views["local_crops"], boxes["local_boxes"], 6)]
  for stack, box_list, out in pairs:
    for view, (top, left, h, w) in zip(stack, box_list):
      region = transforms.resize(image[top:top + h, left:left + w], out)
      matches = [(lr, ud) for lr in (0, 1) for ud in (0, 1)
                 if np.allclose(view, region[::-1 if ud else 1,
                                             ::-1 if lr else 1], atol=1e-6)]
      assert matches, (top, left, h, w)
  no_flips = MultiCrop(12, 6, 4, augment=SpectralAugment.identity(),
                       flips=False)
  views, boxes = no_flips.crop_with_boxes(image, np.random.default_rng(3))
  top, left, h, w = boxes["global_boxes"][0]
  np.testing.assert_allclose(
      views["global_crops"][0],
      transforms.resize(image[top:top + h, left:left + w], 12), atol=1e-6)


def test_deterministic_given_the_generator():
  crop = MultiCrop(global_size=16, local_size=8, num_local=4)
  image = _image()
  a = crop(image, np.random.default_rng(11))
  b = crop(image, np.random.default_rng(11))
  c = crop(image, np.random.default_rng(12))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a[key], c[key])


def test_default_chains_follow_dinov2_and_explicit_ones_are_used_as_given():
  first, second, local = MultiCrop(16, 8, 2).chains()
  assert (first.blur_prob, first.solarize_prob) == (1.0, 0.0)
  assert (second.blur_prob, second.solarize_prob) == (0.1, 0.2)
  assert (local.blur_prob, local.solarize_prob) == (0.5, 0.0)
  mine = SpectralAugment(blur_prob=0.3)
  other = SpectralAugment(solarize_prob=1.0)
  assert MultiCrop(16, 8, 2, augment=mine).chains() == (mine, mine, mine)
  assert MultiCrop(16, 8, 2, augment=mine,
                   global_augment_2=other).chains() == (mine, other, mine)
  # Solarising every second global crop shows in its values: negated
  # positives mean no value above the threshold 0 survives.
  views = MultiCrop(16, 8, 0, augment=SpectralAugment.identity(),
                    global_augment_2=SpectralAugment(
                        jitter_prob=0.0, blur_prob=0.0, solarize_prob=1.0))(
                            _image(), np.random.default_rng(0))
  assert views["global_crops"][1].max() <= 0
  assert views["global_crops"][0].max() > 0


def test_bad_arguments_fail():
  with pytest.raises(ValueError, match="global_scale"):
    MultiCrop(16, 8, 2, global_scale=(0.5, 0.2))
  with pytest.raises(ValueError, match="num_local"):
    MultiCrop(16, 8, -1)
  with pytest.raises(ValueError, match="one"):
    MultiCrop(16, 8, 2)(np.zeros((2, 8, 8, 3)), np.random.default_rng(0))


# --- Pipeline: views_fn batches ---------------------------------------------

MEANS = np.array([10.0, -2.0, 0.5, 100.0], np.float32)
STDS = np.array([2.0, 0.5, 1.0, 20.0], np.float32)


def _dataset(n=20, size=8):
  bands = tuple(Band(f"b{k}", 500.0 + k, mean=float(m), std=float(s))
                for k, (m, s) in enumerate(zip(MEANS, STDS)))
  rng = np.random.default_rng(0)
  images = (rng.normal(size=(n, size, size, 4)) * STDS + MEANS).astype(
      np.float32)
  labels = np.arange(n, dtype=np.int32) % 3
  return Dataset(DatasetInfo("views", bands, ("a", "b", "c"),
                             image_size=(size, size)),
                 {"train": ArraySource(image=images, label=labels)})


def _loader(ds, views_fn, seed=4, batch_size=4):
  config = base_config().input
  config.batch_size = batch_size
  # Ignored with views_fn: the views replace the standard augmentations.
  config.augment.flips = True
  config.augment.random_resized_crop = True
  return pipeline.train_loader(ds, config, seed=seed, process_index=0,
                               process_count=1, views_fn=views_fn)


def test_pipeline_views_batches_are_the_views_of_normalised_examples():
  ds = _dataset()
  crop = MultiCrop(global_size=6, local_size=4, num_local=2)
  it = iter(_loader(ds, crop))
  batches = [next(it) for _ in range(6)]  # 5 steps per epoch: crosses one
  batch = batches[0]
  assert set(batch) == {"global_crops", "local_crops", "label"}
  assert batch["global_crops"].shape == (4, 2, 6, 6, 4)
  assert batch["local_crops"].shape == (4, 2, 4, 4, 4)
  assert batch["global_crops"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  source = ds.split("train")
  for step in (0, 5):
    epoch, first = divmod(step * 4, 20)
    order = np.random.default_rng([4, epoch]).permutation(20)
    for k in range(4):
      index = order[first + k]
      normalised = (source[index]["image"] - MEANS) / STDS
      expected = crop(normalised, pipeline.example_rng(4, step * 4 + k))
      for key, value in expected.items():
        np.testing.assert_allclose(batches[step][key][k], value, rtol=1e-5,
                                   atol=1e-5)
      assert batches[step]["label"][k] == index % 3


def test_pipeline_views_see_the_normalised_unaugmented_image():
  ds = _dataset()
  seen = next(iter(_loader(ds, lambda image, rng: {"seen": image})))["seen"]
  source = ds.split("train")
  order = np.random.default_rng([4, 0]).permutation(20)
  for k in range(4):
    np.testing.assert_allclose(seen[k], (source[order[k]]["image"] - MEANS)
                               / STDS, rtol=1e-6, atol=1e-6)


def test_pipeline_views_are_deterministic_and_resume_from_iterator_state():
  ds = _dataset()
  crop = MultiCrop(global_size=6, local_size=4, num_local=2)
  a = iter(_loader(ds, crop))
  b = iter(_loader(ds, crop))
  firsts = []
  for _ in range(3):
    x, y = next(a), next(b)
    firsts.append(x)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  state = a.get_state()
  expected = [next(a) for _ in range(4)]
  fresh = iter(_loader(ds, crop))
  fresh.set_state(state)
  for x in expected:
    y = next(fresh)
    assert set(x) == set(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  other = next(iter(_loader(ds, crop, seed=5)))
  assert not np.array_equal(other["global_crops"], firsts[0]["global_crops"])


def test_pipeline_rejects_views_that_clash_with_labels():
  ds = _dataset()
  it = iter(_loader(ds, lambda image, rng: {"label": image}))
  with pytest.raises(ValueError, match="label"):
    next(it)
