"""Tests of the embedded eo-learn sample and its patch dataset."""
import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import stats
from eo_jax.data.datasets import MissingDataError
from eo_jax.data.datasets import eolearn
from eo_jax.data.validate import validate_dataset

# Raw-array hashes of the originals (REFERENCE_SCENES.npy, LULC.npy[..., 0]),
# as recorded in eo_jax/data/sample/PROVENANCE.md.
SCENES_SHA = "5fb5de076e3aab95a4314893963f560387c3547a6377f639aa0878d1538132c2"
LULC_SHA = "a537ee023b97c95818924e746cb3137c3c4304c456867eb37b1662a7ee8096c1"


@pytest.fixture(scope="module")
def sample():
  return eolearn.eolearn_sample()


def test_embedded_arrays_are_the_originals_bit_for_bit():
  assert eolearn.SAMPLE_PATH.stat().st_size < 3e6
  with np.load(eolearn.SAMPLE_PATH, allow_pickle=False) as z:
    assert hashlib.sha256(z["scenes"].tobytes()).hexdigest() == SCENES_SHA
    assert hashlib.sha256(z["lulc"].tobytes()).hexdigest() == LULC_SHA
    assert z["scenes"].dtype == np.float32 and z["scenes"].shape == (5, 101, 100, 13)
    assert tuple(z["band_names"]) == eolearn.L1C_BANDS
    assert z["dates"][0].startswith("2015-08-20")
  assert SCENES_SHA in (eolearn.SAMPLE_PATH.parent / "PROVENANCE.md").read_text()


def test_bands_classes_and_shapes(sample):
  info = sample.info
  assert bands_lib.names(info.bands) == eolearn.L1C_BANDS
  assert bands_lib.names(info.bands)[8] == "B8A"
  assert bands_lib.by_name(info.bands, "B8A").wavelength_nm == pytest.approx(864.7)
  # Cultivated land (id 1, 11 pixels) is below min_class_pixels=100.
  assert info.class_names == ("forest", "grassland", "shrubland",
                              "artificial surface")
  assert info.image_size == (9, 9)
  example = sample.splits["train"][0]
  assert example["image"].shape == (9, 9, 13)
  assert example["image"].dtype == np.float32
  assert example["label"].dtype == np.int32
  # The numbers the module docstring promises.
  assert [len(sample.splits[s]) for s in eolearn.SPLITS] == [4195, 4970, 5100]
  np.testing.assert_array_equal(
      np.bincount(sample.splits["train"].labels), [3580, 445, 125, 45])
  for split in eolearn.SPLITS:
    assert set(np.unique(sample.splits[split].labels)) == {0, 1, 2, 3}


def test_labels_are_the_centre_pixel_and_images_the_scene(sample):
  scenes, lulc, _ = eolearn.load_scene()
  lulc_id = {0: 2, 1: 3, 2: 4, 3: 8}
  for split in eolearn.SPLITS:
    source = sample.splits[split]
    for i in range(0, len(source), 97):
      rows, cols = source.footprint(i)
      centre = lulc[(rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2]
      assert lulc_id[int(source[i]["label"])] == centre
      date = i % 5  # examples cycle through the 5 dates at each centre
      np.testing.assert_array_equal(source[i]["image"], scenes[date, rows, cols])


def _coverage(source, shape):
  covered = np.zeros(shape, bool)
  for i in range(0, len(source), 5):  # one date per centre is enough
    covered[source.footprint(i)] = True
  return covered


@pytest.mark.parametrize("patch_size,stride", [(9, 2), (15, 1), (5, 3)])
def test_splits_are_spatially_disjoint(patch_size, stride):
  ds = eolearn.eolearn_sample(patch_size=patch_size, stride=stride)
  shape = (101, 100)
  cover = {s: _coverage(ds.splits[s], shape) for s in eolearn.SPLITS}
  assert not (cover["train"] & cover["val"]).any()
  assert not (cover["train"] & cover["test"]).any()
  assert not (cover["val"] & cover["test"]).any()
  regions = eolearn.split_regions(*shape)
  for k, split in enumerate(eolearn.SPLITS):
    assert np.all(regions[cover[split]] == k)
    assert ds.splits[split].labels.size > 0


def test_stride_bounds_the_number_of_examples():
  dense = eolearn.eolearn_sample(stride=1, eval_stride=1)
  sparse = eolearn.eolearn_sample(stride=3, eval_stride=3)
  assert len(sparse.splits["train"]) < len(dense.splits["train"]) / 8
  assert len(sparse.splits["val"]) < len(dense.splits["val"]) / 8


def test_bad_arguments_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="odd"):
    eolearn.eolearn_sample(patch_size=8)
  with pytest.raises(ValueError, match="stride"):
    eolearn.eolearn_sample(stride=0)
  with pytest.raises(ValueError, match="min_class_pixels"):
    eolearn.eolearn_sample(min_class_pixels=10**6)
  with pytest.raises(MissingDataError, match="config.data.path"):
    eolearn.eolearn_sample(path=str(tmp_path / "nowhere"))


def _write_eolearn_folder(root, t=3, h=40, w=50):
  """A small eo-learn example_data folder with random content."""
  rng = np.random.default_rng(0)
  scenes = rng.uniform(0.01, 0.5, (t, h, w, 13)).astype(np.float32)
  lulc = rng.choice([0, 2, 3, 8], size=(h, w, 1)).astype(np.uint16)
  stamps = [f"2020-0{m}-01T10:00:00" for m in range(1, 8)]
  nir, red = scenes[..., 7], scenes[..., 3]
  ndvi = np.zeros((7, h, w, 1), np.float32)
  order = [4, 0, 6][:t]  # scene k was taken on date order[k]
  for k, d in enumerate(order):
    ndvi[d, ..., 0] = (nir[k] - red[k]) / (nir[k] + red[k])
  (root / "TestEOPatch/mask_timeless").mkdir(parents=True)
  (root / "TestEOPatch/data").mkdir(parents=True)
  np.save(root / "REFERENCE_SCENES.npy", scenes)
  np.save(root / "TestEOPatch/mask_timeless/LULC.npy", lulc)
  np.save(root / "TestEOPatch/data/NDVI.npy", ndvi)
  (root / "TestEOPatch/timestamps.json").write_text(json.dumps(stamps))
  return scenes, lulc, [stamps[d] for d in order]


def test_write_sample_round_trip_and_folder_path(tmp_path):
  src = tmp_path / "example_data"
  scenes, lulc, dates = _write_eolearn_folder(src)
  hashes = eolearn.write_sample(src, tmp_path / "s.npz")
  assert hashes["REFERENCE_SCENES.npy"] == hashlib.sha256(
      (src / "REFERENCE_SCENES.npy").read_bytes()).hexdigest()
  with np.load(tmp_path / "s.npz") as z:
    np.testing.assert_array_equal(z["scenes"], scenes)
    np.testing.assert_array_equal(z["lulc"], lulc[..., 0])
    assert list(z["dates"]) == dates
  from_npz = eolearn.eolearn_sample(path=str(tmp_path / "s.npz"), patch_size=5,
                                    min_class_pixels=1)
  from_dir = eolearn.eolearn_sample(path=str(src), patch_size=5,
                                    min_class_pixels=1)
  assert from_npz.info == from_dir.info
  assert from_dir.info.class_names == ("forest", "grassland", "artificial surface")
  for split in eolearn.SPLITS:
    a, b = from_npz.splits[split], from_dir.splits[split]
    assert len(a) == len(b) > 0
    np.testing.assert_array_equal(a[len(a) - 1]["image"], b[len(b) - 1]["image"])


def test_folder_with_other_band_names(tmp_path):
  src = tmp_path / "patch"
  (src / "mask_timeless").mkdir(parents=True)
  (src / "data").mkdir()
  np.save(src / "data/BANDS-S2-L1C.npy", np.ones((2, 30, 30, 4), np.float32))
  np.save(src / "mask_timeless/LULC.npy", np.full((30, 30, 1), 2, np.uint16))
  with pytest.raises(ValueError, match="config.data.band_names"):
    eolearn.eolearn_sample(path=str(src))
  ds = eolearn.eolearn_sample(path=str(src), band_names=("B02", "B03", "B04", "B08"),
                              patch_size=3)
  assert bands_lib.names(ds.info.bands) == ("B02", "B03", "B04", "B08")
  assert ds.info.class_names == ("forest",)


# --- task='segmentation', and the classification task on other splits ----


@pytest.fixture(scope="module")
def segmentation():
  return eolearn.eolearn_sample(task="segmentation")


def _class_map(lulc):
  """Land-cover id -> class 0..3 (forest, grassland, shrubland, artificial),
  255 for no data and the dropped cultivated land."""
  out = np.full(lulc.shape, 255, np.int32)
  for k, lulc_id in enumerate((2, 3, 4, 8)):
    out[lulc == lulc_id] = k
  return out


def test_segmentation_masks_are_the_label_map(segmentation):
  info = segmentation.info
  assert info.task == "segmentation" and info.ignore_index == 255
  assert info.class_names == ("forest", "grassland", "shrubland",
                              "artificial surface")
  assert info.image_size == (16, 16) and info.rgb_bands == ("B04", "B03", "B02")
  # The numbers the module docstring promises.
  assert [len(segmentation.splits[s]) for s in eolearn.SPLITS] == [170, 15, 10]
  np.testing.assert_array_equal(stats.class_pixel_counts(segmentation),
                                [35570, 6005, 1105, 190])
  scenes, lulc, _ = eolearn.load_scene()
  classes = _class_map(lulc)
  for split in eolearn.SPLITS:
    source = segmentation.splits[split]
    present = set()
    for i in range(len(source)):
      rows, cols = source.footprint(i)
      example = source[i]
      np.testing.assert_array_equal(example["image"], scenes[i % 5, rows, cols])
      np.testing.assert_array_equal(example["mask"], classes[rows, cols])
      assert example["mask"].dtype == np.int32
      present |= set(np.unique(example["mask"]).tolist())
    assert present >= {0, 1, 2, 3}, split  # every class in every split
  validate_dataset(segmentation)


def test_segmentation_splits_are_a_margin_apart(segmentation):
  cover = {}
  for split in eolearn.SPLITS:
    covered = np.zeros((101, 100), bool)
    source = segmentation.splits[split]
    for i in range(0, len(source), 5):
      covered[source.footprint(i)] = True
    cover[split] = covered
  near_train = ndimage.binary_dilation(cover["train"], np.ones((33, 33), bool))
  assert not (near_train & (cover["val"] | cover["test"])).any()
  near_val = ndimage.binary_dilation(cover["val"], np.ones((33, 33), bool))
  assert not (near_val & cover["test"]).any()
  # Val and test windows do not overlap: each pixel is scored once.
  for split in ("val", "test"):
    source = segmentation.splits[split]
    hits = np.zeros((101, 100), int)
    for i in range(0, len(source), 5):
      hits[source.footprint(i)] += 1
    assert hits.max() == 1


def test_other_splits_of_the_classification_task():
  fixed = eolearn.eolearn_sample(split="fixed_layout")
  assert [len(fixed.splits[s]) for s in eolearn.SPLITS] == [4195, 4970, 5100]
  blocks = eolearn.eolearn_sample(split="spatial_blocks")
  assert blocks.info.class_names == fixed.info.class_names
  assert all(len(blocks.splits[s]) > 0 for s in eolearn.SPLITS)
  scenes, lulc, _ = eolearn.load_scene()
  source = blocks.splits["test"]
  rows, cols = source.footprint(7)
  assert int(source[7]["label"]) == _class_map(lulc)[rows.start + 4,
                                                     cols.start + 4]
  with pytest.raises(errors.ConfigValueError, match="classification task's"):
    eolearn.eolearn_sample(task="segmentation", split="fixed_layout")
  with pytest.raises(errors.ConfigValueError, match="config.data.split must"):
    eolearn.eolearn_sample(split="random")
  with pytest.raises(errors.ConfigValueError, match="config.data.task"):
    eolearn.eolearn_sample(task="detection")
