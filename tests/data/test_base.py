"""The dataset contract's own checks."""
import numpy as np
import pytest

from eo_jax.data import bands
from eo_jax.data.datasets.base import ArraySource, Dataset, DatasetInfo


def _dataset(n_val):
  info = DatasetInfo(name="d", bands=bands.RGB, class_names=("a", "b"))
  return Dataset(info=info, splits={
      "train": ArraySource(image=np.zeros((4, 2, 2, 3), np.float32), label=np.zeros(4, np.int32)),
      "val": ArraySource(image=np.zeros((n_val, 2, 2, 3), np.float32),
                         label=np.zeros(n_val, np.int32))})


def test_empty_split_is_a_clear_error():
  with pytest.raises(ValueError, match="Split 'val' of dataset 'd' is empty"):
    _dataset(0).split("val")
  assert len(_dataset(2).split("val")) == 2


def test_unknown_split_names_the_existing_ones():
  with pytest.raises(KeyError, match=r"has no split 'test'; it has \['train', 'val'\]"):
    _dataset(1).split("test")


def test_info_round_trips_through_a_dict():
  info = DatasetInfo(name="d", bands=tuple(b.with_stats(1.0, 2.0) for b in bands.SENTINEL2),
                     class_names=("x", "y"), image_size=(9, 9), rgb_bands=("B04", "B03", "B02"))
  assert DatasetInfo.from_dict(info.to_dict()) == info


def test_band_selection_keeps_the_requested_order_and_rejects_unknown_names():
  chosen = bands.select(bands.SENTINEL2, ("B8A", "B04"))
  assert bands.names(chosen) == ("B8A", "B04")
  assert chosen[0].wavelength_nm == pytest.approx(864.7)
  with pytest.raises(ValueError, match="B13"):
    bands.select(bands.SENTINEL2, ("B13",))
