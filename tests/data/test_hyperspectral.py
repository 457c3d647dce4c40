"""Tests of 'indian_pines' and 'pavia_university' on small fake .mat files
with the published file and variable names, MATLAB v5 and v7.3."""
import logging

import numpy as np
import pytest

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets import (DataError, MissingDataError, build_dataset)
from eo_jax.data.datasets import hyperspectral as hs
from eo_jax.data.validate import validate_dataset
from hsi_fixtures import write_mat

H, W = 48, 44


def fake_cube(bands, dtype=np.uint16):
  """(H, W, bands): 1000 + 100 * row + column + band / 1000... as integers:
  every value tells where it came from."""
  r, c, b = np.mgrid[:H, :W, :bands]
  return (1000 + 7 * b + 100 * (r % 10) + 1000 * (c % 7) + 10 * (r // 10)
          ).astype(dtype)


def fake_gt(k, seed=0):
  """uint8 ground truth: classes 1..k in 4 px cells, a third unlabelled."""
  rng = np.random.default_rng(seed)
  cells = (np.arange((H // 4) * (W // 4)) % k + 1).reshape(H // 4, W // 4)
  gt = np.kron(rng.permuted(cells, axis=1), np.ones((4, 4), int))
  gt[rng.random((H, W)) < 0.33] = 0
  return gt.astype(np.uint8)


@pytest.fixture(params=["5", "7.3"])
def indian_pines_dir(tmp_path, request):
  cube, gt = fake_cube(200), fake_gt(16)
  write_mat(tmp_path / "Indian_pines_corrected.mat",
            {"indian_pines_corrected": cube}, request.param)
  write_mat(tmp_path / "Indian_pines_gt.mat", {"indian_pines_gt": gt},
            request.param)
  return tmp_path, cube, gt


@pytest.fixture(params=["5", "7.3"])
def pavia_dir(tmp_path, request):
  cube, gt = fake_cube(103), fake_gt(9, seed=1)
  write_mat(tmp_path / "PaviaU.mat", {"paviaU": cube}, request.param)
  write_mat(tmp_path / "PaviaU_gt.mat", {"paviaU_gt": gt}, request.param)
  return tmp_path, cube, gt


def test_published_band_and_class_tables():
  assert len(hs.AVIRIS_1992_NM) == 220 == len(hs.AVIRIS_1992_CHANNELS)
  assert hs.AVIRIS_1992_NM[0] == pytest.approx(400.02)
  assert hs.AVIRIS_1992_NM[-1] == pytest.approx(2498.96)
  # The spectrometer overlap: channel 32 (696.50 nm), then 34 (686.91 nm).
  assert hs.AVIRIS_1992_NM[30:32] == (696.50, 686.91)
  assert hs.AVIRIS_1992_CHANNELS[30:32] == (32, 34)
  names = bands_lib.names(hs.INDIAN_PINES_200)
  assert len(names) == 200 and names[102:104] == ("B103", "B109")
  assert "B150" not in names and "B163" not in names and "B220" not in names
  assert {"B149", "B164", "B219"} <= set(names)
  # The dropped bands are the 1.4 and 1.9 micrometre water absorptions.
  dropped = [b.wavelength_nm for b in hs.INDIAN_PINES_220
             if b.name not in names]
  assert len(dropped) == 20
  assert all(1350 < w < 1410 or 1810 < w < 1940 or w > 2490 for w in dropped)
  rosis = bands_lib.wavelengths(hs.ROSIS_103)
  assert len(rosis) == 103 and rosis[0] == 430.0 and rosis[-1] == 860.0
  assert len(hs.INDIAN_PINES_CLASSES) == 16 and len(hs.PAVIA_UNIVERSITY_CLASSES) == 9
  assert hs.INDIAN_PINES_CLASSES[8] == "Oats"
  assert hs.PAVIA_UNIVERSITY_CLASSES[-1] == "Shadows"


def test_indian_pines_classification_patches_are_the_cube(indian_pines_dir):
  root, cube, gt = indian_pines_dir
  ds = build_dataset({"name": "indian_pines", "path": str(root),
                      "patch_size": 5, "block_size": 12}, with_stats=False)
  info = ds.info
  assert info.task == "classification" and info.num_bands == 200
  assert info.class_names == hs.INDIAN_PINES_CLASSES
  assert info.image_size == (5, 5) and info.ignore_index is None
  assert bands_lib.by_name(info.bands, "B001").wavelength_nm == pytest.approx(400.02)
  assert info.rgb_bands == bands_lib.display_bands(info.bands) != ()
  seen = 0
  for split in ("train", "val", "test"):
    source = ds.splits[split]
    assert len(source) > 0
    for i in range(0, len(source), 7):
      rows, cols = source.footprint(i)
      example = source[i]
      np.testing.assert_array_equal(example["image"], cube[rows, cols])
      assert example["image"].dtype == np.float32
      centre = gt[rows.start + 2, cols.start + 2]
      assert centre > 0 and int(example["label"]) == centre - 1
      seen += 1
  assert seen > 30
  # Every labelled pixel whose patch fits its split's area is a centre.
  total = sum(len(s) for s in ds.splits.values())
  assert 0.2 * (gt > 0).sum() < total < (gt > 0).sum()


def test_pavia_segmentation_masks_and_unlabelled(pavia_dir):
  root, cube, gt = pavia_dir
  ds = hs.pavia_university(path=str(root), task="segmentation", patch_size=8,
                           block_size=16)
  assert ds.info.ignore_index == 255 and ds.info.num_classes == 9
  assert ds.info.num_bands == 103
  for split, source in ds.splits.items():
    assert len(source) > 0
    for i in range(len(source)):
      rows, cols = source.footprint(i)
      example = source[i]
      np.testing.assert_array_equal(example["image"], cube[rows, cols])
      expected = gt[rows, cols].astype(np.int32) - 1
      expected[expected < 0] = 255
      np.testing.assert_array_equal(example["mask"], expected)
      assert example["mask"].dtype == np.int32
  validate_dataset(ds)
  unlabelled = hs.pavia_university(path=str(root), task="unlabelled",
                                   patch_size=8, block_size=16)
  assert unlabelled.info.class_names == ()
  assert set(unlabelled.splits["train"][0]) == {"image"}


def test_both_mat_versions_give_the_same_dataset(tmp_path):
  cube, gt = fake_cube(103), fake_gt(9)
  built = []
  for version in ("5", "7.3"):
    folder = tmp_path / version
    folder.mkdir()
    write_mat(folder / "PaviaU.mat", {"paviaU": cube}, version)
    write_mat(folder / "PaviaU_gt.mat", {"paviaU_gt": gt}, version)
    built.append(hs.pavia_university(path=str(folder), patch_size=7))
  a, b = built
  assert a.info == b.info
  for split in a.splits:
    np.testing.assert_array_equal(a.splits[split].corners, b.splits[split].corners)
    np.testing.assert_array_equal(a.splits[split].labels, b.splits[split].labels)
    np.testing.assert_array_equal(a.splits[split][3]["image"],
                                  b.splits[split][3]["image"])


def test_uncorrected_indian_pines_has_220_bands(tmp_path):
  write_mat(tmp_path / "Indian_pines.mat", {"indian_pines": fake_cube(220)}, "5")
  write_mat(tmp_path / "Indian_pines_gt.mat", {"indian_pines_gt": fake_gt(16)},
            "5")
  ds = hs.indian_pines(path=str(tmp_path), corrected=False, patch_size=5,
                       task="unlabelled")
  assert ds.info.num_bands == 220
  assert ds.info.bands[103].name == "B104"
  # The corrected cube is missing: it names the file to download.
  with pytest.raises(MissingDataError, match="Indian_pines_corrected.mat"):
    hs.indian_pines(path=str(tmp_path))


def test_leaky_split_is_explicit_and_warns(indian_pines_dir, caplog):
  root, _, gt = indian_pines_dir
  with caplog.at_level(logging.WARNING):
    ds = hs.indian_pines(path=str(root), patch_size=5,
                         split="random_pixels_leaky")
  assert "inflated" in caplog.text
  # Nearly every labelled pixel whose patch fits the scene is a centre.
  inner = (gt[2:-2, 2:-2] > 0).sum()
  assert sum(len(s) for s in ds.splits.values()) == inner
  train = np.zeros(gt.shape, bool)
  for i in range(len(ds.splits["train"])):
    train[ds.splits["train"].footprint(i)] = True
  test = ds.splits["test"]
  overlaps = sum(train[test.footprint(i)].any() for i in range(len(test)))
  assert overlaps > 0.9 * len(test)  # the leak this option is named after


def test_missing_and_wrong_files_are_named(tmp_path, indian_pines_dir):
  with pytest.raises(MissingDataError,
                     match="ehu.eus.*config.data.path.*indian_pines_gt"):
    hs.indian_pines(path=None)
  with pytest.raises(MissingDataError, match="PaviaU.mat"):
    hs.pavia_university(path=str(tmp_path / "nowhere"))
  root, cube, gt = indian_pines_dir
  bad = gt.copy()
  bad[0, :3] = 17
  write_mat(root / "Indian_pines_gt.mat", {"indian_pines_gt": bad}, "5")
  with pytest.raises(DataError, match=r"Indian_pines_gt.mat has values 17 \(3 px\)"):
    hs.indian_pines(path=str(root))
  write_mat(root / "Indian_pines_gt.mat", {"indian_pines_gt": gt[:40]}, "5")
  with pytest.raises(DataError, match=r"shape \(40, 44\) but the image"):
    hs.indian_pines(path=str(root))
  write_mat(root / "Indian_pines_gt.mat", {"gt": gt}, "5")
  with pytest.raises(DataError, match="no variable 'indian_pines_gt'"):
    hs.indian_pines(path=str(root))
  write_mat(root / "Indian_pines_gt.mat", {"indian_pines_gt": gt}, "7.3")
  write_mat(root / "Indian_pines_corrected.mat",
            {"indian_pines_corrected": cube[..., :150]}, "7.3")
  with pytest.raises(DataError, match=r"\(H, W, 200\)"):
    hs.indian_pines(path=str(root))


def test_bad_settings_name_the_key(indian_pines_dir):
  root = str(indian_pines_dir[0])
  with pytest.raises(errors.ConfigValueError, match="odd"):
    hs.indian_pines(path=root, patch_size=6)
  with pytest.raises(errors.ConfigValueError, match="config.data.task"):
    hs.indian_pines(path=root, task="detection")
  with pytest.raises(errors.ConfigValueError, match="config.data.split must"):
    hs.indian_pines(path=root, split="random")
  with pytest.raises(errors.ConfigValueError, match="larger than the 48 x 44"):
    hs.indian_pines(path=root, patch_size=51)
  with pytest.raises(errors.ConfigValueError, match="gets no"):
    hs.indian_pines(path=root, task="segmentation", patch_size=20,
                    block_size=22)
