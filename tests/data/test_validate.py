"""Tests of validate_dataset: every example read and checked before training."""
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from eo_jax import config as config_lib
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import DATASETS, build_dataset
from eo_jax.data.datasets import eurosat
from eo_jax.data.datasets.base import (SEGMENTATION, UNLABELLED, ArraySource,
                                       DataError, Dataset, DatasetInfo)
from eo_jax.data.validate import clear_validation_cache, validate_dataset
from eo_jax.errors import UserError

RGB_INFO = DatasetInfo("toy", bands_lib.RGB, class_names=("a", "b", "c"))


def _images(n, size=4, bands=3, seed=0):
  return np.random.default_rng(seed).uniform(
      0, 1, (n, size, size, bands)).astype(np.float32)


def _toy(info=RGB_INFO, **splits):
  return Dataset(info=info, splits=splits)


class _ListSource:
  """Examples given one by one, so that one may differ from the others."""

  def __init__(self, examples):
    self.examples = examples

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, index):
    return self.examples[index]


def _write_eurosat_rgb(folder, per_class=5):
  for label, cls in enumerate(eurosat.CLASSES):
    (folder / cls).mkdir(parents=True)
    for n in range(1, per_class + 1):
      colour = np.array([20 * label + 5, 10 * n + 50, 100], np.uint8)
      Image.fromarray(np.ascontiguousarray(np.broadcast_to(colour, (16, 16, 3)))
                      ).save(folder / cls / f"{cls}_{n}.jpg", quality=95)


def test_a_truncated_file_in_the_test_split_is_named(tmp_path):
  _write_eurosat_rgb(tmp_path / "EuroSAT_RGB")
  data = {"name": "eurosat", "path": str(tmp_path), "variant": "rgb"}
  test = build_dataset(data, with_stats=False).splits["test"]
  bad = Path(test.describe(3))  # the source names its file
  assert bad.is_file() and bad.parent.parent.name == "EuroSAT_RGB"
  bad.write_bytes(bad.read_bytes()[:150])  # truncated mid-scan
  dataset = build_dataset(data, with_stats=False)
  with pytest.raises(DataError) as e:
    validate_dataset(dataset, num_threads=4)
  assert isinstance(e.value, UserError)  # main.py prints it as one error
  message = str(e.value)
  assert "split 'test': 1 of 10 examples" in message
  assert f"'test' example 3 ({bad})" in message and "cannot be read" in message
  assert "'train'" not in message and "'val'" not in message
  # Band selection wraps the source; the file is still named through it.
  selected = build_dataset({**data, "bands": ("G",)}, with_stats=False)
  with pytest.raises(DataError, match=bad.name):
    validate_dataset(selected, ["test"])
  assert validate_dataset(selected, ["train", "val"]).counts == {
      "train": 30, "val": 10}


def test_build_dataset_validates_before_the_train_statistics(tmp_path):
  _write_eurosat_rgb(tmp_path / "2750", per_class=3)
  data = {"name": "eurosat", "path": str(tmp_path), "variant": "rgb"}
  train = build_dataset(data, with_stats=False).splits["train"]
  # Not the first file, which the factory itself reads to learn the shape.
  bad = [Path(train.describe(i)) for i in (len(train) - 8, len(train) - 1)]
  for f in bad:
    f.write_bytes(b"not a jpeg")
  with pytest.raises(DataError) as e:  # every bad file, not the first one
    build_dataset(data, validate=True)
  assert "split 'train': 2 of" in str(e.value)
  assert all(str(f) in str(e.value) for f in bad)
  with pytest.raises(ValueError, match="Could not read"):
    build_dataset(data)  # the statistics stop at the first one


def test_nan_and_inf_are_counted_and_their_bands_named():
  images = _images(6)
  images[3, 0, 0, 1] = np.nan
  images[3, 1, :, 1] = np.inf
  images[5, 2, 2, 2] = -np.inf
  labels = np.zeros(6, np.int32)
  dataset = _toy(train=ArraySource(image=_images(4), label=labels[:4]),
                 val=ArraySource(image=images, label=labels))
  with pytest.raises(DataError) as e:
    validate_dataset(dataset)
  message = str(e.value)
  assert "split 'val': 2 of 6 examples" in message
  assert "'val' example 3: the image has 1 NaN and 4 infinite value(s), in " \
         "band(s) G." in message
  assert "'val' example 5: the image has 1 infinite value(s), in band(s) B." \
         in message
  assert "config.data.bands" in message  # the fix


def test_a_wrong_band_count_is_named():
  examples = [{"image": img, "label": np.int32(0)} for img in _images(5)]
  examples[2] = {"image": _images(1, bands=4)[0], "label": np.int32(1)}
  examples[4] = {"image": _images(1)[0][..., 0], "label": np.int32(1)}
  dataset = _toy(test=_ListSource(examples))
  with pytest.raises(DataError) as e:
    validate_dataset(dataset, num_threads=1)
  message = str(e.value)
  assert "'test' example 2: the image has 4 band(s), the dataset has 3 (R, " \
         "G, B)" in message
  assert "'test' example 4: the image has shape (4, 4), expected (H, W, 3)" \
         in message
  assert "remove it" in message


def test_labels_and_masks_out_of_range_are_named():
  labels = np.array([0, 2, 3, -1], np.int32)
  dataset = _toy(train=ArraySource(image=_images(4), label=labels))
  with pytest.raises(DataError) as e:
    validate_dataset(dataset)
  assert "example 2: the label 3 is outside 0..2 (3 classes)" in str(e.value)
  assert "example 3: the label -1 is outside 0..2" in str(e.value)

  info = DatasetInfo("seg", bands_lib.RGB, class_names=("a", "b"),
                     task=SEGMENTATION, ignore_index=255)
  masks = np.zeros((3, 4, 4), np.int32)
  masks[0, 0, 0] = 255            # the ignore index is fine
  masks[1, :2, 0] = 7             # out of range
  seg = _toy(info, val=ArraySource(image=_images(3), mask=masks))
  with pytest.raises(DataError) as e:
    validate_dataset(seg)
  assert "'val': 1 of 3" in str(e.value)
  assert "example 1: 2 mask pixel(s) have values [7], outside 0..1 or 255 " \
         "(ignored)" in str(e.value)
  wrong = [{"image": img, "mask": np.zeros((4, 3), np.int32)}
           for img in _images(2)]
  with pytest.raises(DataError, match=r"mask has shape \(4, 3\), the image "
                                      r"\(4, 4\)"):
    validate_dataset(_toy(info, val=_ListSource(wrong)))


def test_many_problems_give_one_short_error():
  images = np.full((50, 2, 2, 3), np.nan, np.float32)
  dataset = _toy(DatasetInfo("toy", bands_lib.RGB, task=UNLABELLED),
                 train=ArraySource(image=images), val=ArraySource(image=images))
  with pytest.raises(DataError) as e:
    validate_dataset(dataset, max_problems=3)
  message = str(e.value)
  assert message.startswith("Dataset 'toy' has 100 unusable example(s)")
  for split in ("train", "val"):
    assert f"split {split!r}: 50 of 50 examples" in message
    assert f"'{split}' example 2:" in message
    assert f"'{split}' example 3:" not in message  # only the first 3
    assert f"... and 47 more in '{split}'." in message


class _SlowSource(ArraySource):
  """Waits on every read, like storage with a high latency."""

  def __getitem__(self, index):
    time.sleep(0.005)  # releases the GIL, as waiting on storage does
    return super().__getitem__(index)


def test_a_thread_pool_reads_slow_storage_and_still_finds_problems():
  images = _images(400)
  images[300, 1, 1, 0] = np.nan
  dataset = _toy(train=_SlowSource(image=images,
                                   label=np.zeros(400, np.int32)))
  with pytest.raises(DataError, match=r"(?s)'train': 1 of 400.*'train' example "
                                      r"300: the image has 1 NaN"):
    validate_dataset(dataset, num_threads=8)
  images[300] = 0.0
  report = validate_dataset(dataset, num_threads=8)
  # 8 threads wait 8 times faster than one (kept above 1.2 times).
  assert report.threads == 8 and report.counts == {"train": 400}


CALLS = {"getitem": 0}


class _CountingSource(ArraySource):
  def __getitem__(self, index):
    CALLS["getitem"] += 1
    return super().__getitem__(index)


@DATASETS.register("_test_validate_counting")
def _counting(offset: float = 0.0) -> Dataset:
  labels = np.zeros(10, np.int32)
  splits = {s: _CountingSource(image=_images(10, seed=k) + offset, label=labels)
            for k, s in enumerate(("train", "val", "test"))}
  return Dataset(RGB_INFO, splits)


def test_a_clean_dataset_passes_with_counts_and_is_read_once_per_config():
  clear_validation_cache()
  dataset = build_dataset({"name": "_test_validate_counting"}, with_stats=False)
  CALLS["getitem"] = 0
  report = validate_dataset(dataset, ["train", "val"])
  assert report.counts == {"train": 10, "val": 10} and report.cached == ()
  assert CALLS["getitem"] == 20
  again = build_dataset({"name": "_test_validate_counting"}, with_stats=False)
  report = validate_dataset(again)
  assert report.counts == {"train": 10, "val": 10, "test": 10}
  assert report.cached == ("train", "val")
  assert CALLS["getitem"] == 30  # only 'test' was read
  assert "30 examples of 'toy'" in str(report)
  validate_dataset(build_dataset({"name": "_test_validate_counting",
                                  "offset": 1.0}, with_stats=False))
  assert CALLS["getitem"] == 60  # another config: read again
  validate_dataset(again, use_cache=False)
  assert CALLS["getitem"] == 90
  # Built without build_dataset: no config key, never cached.
  validate_dataset(_counting())
  validate_dataset(_counting())
  assert CALLS["getitem"] == 150
  with pytest.raises(KeyError, match=r"no split\(s\) \['tset'\]"):
    validate_dataset(dataset, ["tset"])


def test_a_dataset_with_problems_is_not_cached():
  clear_validation_cache()
  dataset = build_dataset({"name": "_test_validate_counting"}, with_stats=False)
  dataset.splits["val"] = ArraySource(image=np.full((2, 2, 2, 3), np.nan,
                                                    np.float32),
                                      label=np.zeros(2, np.int32))
  for _ in range(2):
    with pytest.raises(DataError, match="'val' example 0"):
      validate_dataset(dataset)


def test_a_truncated_whu_ohs_tile_is_named(tmp_path):
  image = np.arange(16 * 16 * 32, dtype=np.int16).reshape(16, 16, 32)
  for folder in ("tr", "val", "ts"):
    (tmp_path / folder / "image").mkdir(parents=True)
    tifffile.imwrite(tmp_path / folder / "image" / "S1_0001.tif", image,
                     photometric="minisblack", planarconfig="contig")
  bad = tmp_path / "ts" / "image" / "S1_0001.tif"
  bad.write_bytes(bad.read_bytes()[:5000])
  dataset = build_dataset({"name": "whu_ohs", "path": str(tmp_path),
                           "task": "unlabelled", "patch_size": 8},
                          with_stats=False)
  with pytest.raises(DataError) as e:
    validate_dataset(dataset)
  message = str(e.value)
  assert "split 'test': 4 of 4 examples" in message
  assert f"'test' example 0 ({bad} (patch at row 0, column 0))" in message


def test_validation_times_of_the_embedded_sample():
  # Reported, not asserted: a loaded 2-core machine would make it flaky.
  dataset = build_dataset(config_lib.base_config().data)
  start = time.perf_counter()
  report = validate_dataset(dataset, use_cache=False)
  print(f"\n{report} ({time.perf_counter() - start:.2f} s)")
  assert report.counts == {"train": 4195, "val": 4970, "test": 5100}


class _MaskFiles:
  """Segmentation examples read from (pretend) label files."""

  def __init__(self, masks, size=4):
    self.masks = masks
    self.size = size

  def __len__(self):
    return len(self.masks)

  def describe(self, index):
    return f"labels/tile_{index:03d}.tif"

  def __getitem__(self, index):
    image = np.ones((self.size, self.size, 3), np.float32)
    return {"image": image, "mask": self.masks[index]}


SEG_INFO = DatasetInfo("seg", bands_lib.RGB, class_names=("a", "b", "c"),
                       task=SEGMENTATION, ignore_index=255)


def test_dense_label_problems_name_the_file_and_the_values():
  masks = [np.zeros((4, 4), np.int32) for _ in range(4)]
  masks[1][0, :3] = [3, 9, 255]       # 3 and 9 are no class; 255 is ignored
  masks[2] = np.zeros((4, 5), np.int32)  # another size than its image
  masks[3][1, 1] = -2
  with pytest.raises(DataError) as e:
    validate_dataset(_toy(SEG_INFO, train=_MaskFiles(masks)))
  message = str(e.value)
  assert "split 'train': 3 of 4 examples" in message
  assert ("'train' example 1 (labels/tile_001.tif): 2 mask pixel(s) have "
          "values [3, 9], outside 0..2 or 255 (ignored)") in message
  assert ("'train' example 2 (labels/tile_002.tif): the mask has shape "
          "(4, 5), the image (4, 4)") in message
  assert "example 3 (labels/tile_003.tif): 1 mask pixel(s) have values [-2]" \
         in message


def test_a_split_without_labelled_pixels_is_an_error():
  labelled = [np.full((4, 4), 255, np.int32) for _ in range(3)]
  labelled[2][3, 3] = 1
  empty = [np.full((4, 4), 255, np.int32) for _ in range(2)]
  dataset = _toy(SEG_INFO, train=_MaskFiles(labelled), test=_MaskFiles(empty))
  with pytest.raises(DataError) as e:
    validate_dataset(dataset)
  message = str(e.value)
  assert message.startswith("Dataset 'seg' cannot be used as it is")
  assert ("split 'test': no labelled pixel in its 2 example(s) (all 255, "
          "ignored), so it gives no loss and no score") in message
  assert "'train'" not in message
  assert "config.data.split_fractions" in message  # the fix
  validate_dataset(dataset, ["train"])  # the labelled split alone is fine
  # Alongside unusable examples of another split, both are reported.
  dataset.splits["val"] = _MaskFiles([np.full((4, 4), 7, np.int32)])
  with pytest.raises(DataError, match=r"(?s)1 unusable example.*split 'val'.*"
                                      r"values \[7\].*split 'test': no "
                                      r"labelled pixel"):
    validate_dataset(dataset)
