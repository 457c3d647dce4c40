"""Tests of build_dataset: kwargs, band selection, train-split statistics."""
import ml_collections
import numpy as np
import pytest

from eo_jax.config import base_config
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import DATASETS, build_dataset, clear_stats_cache
from eo_jax.data.datasets.base import ArraySource, Dataset, DatasetInfo

CALLS = {"getitem": 0}


class _CountingSource(ArraySource):
  def __getitem__(self, index):
    CALLS["getitem"] += 1
    return super().__getitem__(index)


@DATASETS.register("_test_counting")
def _counting(offset: float = 0.0) -> Dataset:
  rng = np.random.default_rng(0)
  bands = bands_lib.select(bands_lib.SENTINEL2, ("B02", "B03", "B04", "B08"))
  images = (offset + rng.normal(size=(3, 10, 4, 4, 4)) * [1, 2, 3, 4]).astype(np.float32)
  labels = np.zeros(10, np.int32)
  splits = {s: _CountingSource(image=images[k], label=labels)
            for k, s in enumerate(("train", "val", "test"))}
  return Dataset(DatasetInfo("_test_counting", bands, ("a",)), splits)


def _numpy_stats(source):
  x = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float64)
  x = x.reshape(-1, x.shape[-1])
  return x.mean(0), x.std(0)


def test_default_config_builds_the_embedded_sample_with_train_stats():
  config = base_config()
  ds = build_dataset(config.data)
  assert ds.info.name == "eolearn_sample"
  mean, std = _numpy_stats(ds.split("train"))
  np.testing.assert_allclose([b.mean for b in ds.info.bands], mean, rtol=1e-10)
  np.testing.assert_allclose([b.std for b in ds.info.bands], std, rtol=1e-10)
  val_mean, _ = _numpy_stats(ds.split("val"))
  assert not np.allclose(mean, val_mean, rtol=1e-4)  # really the train split


def test_kwargs_and_band_selection_by_name():
  data = ml_collections.ConfigDict({"name": "eolearn_sample", "patch_size": 5,
                                    "bands": ("B8A", "B04", "B03")})
  ds = build_dataset(data)
  assert bands_lib.names(ds.info.bands) == ("B8A", "B04", "B03")
  assert ds.info.image_size == (5, 5)
  full = build_dataset({"name": "eolearn_sample", "patch_size": 5})
  full_names = bands_lib.names(full.info.bands)
  ex, ref = ds.split("val")[7]["image"], full.split("val")[7]["image"]
  for k, name in enumerate(("B8A", "B04", "B03")):
    np.testing.assert_array_equal(ex[..., k], ref[..., full_names.index(name)])
    assert ds.info.bands[k].mean == full.info.bands[full_names.index(name)].mean
  assert ds.info.rgb_bands == ()  # B02 was not selected
  assert full.info.rgb_bands == ("B04", "B03", "B02")
  assert build_dataset({"name": "eolearn_sample", "bands": ()}).info.num_bands == 13


def test_unknown_field_and_band_fail_with_the_fix():
  with pytest.raises(TypeError, match=r"'eolearn_sample'.*\['patch_sise'\]"):
    build_dataset({"name": "eolearn_sample", "patch_sise": 5})
  with pytest.raises(ValueError, match="config.data.bands"):
    build_dataset({"name": "eolearn_sample", "bands": ("B8",)})
  with pytest.raises(KeyError, match="Known datasets"):
    build_dataset({"name": "eurosatt"})


def test_stats_are_cached_per_config():
  clear_stats_cache()
  CALLS["getitem"] = 0
  first = build_dataset({"name": "_test_counting", "offset": 100.0})
  after_first = CALLS["getitem"]
  assert after_first == 10  # one pass over the train split only
  second = build_dataset({"name": "_test_counting", "offset": 100.0})
  assert CALLS["getitem"] == after_first
  assert first.info.bands == second.info.bands
  mean, std = _numpy_stats(first.split("train"))
  np.testing.assert_allclose([b.mean for b in first.info.bands], mean)
  np.testing.assert_allclose([b.std for b in first.info.bands], std)
  build_dataset({"name": "_test_counting", "offset": 5.0})
  assert CALLS["getitem"] > after_first  # a different config recomputes
  no_stats = build_dataset({"name": "_test_counting"}, with_stats=False)
  assert no_stats.info.bands[0].mean is None
