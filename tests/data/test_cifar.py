"""CIFAR-10 (binary release or prepared TFDS data) and CIFAR-10-C, read from
fixtures written in their published layouts."""
import io
import pickle
import types

import numpy as np
import pytest
from PIL import Image

from cifar_fixtures import (CLASSES, image, pixel, write_cifar10,
                            write_cifar10_archive, write_cifar10_c)
from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import DATASETS, DataError, MissingDataError, build_dataset
from eo_jax.data.datasets import cifar

# Not the published order: the names must come from batches.meta.txt.
SHUFFLED = CLASSES[::-1]
PER_BATCH = 4  # 20 training records, 2 per class


@pytest.fixture
def batches(tmp_path):
  return write_cifar10(tmp_path / "data", per_batch=PER_BATCH, num_test=6,
                       class_names=SHUFFLED)


def record_id(example):
  """Which record an example came from: pixel (0, 0, R) is 31 id mod 256."""
  value = int(example["image"][0, 0, 0])
  return next(r for r in list(range(20)) + list(range(1000, 1006))
              if pixel(r, 0, 0, 0) == value)


def test_records_decode_to_planes_row_major(batches):
  ds = DATASETS.get("cifar10")(path=str(batches), val_fraction=0.0)
  # Test record 3: offset 1 + 1024 c + 32 y + x of its bytes is pixel (y, x, c).
  raw = open(f"{batches}/test_batch.bin", "rb").read()[3 * 3073:4 * 3073]
  example = ds.split("test")[3]
  assert example["image"].dtype == np.float32 and example["image"].shape == (32, 32, 3)
  for y, x, c in ((0, 0, 0), (2, 5, 1), (31, 7, 2), (17, 30, 0)):
    assert example["image"][y, x, c] == raw[1 + 1024 * c + 32 * y + x] == pixel(1003, y, x, c)
  assert int(example["label"]) == raw[0] == 3
  np.testing.assert_array_equal(example["image"], image(1003))
  assert ds.info.class_names == SHUFFLED
  assert ds.info.bands == bands_lib.RGB and ds.info.rgb_bands == ("R", "G", "B")
  assert ds.info.image_size == (32, 32)
  assert [int(ds.split("train")[i]["label"]) for i in range(20)] == [i % 10 for i in range(20)]


def test_val_is_a_stratified_part_of_the_training_batches(batches):
  ds = DATASETS.get("cifar10")(path=str(batches), val_fraction=0.5, split_seed=1)
  train = [record_id(ds.split("train")[i]) for i in range(len(ds.split("train")))]
  val = [record_id(ds.split("val")[i]) for i in range(len(ds.split("val")))]
  assert sorted(train + val) == list(range(20)) and not set(train) & set(val)
  # One of each class's two records in each split.
  assert sorted(r % 10 for r in val) == list(range(10))
  assert [record_id(ds.split("test")[i]) for i in range(6)] == list(range(1000, 1006))
  again = DATASETS.get("cifar10")(path=str(batches), val_fraction=0.5, split_seed=1)
  assert [record_id(again.split("val")[i]) for i in range(10)] == val
  other = DATASETS.get("cifar10")(path=str(batches), val_fraction=0.5, split_seed=2)
  assert [record_id(other.split("val")[i]) for i in range(10)] != val


def test_the_archive_and_the_folders_above_give_the_same_data(batches, tmp_path):
  archive = write_cifar10_archive(batches, tmp_path / "cifar-10-binary.tar.gz")
  reference = DATASETS.get("cifar10")(path=str(batches), val_fraction=0.5)
  for path in (archive, batches.rsplit("/", 1)[0], tmp_path):
    ds = DATASETS.get("cifar10")(path=str(path), val_fraction=0.5)
    assert ds.info == reference.info
    for split in ("train", "val", "test"):
      a, b = ds.split(split), reference.split(split)
      assert len(a) == len(b)
      for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        assert a[i]["label"] == b[i]["label"]
  source = DATASETS.get("cifar10")(path=str(archive)).split("test")
  assert "cifar-10-binary.tar.gz!test_batch.bin, record 2" in source.describe(2)


def test_build_dataset_and_pickled_sources(batches):
  ds = build_dataset(dict(name="cifar10", path=str(batches), val_fraction=0.5))
  train = ds.split("train")
  pixels = np.stack([train[i]["image"] for i in range(len(train))])
  np.testing.assert_allclose([b.mean for b in ds.info.bands], pixels.mean((0, 1, 2)),
                             rtol=1e-6)
  # Grain workers get pickled sources: the memory map is reopened there.
  copy = pickle.loads(pickle.dumps(train))
  np.testing.assert_array_equal(copy[3]["image"], train[3]["image"])


def test_cifar10_errors_name_the_fix(batches, tmp_path):
  with pytest.raises(MissingDataError, match="cifar-10-binary.tar.gz"):
    DATASETS.get("cifar10")(path=None)
  with pytest.raises(MissingDataError, match="kriz/cifar-10-binary"):
    DATASETS.get("cifar10")(path=str(tmp_path / "nowhere"))
  python_version = tmp_path / "py" / "cifar-10-batches-py"
  python_version.mkdir(parents=True)
  with pytest.raises(errors.ConfigValueError, match="pickled python version"):
    DATASETS.get("cifar10")(path=str(tmp_path / "py"))
  with open(f"{batches}/data_batch_2.bin", "ab") as f:
    f.write(b"\x00" * 100)
  with pytest.raises(DataError, match="data_batch_2.bin.*truncated"):
    DATASETS.get("cifar10")(path=str(batches))
  with open(f"{batches}/data_batch_2.bin", "wb") as f:
    f.write(bytes([12]) + bytes(3072))
  with pytest.raises(DataError, match="label 12"):
    DATASETS.get("cifar10")(path=str(batches))
  (tmp_path / "data" / "cifar-10-batches-bin" / "batches.meta.txt").unlink()
  with pytest.raises(MissingDataError, match="batches.meta.txt"):
    DATASETS.get("cifar10")(path=str(batches))


# ------------------------------------------------------------------- TFDS
def _prepare_tfds(batches, data_dir, drop_ids=False):
  """Prepares TFDS's own cifar10 builder from the binary fixture `batches`
  (instead of a download) as ArrayRecord in `data_dir`: TFDS reads the label
  names, the records and their ids itself, and writes its real feature spec."""
  tfds = pytest.importorskip("tensorflow_datasets")
  from tensorflow_datasets.image_classification import cifar as tfds_cifar

  class Downloads:
    def download_and_extract(self, url):
      del url
      return batches.rsplit("/", 1)[0]  # holds cifar-10-batches-bin/

  class FixtureCifar10(tfds_cifar.Cifar10, skip_registration=True):
    name = "cifar10"

    def _split_generators(self, dl_manager):
      del dl_manager
      return super()._split_generators(Downloads())

    def _generate_examples(self, split_prefix, filepaths):
      for key, record in super()._generate_examples(split_prefix, filepaths):
        # PNG bytes: encoding an array would import TensorFlow (seconds).
        png = io.BytesIO()
        Image.fromarray(record["image"]).save(png, format="PNG")
        record = {**record, "image": png.getvalue()}
        yield key, ({**record, "id": "x"} if drop_ids else record)

  # TFDS's binary reader opens files with tf.io.gfile; plain open reads the
  # same bytes without importing TensorFlow.
  gfile = types.SimpleNamespace(GFile=open)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tfds_cifar, "tf", types.SimpleNamespace(
        io=types.SimpleNamespace(gfile=gfile)))
    FixtureCifar10(data_dir=str(data_dir),
                   file_format="array_record").download_and_prepare()
  return str(data_dir), tfds


def _same_examples(a, b):
  assert len(a) == len(b)
  for i in range(len(a)):
    assert a[i]["image"].dtype == b[i]["image"].dtype == np.float32
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"].dtype == b[i]["label"].dtype == np.int32
    assert a[i]["label"] == b[i]["label"]


def test_tfds_source_gives_the_binary_release_example_for_example(batches, tmp_path):
  data_dir, tfds = _prepare_tfds(batches, tmp_path / "tfds")
  # TFDS stores the records shuffled: the reader must restore the order.
  raw = tfds.data_source("cifar10", split="train", data_dir=data_dir)
  raw_ids = [raw[i]["id"].decode() for i in range(len(raw))]
  assert sorted(raw_ids) == [f"train_{r:05d}" for r in range(20)] != raw_ids

  files = DATASETS.get("cifar10")(path=batches, val_fraction=0.5, split_seed=1)
  from_tfds = DATASETS.get("cifar10")(path=data_dir, source="tfds",
                                      val_fraction=0.5, split_seed=1)
  assert from_tfds.info == files.info and from_tfds.info.class_names == SHUFFLED
  assert list(from_tfds.splits) == list(files.splits)
  for split in ("train", "val", "test"):
    _same_examples(from_tfds.split(split), files.split(split))
    np.testing.assert_array_equal(from_tfds.split(split).labels,
                                  files.split(split).labels)
  test = from_tfds.split("test")
  assert [record_id(test[i]) for i in range(6)] == list(range(1000, 1006))
  np.testing.assert_array_equal(test[4]["image"], image(1004))
  assert "TFDS cifar10 test split" in test.describe(2)
  # Grain workers get pickled sources.
  copy = pickle.loads(pickle.dumps(from_tfds.split("val")))
  _same_examples(copy, files.split("val"))
  # The same band statistics through the config path (which reads every example).
  built = build_dataset(dict(name="cifar10", source="tfds", path=data_dir,
                             val_fraction=0.5, split_seed=1))
  reference = build_dataset(dict(name="cifar10", path=batches, val_fraction=0.5,
                                 split_seed=1))
  assert built.info.bands == reference.info.bands


def test_tfds_errors_name_the_fix(batches, tmp_path):
  with pytest.raises(MissingDataError) as e:
    DATASETS.get("cifar10")(path=str(tmp_path / "empty"), source="tfds")
  for part in ("'cifar10'", "kriz/cifar-10-binary.tar.gz", "config.data.path",
               "array_record"):
    assert part in str(e.value)
  with pytest.raises(errors.ConfigValueError, match=r"\['files', 'tfds'\].*'hf'"):
    DATASETS.get("cifar10")(path=batches, source="hf")
  data_dir, _ = _prepare_tfds(batches, tmp_path / "no_ids", drop_ids=True)
  with pytest.raises(DataError, match="train_00000.*source='files'"):
    DATASETS.get("cifar10")(path=data_dir, source="tfds")


# ------------------------------------------------------------- CIFAR-10-C
N_TEST = 4


def corrupted(severity):
  """Severity s of every test image: the clean one plus 10 s (mod 256)."""
  return np.stack([(image(1000 + t).astype(int) + 10 * severity) % 256
                   for t in range(N_TEST)]).astype(np.uint8)


@pytest.fixture
def cifar_c(tmp_path):
  return write_cifar10_c(tmp_path, [t % 10 for t in range(N_TEST)],
                         {"gaussian_noise": corrupted, "defocus_blur": corrupted})


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_cifar10_c_reads_one_severity_block(cifar_c, severity):
  for path in (cifar_c, cifar_c.rsplit("/", 1)[0]):
    ds = DATASETS.get("cifar10_c")(path=path, corruption="gaussian_noise",
                                   severity=severity)
    test = ds.split("test")
    assert list(ds.splits) == ["test"] and len(test) == N_TEST
    for t in range(N_TEST):
      np.testing.assert_array_equal(test[t]["image"], corrupted(severity)[t])
      assert int(test[t]["label"]) == t % 10
  assert ds.info.class_names == CLASSES and ds.info.bands[0].name == "R"
  assert f"image {(severity - 1) * N_TEST + 2}" in test.describe(2)
  # Bands carry CIFAR-10's training statistics: no train split is needed.
  built = build_dataset(dict(name="cifar10_c", path=cifar_c, corruption="defocus_blur",
                             severity=severity))
  np.testing.assert_allclose([b.mean for b in built.info.bands],
                             255 * np.array([0.4914, 0.4822, 0.4465]), rtol=1e-3)


def test_cifar10_c_errors_name_the_fix(cifar_c, tmp_path):
  assert len(cifar.CORRUPTIONS) == 15
  with pytest.raises(errors.ConfigValueError, match="gaussian_noise.*jpeg_compression"):
    DATASETS.get("cifar10_c")(path=cifar_c, corruption="haze", severity=1)
  with pytest.raises(errors.ConfigValueError, match="severities"):
    DATASETS.get("cifar10_c")(path=cifar_c, corruption="gaussian_noise", severity=6)
  with pytest.raises(MissingDataError, match="fog.npy.*zenodo.org/records/2535967"):
    DATASETS.get("cifar10_c")(path=cifar_c, corruption="fog", severity=1)
  with pytest.raises(MissingDataError, match="2535967"):
    DATASETS.get("cifar10_c")(path=str(tmp_path / "nowhere"), corruption="fog")
  np.save(f"{cifar_c}/contrast.npy", np.zeros((5 * N_TEST, 32, 32, 1), np.uint8))
  with pytest.raises(DataError, match="contrast.npy"):
    DATASETS.get("cifar10_c")(path=cifar_c, corruption="contrast", severity=1)
