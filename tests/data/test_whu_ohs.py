"""Tests of the 'whu_ohs' reader on a tiny copy of the published layout."""
import pickle

import numpy as np
import pytest
import tifffile

from eo_jax.data import bands as bands_lib
from eo_jax.data import stats
from eo_jax.data.datasets import DataError, MissingDataError, build_dataset
from eo_jax.data.datasets import whu_ohs as whu
from eo_jax.data.validate import validate_dataset

TILE = 16
SPLITS = {"tr": ("O2_0001", "S1_0001", "S1_0002"), "val": ("S1_0003", "T1_0001"),
          "ts": ("S1_0004", "T1_0002")}
GEO = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
       (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4400000.0, 0.0), True)]


def image_values(t):
  """int16 (H, W, 32): 1000 * band + 256 * t + 16 * row + col."""
  r, c, b = np.mgrid[:TILE, :TILE, :32]
  return (1000 * b + 256 * t + 16 * r + c).astype(np.int16)


def label_values(t):
  """uint8 labels (0 = unlabelled) with known per-patch (8 x 8) content."""
  label = np.zeros((TILE, TILE), np.uint8)
  if t == 0:
    label[:8, :8] = 3                  # patch (0, 0): all class 3
    # patch (0, 8): unlabelled
    label[8:, :8].flat[:20] = 5        # patch (8, 0): 20 x class 5,
    label[8:, :8].flat[20:32] = 7      # 12 x class 7: half labelled
    label[8:, 8:].flat[:8] = 24        # patch (8, 8): 8 x 24, 8 x 1: a tie,
    label[8:, 8:].flat[8:16] = 1       # a quarter labelled
  else:
    label[:] = 10
    label[0, 0] = 0
  return label


def write_tile(split_dir, name, t, planar=False):
  (split_dir / "image").mkdir(parents=True, exist_ok=True)
  (split_dir / "label").mkdir(parents=True, exist_ok=True)
  image = image_values(t)
  if planar:  # GDAL INTERLEAVE=BAND
    tifffile.imwrite(split_dir / "image" / f"{name}.tif",
                     np.moveaxis(image, -1, 0),
                     photometric="minisblack", planarconfig="separate",
                     extratags=GEO)
  else:  # GDAL's default INTERLEAVE=PIXEL
    tifffile.imwrite(split_dir / "image" / f"{name}.tif", image,
                     photometric="minisblack", planarconfig="contig",
                     extratags=GEO)
  tifffile.imwrite(split_dir / "label" / f"{name}.tif", label_values(t),
                   extratags=GEO)


@pytest.fixture
def root(tmp_path):
  for folder, names in SPLITS.items():
    for t, name in enumerate(names):
      write_tile(tmp_path / folder, name, t)
  return tmp_path


def build(root, **kw):
  kw.setdefault("patch_size", 8)
  return whu.whu_ohs(path=str(root), **kw)


def test_band_metadata():
  bands = bands_lib.WHU_OHS
  assert bands_lib.names(bands) == tuple(f"B{i:02d}" for i in range(1, 33))
  w = np.array(bands_lib.wavelengths(bands))
  assert w[0] == 466 and w[-1] == 940 and np.all(np.diff(w) > 0)
  # The authors render true colour from 670, 566 and 480 nm.
  assert [bands_lib.by_name(bands, b).wavelength_nm for b in whu.RGB_BANDS] == [
      670, 566, 480]
  assert len(whu.CLASSES) == 24 == len(set(whu.CLASSES))
  assert whu.CLASSES[0] == "Paddy field" and whu.CLASSES[23] == "Ocean"


def test_segmentation_patches_masks_and_ignore_index(root):
  ds = build(root)
  info = ds.info
  assert info.task == "segmentation" and info.ignore_index == 255
  assert info.num_classes == 24 and info.num_bands == 32
  assert info.image_size == (8, 8) and info.rgb_bands == ("B14", "B07", "B02")
  train = ds.splits["train"]
  # Tiles sorted by name: O2_0001 (t=0) loses its unlabelled patch (0, 8);
  # the other two keep all 4 patches.
  assert len(train) == 3 + 4 + 4
  assert (len(ds.splits["val"]), len(ds.splits["test"])) == (3 + 4, 3 + 4)
  first = train[0]
  assert set(first) == {"image", "mask"}
  assert first["image"].shape == (8, 8, 32)
  assert first["image"].dtype == np.float32
  assert first["mask"].shape == (8, 8) and first["mask"].dtype == np.int32
  np.testing.assert_allclose(first["image"], image_values(0)[:8, :8] / 1e4,
                             rtol=1e-6)
  assert np.all(first["mask"] == 2)  # class 3 -> index 2
  third = train[2]  # patch (8, 8) of tile 0
  np.testing.assert_allclose(third["image"] * 1e4, image_values(0)[8:, 8:],
                             rtol=1e-6)
  expected = label_values(0)[8:, 8:].astype(np.int32) - 1
  expected[expected < 0] = 255
  np.testing.assert_array_equal(third["mask"], expected)
  assert (third["mask"] == 23).sum() == 8 and (third["mask"] == 255).sum() == 48
  everything = build(root, drop_unlabelled=False).splits["train"]
  assert len(everything) == 12 and np.all(everything[1]["mask"] == 255)


def test_classification_majority_and_labelled_fraction(root):
  ds = build(root, task="classification")
  assert ds.info.ignore_index is None
  labels = [int(ex["label"]) for ex in ds.splits["train"]]
  # Tile 0: class 3 -> 2; (0, 8) dropped; 20 x 5 vs 12 x 7 -> 4; tie 24/1 ->
  # the lower id 1 -> 0 (exactly 0.25 labelled: kept). Other tiles: 10 -> 9.
  assert labels == [2, 4, 0] + [9] * 8
  strict = build(root, task="classification", min_labelled_fraction=0.3)
  assert [int(ex["label"]) for ex in strict.splits["train"]] == [2, 4] + [9] * 8
  assert strict.splits["train"][1]["label"].dtype == np.int32


def test_unlabelled_needs_no_labels(root):
  for folder in SPLITS:
    for f in (root / folder / "label").iterdir():
      f.unlink()
  ds = build(root, task="unlabelled")
  assert ds.info.class_names == () and len(ds.splits["train"]) == 12
  assert set(ds.splits["train"][5]) == {"image"}
  with pytest.raises(MissingDataError, match="label of tile O2_0001"):
    build(root)


def test_planar_tiles_read_like_interleaved_ones(tmp_path):
  for folder in SPLITS:
    write_tile(tmp_path / folder, "S1_0001", 1, planar=True)
  planar = build(tmp_path, task="unlabelled", scale=False).splits["train"]
  assert len(planar) == 4
  np.testing.assert_array_equal(planar[3]["image"], image_values(1)[8:, 8:])


def test_band_selection_and_raw_values(root):
  ds = build(root, bands=("B14", "B07", "B02"), scale=False)
  assert bands_lib.names(ds.info.bands) == ("B14", "B07", "B02")
  assert ds.info.bands[0].wavelength_nm == 670
  image = ds.splits["val"][0]["image"]
  np.testing.assert_array_equal(image, image_values(0)[:8, :8][..., [13, 6, 1]])
  assert build(root, bands=("B01",)).info.rgb_bands == ()
  with pytest.raises(ValueError, match="B33"):
    build(root, bands=("B33",))


def test_split_lists_prefixes_and_max_tiles(root):
  (root / "train.txt").write_text("# S1 only\ntr/image/S1_0002.tif\nS1_0001\n")
  ds = build(root, task="unlabelled", split_dirs={"train": "tr"},
             split_lists={"train": "train.txt"})
  assert list(ds.splits) == ["train"]
  assert [t.name for t in ds.splits["train"].tiles] == ["S1_0002", "S1_0001"]
  ds = build(root, task="unlabelled", tile_prefixes=("T1",),
             split_dirs={"val": "val", "test": "ts"})
  assert [t.name for t in ds.splits["val"].tiles] == ["T1_0001"]
  ds = build(root, task="unlabelled", max_tiles=2)
  assert [t.name for t in ds.splits["train"].tiles] == ["O2_0001", "S1_0002"]
  (root / "bad.txt").write_text("S9_0001\n")
  with pytest.raises(ValueError, match="S9_0001"):
    build(root, split_lists={"train": "bad.txt"})
  with pytest.raises(ValueError, match="No WHU-OHS tiles"):
    build(root, tile_prefixes=("S7",))


def test_source_pickles_without_pixels(root):
  source = build(root).splits["train"]
  source[0]  # fills the tile cache
  blob = pickle.dumps(source)
  assert len(blob) < 10_000
  again = pickle.loads(blob)
  np.testing.assert_array_equal(again[5]["mask"], source[5]["mask"])


def test_build_dataset_statistics(root):
  ds = build_dataset({"name": "whu_ohs", "path": str(root), "patch_size": 8,
                      "task": "unlabelled", "bands": ("B02", "B01"),
                      "scale": False})
  b02 = ds.info.bands[0]
  assert b02.name == "B02"
  # Train tiles t = 0, 1, 2 of band index 1: 1000 + 256 t + mean(16 r + c).
  assert b02.mean == pytest.approx(1000 + 256 + 16 * 7.5 + 7.5)


def test_missing_data_and_bad_files(root, tmp_path):
  with pytest.raises(MissingDataError,
                     match="irsip.whu.edu.cn.*config.data.path"):
    whu.whu_ohs(path=str(tmp_path / "nowhere"))
  with pytest.raises(MissingDataError, match="config.data.path"):
    whu.whu_ohs(path=None)
  with pytest.raises(MissingDataError, match="split folder 'ts2'"):
    build(root, split_dirs={"test": "ts", "extra": "ts2"})
  with pytest.raises(ValueError, match="task"):
    build(root, task="detection")
  with pytest.raises(ValueError, match="larger than"):
    build(root, patch_size=32)
  tifffile.imwrite(root / "tr" / "label" / "S1_0001.tif",
                   np.full((TILE, TILE), 30, np.uint8))
  with pytest.raises(ValueError, match=r"S1_0001.tif has values \[30\]"):
    build(root)
  tifffile.imwrite(root / "tr" / "image" / "O2_0001.tif",
                   np.zeros((TILE, TILE, 31), np.int16), planarconfig="contig",
                   photometric="minisblack")
  with pytest.raises(ValueError, match="31 band"):
    build(root, task="unlabelled")


def test_tile_of_another_size_fails_when_read(root):
  tifffile.imwrite(root / "tr" / "image" / "S1_0002.tif",
                   np.zeros((8, 8, 32), np.int16), planarconfig="contig",
                   photometric="minisblack")
  train = build(root, task="unlabelled").splits["train"]
  train[0]
  with pytest.raises(ValueError, match="S1_0002.tif has shape"):
    train[8]


def test_segmentation_passes_the_dense_label_checks_and_counts(root):
  # The published rule: 0 = unlabelled (ignored), classes 1..24 -> 0..23.
  ds = build(root)
  report = validate_dataset(ds)
  assert report.counts == {"train": 11, "val": 7, "test": 7}
  for split, folder in (("train", "tr"), ("val", "val"), ("test", "ts")):
    expected = np.zeros(24, np.int64)
    for t, _ in enumerate(SPLITS[folder]):
      label = label_values(t).astype(np.int64)
      # Dropped patches hold no labelled pixel, so whole tiles count.
      expected += np.bincount(label[label > 0] - 1, minlength=24)
    np.testing.assert_array_equal(stats.class_pixel_counts(ds, split), expected)
  weights = stats.class_weights_from_counts(stats.class_pixel_counts(ds))
  assert weights[9] > 0 and weights[1] == 0  # class 10 present, 2 absent


def test_an_unlabelled_test_split_fails_validation(root):
  for name in SPLITS["ts"]:
    tifffile.imwrite(root / "ts" / "label" / f"{name}.tif",
                     np.zeros((TILE, TILE), np.uint8), extratags=GEO)
  ds = build(root, drop_unlabelled=False)
  with pytest.raises(DataError, match=r"split 'test': no labelled pixel in "
                                      r"its 8 example\(s\) \(all 255"):
    validate_dataset(ds)
