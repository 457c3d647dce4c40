"""Tests of the 's2_scene' reader on fake scenes written as per-band GeoTIFFs."""
import os
import pickle

import numpy as np
import pytest
import tifffile

from eo_jax.data.datasets import MissingDataError, build_dataset
from eo_jax.data.datasets import s2_scene as s2

BANDS_10 = ("B02", "B03", "B04", "B08")
BANDS_20 = ("B05", "B06", "B07", "B8A", "B11", "B12")
BANDS_60 = ("B01", "B09", "B10")
ALL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
       "B10", "B11", "B12")


def ramp(shape, base):
  """base + 100 * row + 2 * col: linear, so bilinear upsampling is exact, and
  unique within a 36 x 36 band, so a patch's content gives its position."""
  r, c = np.mgrid[:shape[0], :shape[1]]
  return (base + 100 * r + 2 * c).astype(np.uint16)


def base_of(band):
  return 1000 + 100 * ALL.index(band)  # distinct per band, never 0


def geotags(x0, y0, res, epsg=32618):
  """GeoTIFF tags as GDAL writes them (PixelIsArea, a UTM CRS)."""
  keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, epsg)
  return [(33550, "d", 3, (float(res), float(res), 0.0), True),
          (33922, "d", 6, (0.0, 0.0, 0.0, float(x0), float(y0), 0.0), True),
          (34735, "H", len(keys), keys, True)]


def write_scene(root, size=36, sizes=None, geo=None, skip=(), zero=None,
                prefix="s2_", ext=".jp2"):
  """Writes a 13-band scene; returns {band: native array}.

  Args:
    size: 10 m side; 20 m bands get size/2, 60 m bands size/6 (rounded up).
    sizes: optional {band: (rows, cols)} overrides.
    geo: optional {res: (x0, y0)} writes georeferencing tags.
    zero: optional (rows, cols) of the 10 m grid to set to 0 in every band.
  """
  root.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for bands, res in ((BANDS_10, 10), (BANDS_20, 20), (BANDS_60, 60)):
    for b in bands:
      if b in skip:
        continue
      n = -(-size * 10 // res)
      shape = (sizes or {}).get(b, (n, n))
      a = ramp(shape, base_of(b))
      if zero is not None:
        k = res // 10
        a[:-(-zero[0] // k), :-(-zero[1] // k)] = 0
      extratags = geotags(*geo[res], res) if geo else []
      tifffile.imwrite(root / f"{prefix}{b}{ext}", a, extratags=extratags)
      arrays[b] = a
  return arrays


def test_resampling_to_10m_grid_without_georeferencing(tmp_path):
  native = write_scene(tmp_path)
  cube, bands = s2.load_cube(tmp_path, scale=False)
  assert cube.shape == (36, 36, 13) and cube.dtype == np.float32
  assert tuple(b.name for b in bands) == ALL
  # 10 m bands are untouched.
  np.testing.assert_array_equal(cube[..., ALL.index("B02")], native["B02"])
  # Bilinear of a linear ramp is exact inside: 10 m pixel (5, 7) is at 20 m
  # coordinates ((5 + .5) / 2 - .5, (7 + .5) / 2 - .5) = (2.25, 3.25).
  b05 = cube[..., ALL.index("B05")]
  assert b05[5, 7] == pytest.approx(base_of("B05") + 225 + 6.5)
  # Outside the outermost 20 m centres the edge value is repeated.
  assert b05[0, 0] == base_of("B05")
  assert b05[35, 35] == base_of("B05") + 1700 + 34
  nearest, _ = s2.load_cube(tmp_path, bands=("B09",), resampling="nearest",
                            scale=False)
  # Aligned corners + nearest = block replication of the 60 m pixels.
  expected = np.repeat(np.repeat(native["B09"], 6, 0), 6, 1)
  np.testing.assert_array_equal(nearest[..., 0], expected)


def test_georeferenced_grids_use_their_true_offsets(tmp_path):
  # As in the real scene: the 20 m grid starts one 10 m pixel further west,
  # the 60 m grid also 20 m further north.
  native = write_scene(tmp_path, geo={10: (1010, 5000), 20: (1000, 5000),
                                      60: (1000, 5020)})
  cube, _ = s2.load_cube(tmp_path, bands=("B05", "B01", "B03"),
                         resampling="nearest", scale=False)
  i, j = np.mgrid[:36, :36]
  # 20 m column of a 10 m pixel centre x = 1010 + 10 j + 5: (j + 1) // 2.
  np.testing.assert_array_equal(
      cube[..., 0], native["B05"][i // 2, np.minimum((j + 1) // 2, 17)])
  # 60 m: row (i + 2) // 6 (20 m offset), column (j + 1) // 6 (10 m offset);
  # the last rows/columns lie past the 60 m grid and repeat its edge.
  np.testing.assert_array_equal(
      cube[..., 1], native["B01"][np.minimum((i + 2) // 6, 5),
                                  np.minimum((j + 1) // 6, 5)])
  np.testing.assert_array_equal(cube[..., 2], native["B03"])
  bilinear, _ = s2.load_cube(tmp_path, bands=("B05",), scale=False)
  # (5, 7) -> 20 m (2.25, 0.5 + 3.75 - 0.5 = 3.75).
  assert bilinear[5, 7, 0] == pytest.approx(base_of("B05") + 225 + 7.5)


def test_edge_mismatch_of_coarse_grids_is_tolerated(tmp_path):
  # 40 px at 10 m: the 60 m band is cut to 7 px (42 at 10 m), 20 m to 20.
  write_scene(tmp_path, size=40)
  cube, _ = s2.load_cube(tmp_path)
  assert cube.shape == (40, 40, 13)


def test_band_order_follows_the_requested_names(tmp_path):
  native = write_scene(tmp_path, prefix="T18SUJ_20180807_", ext=".tif")
  ds = s2.s2_scene(path=str(tmp_path), bands=("B8A", "B02", "B10"),
                   patch_size=12, val_fraction=0.0, scale=False,
                   resampling="nearest")
  assert tuple(b.name for b in ds.info.bands) == ("B8A", "B02", "B10")
  assert ds.info.bands[0].wavelength_nm == pytest.approx(864.7)
  assert ds.info.rgb_bands == ()  # B04/B03 not selected
  image = ds.splits["train"][0]["image"]
  np.testing.assert_array_equal(image[..., 1], native["B02"][:12, :12])
  def blocks(a, k):
    return np.repeat(np.repeat(a, k, 0), k, 1)
  np.testing.assert_array_equal(image[..., 0], blocks(native["B8A"][:6, :6], 2))
  np.testing.assert_array_equal(image[..., 2], blocks(native["B10"][:2, :2], 6))


def test_default_info_and_reflectance_scale(tmp_path):
  native = write_scene(tmp_path)
  ds = s2.s2_scene(path=str(tmp_path), patch_size=4)
  info = ds.info
  assert tuple(b.name for b in info.bands) == ALL
  assert info.task == "unlabelled" and info.rgb_bands == ("B04", "B03", "B02")
  assert info.image_size == (4, 4)
  # Default val_fraction 0.1: the bottom round(3.6) = 4 rows.
  assert (len(ds.splits["train"]), len(ds.splits["val"])) == (8 * 9, 9)
  example = ds.splits["train"][0]
  assert set(example) == {"image"}
  assert example["image"].shape == (4, 4, 13)
  assert example["image"].dtype == np.float32
  np.testing.assert_allclose(example["image"][..., 1],
                             native["B02"][:4, :4] / 10000.0, rtol=1e-6)


def test_patch_positions_and_spatially_disjoint_holdout(tmp_path):
  native = write_scene(tmp_path)["B02"]
  ds = s2.s2_scene(path=str(tmp_path), bands=("B02",), patch_size=12, stride=6,
                   val_fraction=1 / 3, scale=False)

  def where(patch):  # the position of a patch, found by its content
    hits = [(r, c) for r in range(25) for c in range(25)
            if np.array_equal(native[r:r + 12, c:c + 12], patch[..., 0])]
    assert len(hits) == 1
    return hits[0]
  train = [where(ex["image"]) for ex in ds.splits["train"]]
  val = [where(ex["image"]) for ex in ds.splits["val"]]
  # 36 rows: the bottom 12 are val. Train corners: rows 0, 6, 12 (12 + 12
  # = 24 is the last fitting), columns 0, 6, ..., 24.
  assert train == [(r, c) for r in (0, 6, 12) for c in (0, 6, 12, 18, 24)]
  assert val == [(24, c) for c in (0, 6, 12, 18, 24)]
  assert max(r for r, _ in train) + 12 <= min(r for r, _ in val)


def test_holdout_too_small_for_a_patch_is_an_error(tmp_path):
  write_scene(tmp_path)
  with pytest.raises(ValueError, match="val_fraction"):
    s2.s2_scene(path=str(tmp_path), patch_size=12, val_fraction=0.2)


def test_mostly_nodata_patches_are_skipped(tmp_path):
  # Rows 0-11, columns 0-17 are 0 in every band: patch (0, 0) is all
  # nodata, patch (0, 12) half nodata.
  write_scene(tmp_path, zero=(12, 18))
  kw = dict(path=str(tmp_path), patch_size=12, val_fraction=0.0,
            resampling="nearest")
  half = s2.s2_scene(max_nodata_fraction=0.5, **kw).splits["train"]
  strict = s2.s2_scene(max_nodata_fraction=0.4, **kw).splits["train"]
  everything = s2.s2_scene(max_nodata_fraction=1.0, **kw).splits["train"]
  assert len(everything) == 9
  assert [tuple(c) for c in half.corners] == [
      (0, 12), (0, 24), (12, 0), (12, 12), (12, 24), (24, 0), (24, 12), (24, 24)]
  assert len(strict) == 7 and (0, 12) not in [tuple(c) for c in strict.corners]


def test_max_patches_spreads_over_the_split(tmp_path):
  write_scene(tmp_path)
  kw = dict(path=str(tmp_path), patch_size=6, val_fraction=0.0)
  full = s2.s2_scene(**kw).splits["train"]
  capped = s2.s2_scene(max_patches=4, **kw).splits["train"]
  assert len(full) == 36 and len(capped) == 4
  got = [tuple(c) for c in capped.corners]
  assert got[0] == (0, 0) and got[-1] == (30, 30)
  assert set(got) <= {tuple(c) for c in full.corners}


def test_source_pickles_without_pixels(tmp_path):
  write_scene(tmp_path)
  source = s2.s2_scene(path=str(tmp_path), patch_size=12,
                       val_fraction=0.0).splits["train"]
  blob = pickle.dumps(source)
  assert len(blob) < 20_000  # headers and corners only, not the 13 bands
  np.testing.assert_array_equal(pickle.loads(blob)[4]["image"],
                                source[4]["image"])


def test_rewritten_file_is_not_served_from_the_cache(tmp_path):
  write_scene(tmp_path)
  first, _ = s2.load_cube(tmp_path, bands=("B02",), scale=False)
  tifffile.imwrite(tmp_path / "s2_B02.jp2", np.full((36, 36), 7, np.uint16))
  os.utime(tmp_path / "s2_B02.jp2", ns=(1, 1))
  second, _ = s2.load_cube(tmp_path, bands=("B02",), scale=False)
  assert first[0, 0, 0] == base_of("B02") and np.all(second == 7)


def test_build_dataset_selects_bands_and_computes_stats(tmp_path):
  native = write_scene(tmp_path)
  ds = build_dataset({"name": "s2_scene", "path": str(tmp_path),
                      "bands": ("B04", "B03"), "patch_size": 12,
                      "val_fraction": 0.0, "scale": False})
  b04 = ds.info.bands[0]
  assert (b04.name, ds.info.num_bands) == ("B04", 2)
  assert b04.mean == pytest.approx(native["B04"].mean())


def test_missing_folder_names_the_config_key(tmp_path):
  with pytest.raises(MissingDataError, match="config.data.path"):
    s2.s2_scene(path=str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(MissingDataError, match="_B01"):
    s2.load_cube(tmp_path / "empty")


def test_missing_band_names_the_band_and_the_fix(tmp_path):
  write_scene(tmp_path, skip=("B09",))
  with pytest.raises(ValueError, match=r"B09.*config.data.bands="):
    s2.s2_scene(path=str(tmp_path))
  ds = s2.s2_scene(path=str(tmp_path), bands=("B02", "B8A"), patch_size=4)
  assert ds.info.num_bands == 2
  with pytest.raises(ValueError, match="B13"):
    s2.s2_scene(path=str(tmp_path), bands=("B13",))
  with pytest.raises(ValueError, match="NIR"):
    s2.s2_scene(path=str(tmp_path), bands=("NIR",))
  with pytest.raises(ValueError, match="named group"):
    s2.s2_scene(path=str(tmp_path), pattern=r"_B\d\d\.jp2$")


def test_bad_files_give_clear_errors(tmp_path):
  write_scene(tmp_path / "dup")
  tifffile.imwrite(tmp_path / "dup" / "copy_B02.tif",
                   np.ones((36, 36), np.uint16))
  with pytest.raises(ValueError, match="Two files for band B02"):
    s2.load_cube(tmp_path / "dup")
  write_scene(tmp_path / "jp2")
  # A genuine JPEG 2000 file starts with this signature box.
  (tmp_path / "jp2" / "s2_B03.jp2").write_bytes(
      b"\x00\x00\x00\x0cjP  \r\n\x87\n")
  with pytest.raises(ValueError, match="not a TIFF.*gdal_translate"):
    s2.load_cube(tmp_path / "jp2")
  write_scene(tmp_path / "odd", sizes={"B05": (13, 18)})
  with pytest.raises(ValueError, match="B05.*integer fraction"):
    s2.load_cube(tmp_path / "odd")


def test_georeferencing_mismatches_are_refused(tmp_path):
  geo = {10: (1010, 5000), 20: (1000, 5000), 60: (1000, 5020)}
  write_scene(tmp_path, geo=geo)
  tifffile.imwrite(tmp_path / "s2_B05.jp2", ramp((18, 18), 5),
                   extratags=geotags(1000, 5000, 20, epsg=32619))
  with pytest.raises(ValueError, match="EPSG:32619.*reproject"):
    s2.load_cube(tmp_path, bands=("B05",))
  tifffile.imwrite(tmp_path / "s2_B05.jp2", ramp((18, 18), 5),
                   extratags=geotags(9000, 5000, 20))
  with pytest.raises(ValueError, match="does not cover"):
    s2.load_cube(tmp_path, bands=("B05",))


# --------------------------------------------------------------- Landsat-8

L8_30M = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B9", "B10", "B11")


def write_landsat8(root, size=24):
  """USGS names: l8_B1.tif ... l8_B11.tif at 30 m, B8 (15 m) twice as fine
  over the same area (georeferenced, as USGS writes them), and a BQA file
  that is not a band. Returns {band: native array}."""
  root.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for i, band in enumerate(L8_30M + ("B8",)):
    res = 15 if band == "B8" else 30
    arrays[band] = ramp((size * 30 // res,) * 2, 5000 + 1000 * i)
    tifffile.imwrite(root / f"l8_{band}.tif", arrays[band],
                     extratags=geotags(452490, 3408630, res))
  tifffile.imwrite(root / "l8_BQA.tif", np.full((size, size), 2720, np.uint16))
  return arrays


def test_landsat8_scene_grid_bands_and_reflectance(tmp_path):
  arrays = write_landsat8(tmp_path)
  ds = build_dataset({"name": "l8_scene", "path": str(tmp_path), "patch_size": 8,
                      "val_fraction": 1 / 3})
  assert ds.info.name == "l8_scene"
  # The 30 m bands by default, the panchromatic band left out; the grid is
  # the 30 m one (the 15 m B8 file does not set it): 16 train rows -> 2
  # patch rows x 3 columns, 8 val rows -> 1 x 3.
  assert [b.name for b in ds.info.bands] == list(L8_30M)
  assert ds.info.rgb_bands == ("B4", "B3", "B2")
  assert [b.wavelength_nm for b in ds.info.bands][:2] == [443.0, 482.0]
  train = ds.split("train")
  assert (len(train), len(ds.split("val"))) == (6, 3)
  image = train[1]["image"]  # corner (0, 8)
  dn = np.stack([arrays[b][:8, 8:16] for b in L8_30M], -1).astype(np.float64)
  # Reflective OLI bands: DN x 2e-5 - 0.1; thermal B10, B11 stay DN.
  np.testing.assert_allclose(image[..., :8], dn[..., :8] * 2e-5 - 0.1, atol=1e-6)
  np.testing.assert_array_equal(image[..., 8:], dn[..., 8:])


def test_landsat8_band_selection_by_either_spelling(tmp_path):
  arrays = write_landsat8(tmp_path)
  ds = s2.l8_scene(path=str(tmp_path), bands=("B05", "b2", "B8"), patch_size=8,
                   val_fraction=0.0, scale=False)
  assert [b.name for b in ds.info.bands] == ["B5", "B2", "B8"]
  image = ds.split("train")[0]["image"]
  np.testing.assert_array_equal(image[..., 0], arrays["B5"][:8, :8])
  # B8 is twice as fine as the grid: resampled onto the 30 m grid, where a
  # pixel covers 2 x 2 of its pixels.
  assert image.shape == (8, 8, 3)
  fine = arrays["B8"][:16, :16].astype(np.float64)
  assert image[..., 2].min() >= fine.min() and image[..., 2].max() <= fine.max()
  with pytest.raises(ValueError, match="'landsat8'"):
    s2.l8_scene(path=str(tmp_path), sensor="sentinel2")
  with pytest.raises(MissingDataError, match="Landsat-8 scene not found.*landsat8/"):
    s2.l8_scene(path=str(tmp_path / "none_here"))
  with pytest.raises(ValueError, match=r"no file for band\(s\) \['B1'\]"):
    os.remove(tmp_path / "l8_B1.tif")
    s2.l8_scene(path=str(tmp_path))
