"""CIFAR-10 (binary release) and CIFAR-10-C, read from fixtures written in
their published layouts."""
import pickle

import numpy as np
import pytest

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
