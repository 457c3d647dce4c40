"""Tests of the EuroSAT readers on fixtures in the published layouts."""
import io
import zipfile

import numpy as np
import pytest
import tifffile
from PIL import Image

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import MissingDataError, build_dataset
from eo_jax.data.datasets import eurosat

PER_CLASS = 5
MS_SUBDIR = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"


def ms_array(label, n, size=16):
  """Plane b (file order) holds 1000 (b + 1) + 10 label + n: band, class and
  file are all readable back from any pixel."""
  planes = [np.full((size, size), 1000 * (b + 1) + 10 * label + n) for b in range(13)]
  return np.stack(planes, -1).astype(np.uint16)


def rgb_colour(label, n):
  return np.array([20 * label + 5, 10 * n + 50, 200 - 15 * label], np.uint8)


def write_ms(folder, per_class=PER_CLASS, planar=False):
  for label, cls in enumerate(eurosat.CLASSES):
    (folder / cls).mkdir(parents=True)
    for n in range(1, per_class + 1):
      arr = ms_array(label, n)
      if planar:  # (13, H, W) planes, as some GDAL writers store them
        tifffile.imwrite(folder / cls / f"{cls}_{n}.tif", np.moveaxis(arr, -1, 0),
                         photometric="minisblack", planarconfig="separate")
      else:
        tifffile.imwrite(folder / cls / f"{cls}_{n}.tif", arr,
                         photometric="minisblack", planarconfig="contig")


def write_rgb(folder, per_class=PER_CLASS, size=16):
  for label, cls in enumerate(eurosat.CLASSES):
    (folder / cls).mkdir(parents=True)
    for n in range(1, per_class + 1):
      img = np.broadcast_to(rgb_colour(label, n), (size, size, 3))
      Image.fromarray(np.ascontiguousarray(img)).save(
          folder / cls / f"{cls}_{n}.jpg", quality=95)


def zip_folder(folder, zip_path):
  with zipfile.ZipFile(zip_path, "w") as z:
    for f in sorted(folder.rglob("*")):
      if f.is_file():
        z.write(f, f.relative_to(folder.parent).as_posix())


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("eurosat_rgb")
  write_rgb(root / "2750")
  zip_folder(root / "2750", root / "EuroSAT.zip")
  return root


@pytest.fixture(scope="module")
def ms_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("eurosat_ms")
  write_ms(root / MS_SUBDIR)
  return root


def _check_rgb(ds):
  assert ds.info.class_names == eurosat.CLASSES
  assert bands_lib.names(ds.info.bands) == ("R", "G", "B")
  assert ds.info.image_size == (16, 16)
  total = 0
  for source in ds.splits.values():
    for i in range(len(source)):
      ex = source[i]
      assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.float32
      label = int(ex["label"])
      # Solid colours survive JPEG within a couple of levels; the green level
      # differs per file, so it also tells files apart.
      greens = {n: rgb_colour(label, n)[1] for n in range(1, PER_CLASS + 1)}
      n = min(greens, key=lambda k: abs(greens[k] - ex["image"][8, 8, 1]))
      np.testing.assert_allclose(ex["image"][8, 8], rgb_colour(label, n), atol=3)
    total += len(source)
  assert total == 10 * PER_CLASS


@pytest.mark.parametrize("where", ["parent", "folder", "zip"])
def test_rgb_layouts(rgb_root, where):
  path = {"parent": rgb_root, "folder": rgb_root / "2750",
          "zip": rgb_root / "EuroSAT.zip"}[where]
  _check_rgb(eurosat.eurosat(path=str(path), variant="rgb"))


@pytest.mark.parametrize("planar", [False, True])
def test_ms_band_order_by_name_b8a_last(tmp_path, planar):
  write_ms(tmp_path / MS_SUBDIR, per_class=2, planar=planar)
  ds = eurosat.eurosat(path=str(tmp_path), variant="all")
  names = bands_lib.names(ds.info.bands)
  assert names == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08",
                   "B09", "B10", "B11", "B12", "B8A")
  assert ds.info.bands[-1].wavelength_nm == pytest.approx(864.7)
  assert ds.info.rgb_bands == ("B04", "B03", "B02")
  ex = ds.splits["train"][0]
  assert ex["image"].shape == (16, 16, 13)
  label = int(ex["label"])
  np.testing.assert_array_equal(ex["image"][0, 0] // 1000, np.arange(1, 14))
  assert (ex["image"][0, 0, 0] % 1000) // 10 == label


def test_build_dataset_selects_ms_bands_by_name_with_stats(ms_root):
  ds = build_dataset({"name": "eurosat", "path": str(ms_root), "variant": "all",
                      "bands": ("B8A", "B04")})
  assert bands_lib.names(ds.info.bands) == ("B8A", "B04")
  train = ds.split("train")
  ex = train[0]
  # B8A is the 13th plane of the file, B04 the 4th.
  assert ex["image"][0, 0, 0] // 1000 == 13 and ex["image"][0, 0, 1] // 1000 == 4
  values = np.array([train[i]["image"][0, 0] for i in range(len(train))], np.float64)
  b8a, b04 = ds.info.bands
  assert b8a.mean == pytest.approx(values[:, 0].mean())
  assert b04.std == pytest.approx(values[:, 1].std())  # constant images


def test_split_is_stratified_deterministic_and_disjoint(ms_root):
  a = eurosat.eurosat(path=str(ms_root), variant="all", split_seed=1)
  b = eurosat.eurosat(path=str(ms_root), variant="all", split_seed=1)
  c = eurosat.eurosat(path=str(ms_root), variant="all", split_seed=2)

  def ids(ds, split):
    s = ds.splits[split]
    return sorted(int(s[i]["image"][0, 0, 0]) for i in range(len(s)))

  for split, per_class in (("train", 3), ("val", 1), ("test", 1)):
    np.testing.assert_array_equal(np.bincount(a.splits[split].labels),
                                  [per_class] * 10)
    assert ids(a, split) == ids(b, split)
  all_ids = ids(a, "train") + ids(a, "val") + ids(a, "test")
  assert len(set(all_ids)) == len(all_ids) == 10 * PER_CLASS
  assert ids(a, "train") != ids(c, "train")
  with pytest.raises(ValueError, match="split_fractions"):
    eurosat.eurosat(path=str(ms_root), variant="all", split_fractions=(0.5, 0.5))


def test_missing_data_names_url_and_config_key(tmp_path, rgb_root):
  for path in (None, str(tmp_path / "nowhere")):
    with pytest.raises(MissingDataError) as e:
      eurosat.eurosat(path=path)
    assert "EuroSAT.zip" in str(e.value) and "config.data.path" in str(e.value)
  with pytest.raises(MissingDataError, match="EuroSATallBands.zip"):
    eurosat.eurosat(path=str(tmp_path), variant="all")  # empty folder
  with pytest.raises(MissingDataError, match=r"\.tif"):
    eurosat.eurosat(path=str(rgb_root), variant="all")  # JPEGs only
  with pytest.raises(ValueError, match="'rgb' or 'all'"):
    eurosat.eurosat(path=str(rgb_root), variant="ms")


def test_reading_is_lazy_and_corrupt_files_are_named(tmp_path):
  write_rgb(tmp_path / "EuroSAT_RGB", per_class=2)
  write_ms(tmp_path / "EuroSAT_MS", per_class=2)
  bad_jpg = tmp_path / "EuroSAT_RGB/SeaLake/SeaLake_2.jpg"
  bad_jpg.write_bytes(bad_jpg.read_bytes()[:100])  # truncated
  bad_tif = tmp_path / "EuroSAT_MS/River/River_1.tif"
  bad_tif.write_bytes(b"II*\x00garbage")
  odd_tif = tmp_path / "EuroSAT_MS/Forest/Forest_2.tif"
  tifffile.imwrite(odd_tif, ms_array(1, 2, size=8), photometric="minisblack",
                   planarconfig="contig")
  for variant, bad in (("rgb", [bad_jpg]), ("all", [bad_tif, odd_tif])):
    ds = eurosat.eurosat(path=str(tmp_path), variant=variant)  # reads 1 file
    failures = []
    for source in ds.splits.values():
      for i in range(len(source)):
        try:
          source[i]
        except ValueError as e:
          failures.append(str(e))
    assert len(failures) == len(bad)
    for f in bad:
      assert any(f.name in msg and ("corrupt" in msg) for msg in failures)


def test_corrupt_zip_is_reported(tmp_path):
  (tmp_path / "EuroSAT.zip").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="not a readable zip"):
    eurosat.eurosat(path=str(tmp_path / "EuroSAT.zip"))


def test_zip_source_survives_pickling(rgb_root):
  import pickle
  ds = eurosat.eurosat(path=str(rgb_root / "EuroSAT.zip"))
  source = ds.splits["val"]
  first = source[0]["image"]
  again = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(again[0]["image"], first)


# ------------------------------------------------------------------ TFDS
tfds = pytest.importorskip("tensorflow_datasets")
from tensorflow_datasets.image_classification import eurosat as tfds_eurosat  # noqa: E402


class _FakeEurosat(tfds_eurosat.Eurosat, skip_registration=True):
  """TFDS's own EuroSAT builder, fed with fixture examples instead of a
  download, so the prepared files have exactly the real feature spec."""
  name = "eurosat"

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(None, self.builder_config.selection)}

  def _generate_examples(self, path, selection):
    del path
    for label, cls in enumerate(tfds_eurosat._LABELS):  # pylint: disable=protected-access
      for n in range(1, 4):
        name = f"{cls}_{n}"
        if selection == "rgb":
          img = np.broadcast_to(rgb_colour(label, n), (64, 64, 3))  # TFDS spec
          png = io.BytesIO()
          Image.fromarray(np.ascontiguousarray(img)).save(png, format="PNG")
          record = {"image": png.getvalue(), "label": cls, "filename": name}
        else:
          record = {"sentinel2": ms_array(label, n, 64).astype(np.float32),
                    "label": cls, "filename": name}
        yield name, record


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  for config in ("rgb", "all"):
    builder = _FakeEurosat(config=config, data_dir=str(data_dir),
                           file_format="array_record")
    builder.download_and_prepare()
  return data_dir


@pytest.mark.parametrize("variant", ["rgb", "all"])
def test_tfds_source(tfds_dir, variant):
  ds = eurosat.eurosat(path=str(tfds_dir), variant=variant, source="tfds")
  assert sum(len(s) for s in ds.splits.values()) == 30
  train = ds.splits["train"]
  read = [int(train[i]["label"]) for i in range(len(train))]
  np.testing.assert_array_equal(train.labels, read)
  np.testing.assert_array_equal(np.bincount(read), [2] * 10)
  seen = set()
  for source in ds.splits.values():
    for i in range(len(source)):
      ex = source[i]
      label = int(ex["label"])
      if variant == "rgb":
        assert ex["image"].shape == (64, 64, 3)
        n = int(ex["image"][0, 0, 1] - 50) // 10
        np.testing.assert_array_equal(ex["image"][0, 0], rgb_colour(label, n))
      else:
        assert ex["image"].shape == (64, 64, 13)
        assert bands_lib.names(ds.info.bands)[-1] == "B8A"
        n = int(ex["image"][0, 0, 0]) % 10
        np.testing.assert_array_equal(ex["image"], ms_array(label, n, 64))
      seen.add((label, n))
  assert len(seen) == 30  # every record once, labels matching content


def test_tfds_missing_is_reported(tmp_path):
  with pytest.raises(MissingDataError, match="config.data.path"):
    eurosat.eurosat(path=str(tmp_path), source="tfds")


def test_unknown_source_is_a_config_error_naming_the_choices(tmp_path):
  from eo_jax import errors  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigValueError, match="'files'.*'tfds'.*'hdf5'"):
    eurosat.eurosat(path=str(tmp_path), source="hdf5")
