"""Tests of the 'cube' dataset: your own cube in each supported format.

Every format round-trips: a small cube, its label map and its band
wavelengths are written in the format's own layout, read back through
`build_dataset`, and every patch is compared exactly with the arrays
written.
"""
import pickle

import numpy as np
import pytest
import tifffile

from eo_jax import errors
from eo_jax.data import bands as bands_lib
from eo_jax.data import cube_io
from eo_jax.data.datasets import DataError, MissingDataError, build_dataset
from eo_jax.data.validate import validate_dataset
from hsi_fixtures import write_envi, write_mat

H, W, C = 36, 40, 6
NM = [450.0, 500.0, 550.0, 600.0, 650.0, 700.0]
GEO_TAGS = [(33550, "d", 3, (2.0, 2.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4400000.0, 0.0), True)]


def make_cube(bands=C, dtype=np.uint16):
  """Distinct values: 10000 * band + 100 * row + column."""
  r, c, b = np.mgrid[:H, :W, :bands]
  return (10000 * (b % 6) + 100 * r + c + b // 6).astype(dtype)


def make_labels(unlabelled=0, values=(1, 2, 3)):
  """Classes in 6 x 5 px cells (every split sees all three), some
  unlabelled pixels."""
  r, c = np.mgrid[:H, :W]
  labels = np.asarray(values)[(r // 6 + c // 5) % len(values)]
  labels[(r * 7 + c * 3) % 5 == 0] = unlabelled
  return labels.astype(np.uint8)


def class_ids(labels, unlabelled=0, values=(1, 2, 3)):
  """What the masks must hold: class index, 255 where unlabelled."""
  out = np.full(labels.shape, 255, np.int32)
  for k, v in enumerate(values):
    out[labels == v] = k
  return out


def check_round_trip(ds, cube, labels=None, wavelengths=NM):
  """Every example equals the cube (and the class map) at its footprint."""
  np.testing.assert_allclose(bands_lib.wavelengths(ds.info.bands), wavelengths,
                             rtol=0, atol=1e-9)
  expected = None if labels is None else class_ids(labels)
  for split, source in ds.splits.items():
    assert len(source) > 0, split
    for i in range(len(source)):
      rows, cols = source.footprint(i)
      example = source[i]
      np.testing.assert_array_equal(example["image"],
                                    cube[rows, cols].astype(np.float32))
      if ds.info.task == "segmentation":
        np.testing.assert_array_equal(example["mask"], expected[rows, cols])
      elif ds.info.task == "classification":
        centre = expected[(rows.start + rows.stop) // 2,
                          (cols.start + cols.stop) // 2]
        assert int(example["label"]) == centre != 255


def build(path, **kw):
  data = {"name": "cube", "path": str(path), "patch_size": 8,
          "block_size": 14, **kw}
  return build_dataset(data, with_stats=False)


def test_npy_image_and_label_map(tmp_path):
  cube, labels = make_cube(), make_labels()
  np.save(tmp_path / "cube.npy", cube)
  np.save(tmp_path / "labels.npy", labels[..., None])  # (H, W, 1) is fine
  ds = build(tmp_path / "cube.npy", label_path=str(tmp_path / "labels.npy"),
             task="segmentation", wavelengths=NM)
  assert ds.info.name == "cube" and ds.info.class_names == (
      "class 1", "class 2", "class 3")
  assert ds.info.ignore_index == 255 and ds.info.image_size == (8, 8)
  assert bands_lib.names(ds.info.bands) == tuple(f"B00{i}" for i in range(1, 7))
  assert ds.info.rgb_bands == ("B005", "B003", "B001")  # 650, 550, 450 nm
  check_round_trip(ds, cube, labels)
  validate_dataset(ds)


def test_npz_with_image_and_labels_in_one_file(tmp_path):
  cube, labels = make_cube(dtype=np.float32), make_labels()
  np.savez(tmp_path / "scene.npz", cube=cube, gt=labels, other=np.zeros(3))
  ds = build(tmp_path / "scene.npz", image_variable="cube",
             label_variable="gt", wavelength_range=(450, 700),
             class_names=("water", "forest", "field"), patch_size=7)
  assert ds.info.task == "classification"  # labels given: the default
  assert ds.info.class_names == ("water", "forest", "field")
  check_round_trip(ds, cube, labels)
  with pytest.raises(errors.ConfigValueError, match=r"name the one to read.*"
                                                    r"image_variable"):
    build(tmp_path / "scene.npz", wavelengths=NM)
  with pytest.raises(errors.ConfigValueError, match="no variable 'cub'"):
    build(tmp_path / "scene.npz", image_variable="cub", wavelengths=NM)


@pytest.mark.parametrize("planar", [False, True])
def test_geotiff_keeps_georeferencing_and_reads_gdal_wavelengths(tmp_path,
                                                                 planar):
  cube, labels = make_cube(), make_labels()
  items = "".join(f'<Item name="wavelength" sample="{i}">{w / 1000}</Item>'
                  f'<Item name="wavelength_units" sample="{i}">Micrometers'
                  "</Item>" for i, w in enumerate(NM))
  tags = GEO_TAGS + [(42112, "s", 0, f"<GDALMetadata>{items}</GDALMetadata>",
                      True)]
  data = np.moveaxis(cube, -1, 0) if planar else cube
  tifffile.imwrite(tmp_path / "scene.tif", data, photometric="minisblack",
                   planarconfig="separate" if planar else "contig",
                   extratags=tags)
  tifffile.imwrite(tmp_path / "labels.tif", labels, extratags=GEO_TAGS)
  ds = build(tmp_path / "scene.tif", label_path=str(tmp_path / "labels.tif"),
             task="segmentation")
  check_round_trip(ds, cube, labels)  # wavelengths from the file, in nm
  train = ds.splits["train"]
  assert train.geo.x0 == 500000.0 and train.geo.y0 == 4400000.0
  assert train.geo.dx == 2.0
  assert train.georeference["ModelPixelScale"] == (2.0, 2.0, 0.0)
  top, left = train.corners[0]
  window = train.window_geo(0)
  assert (window.x0, window.y0) == (500000.0 + 2 * left, 4400000.0 - 2 * top)


@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("byte_order", [0, 1])
def test_envi_interleaves_byte_orders_and_micrometres(tmp_path, interleave,
                                                      byte_order):
  cube, labels = make_cube(dtype=np.int16), make_labels()
  hdr, data = write_envi(tmp_path / "scene", cube, interleave, byte_order,
                         data_suffix=".dat" if byte_order else "",
                         wavelengths=[w / 1000 for w in NM],
                         wavelength_units="Micrometers", header_offset=64,
                         extra="map info = {UTM, 1.000, 1.000, 600000.0, "
                               "5000000.0, 5.0, 5.0, 33, North, WGS-84}")
  # The label map: an ENVI classification file with its class names.
  write_envi(tmp_path / "gt", labels[..., None], data_suffix=".img",
             wavelength_units=None,
             extra="file type = ENVI Classification\nclasses = 4\n"
                   "class names = {Unclassified, water, forest, field}")
  # Either file of the pair may be named.
  path = hdr if interleave == "bsq" else data
  ds = build(path, label_path=str(tmp_path / "gt.hdr"), task="segmentation")
  assert ds.info.class_names == ("water", "forest", "field")
  check_round_trip(ds, cube, labels)
  assert ds.splits["val"].geo.x0 == 600000.0
  assert ds.splits["val"].georeference["map info"][0] == "UTM"


def test_envi_without_units_and_bad_headers(tmp_path):
  cube = make_cube()
  hdr, data = write_envi(tmp_path / "a", cube, wavelengths=[w / 1000 for w in NM],
                         wavelength_units=None)
  assert cube_io.read(hdr).wavelengths_nm == pytest.approx(NM)  # < 30: um
  hdr, data = write_envi(tmp_path / "b", cube, wavelengths=NM,
                         wavelength_units="Unknown")
  assert cube_io.read(hdr).wavelengths_nm == pytest.approx(NM)
  hdr, data = write_envi(tmp_path / "c", cube, wavelengths=NM,
                         wavelength_units="Wavenumber")
  with pytest.raises(DataError, match="not a length"):
    cube_io.read(hdr)
  data.write_bytes(data.read_bytes()[:1000])
  with pytest.raises(DataError, match="truncated"):
    cube_io.read(hdr)
  (tmp_path / "d.hdr").write_text("samples = 3\n")
  with pytest.raises(DataError, match="not an ENVI header"):
    cube_io.read(tmp_path / "d.hdr")


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_matlab_files_v5_and_v73(tmp_path, version):
  cube, labels = make_cube(), make_labels()
  write_mat(tmp_path / "scene.mat", {"X": cube, "gt": labels.astype(np.float64)},
            version)
  ds = build(tmp_path / "scene.mat", image_variable="X", label_variable="gt",
             wavelengths=NM, task="segmentation")
  check_round_trip(ds, cube, labels)


@pytest.mark.parametrize("order,store", [
    ("chw", lambda a: np.moveaxis(a, -1, 0)),
    ("bands_first", lambda a: np.moveaxis(a, -1, 0)),
    ("column_major", lambda a: a.T),  # MATLAB / Fortran (H, W, C) seen from C
    ("whc", lambda a: np.swapaxes(a, 0, 1))])
def test_pixel_order_of_numpy_and_matlab_arrays(tmp_path, order, store):
  cube, labels = make_cube(), make_labels()
  np.save(tmp_path / "cube.npy", store(cube))
  # A 2-D label map follows the order without the bands: (H, W) for 'chw',
  # (W, H) for 'column_major' and 'whc'.
  np.save(tmp_path / "labels.npy",
          labels if order in ("chw", "bands_first") else labels.T)
  ds = build(tmp_path / "cube.npy", label_path=str(tmp_path / "labels.npy"),
             pixel_order=order, wavelengths=NM, task="segmentation")
  check_round_trip(ds, cube, labels)
  # The same orders in .mat files of both versions, as MATLAB shows them.
  for version in ("5", "7.3"):
    write_mat(tmp_path / "cube.mat", {"X": store(cube)}, version)
    ds = build(tmp_path / "cube.mat", pixel_order=order, wavelengths=NM,
               task="unlabelled")
    check_round_trip(ds, cube)


def test_a_cube_with_200_bands(tmp_path):
  cube, labels = make_cube(bands=200), make_labels()
  nm = list(np.linspace(400.0, 2500.0, 200))
  hdr, _ = write_envi(tmp_path / "big", cube, "bil", wavelengths=nm)
  np.save(tmp_path / "gt.npy", labels)
  ds = build_dataset({"name": "cube", "path": str(hdr), "patch_size": 7,
                      "block_size": 14, "label_path": str(tmp_path / "gt.npy")})
  assert ds.info.num_bands == 200 and ds.info.bands[-1].name == "B200"
  assert ds.info.bands[0].mean is not None  # train statistics computed
  check_round_trip(ds, cube, labels, wavelengths=nm)
  assert ds.info.rgb_bands == bands_lib.display_bands(ds.info.bands)
  # Band selection by name, as for every dataset; patches stay where they
  # were.
  data = {"name": "cube", "path": str(hdr), "patch_size": 7, "block_size": 14,
          "task": "unlabelled"}
  full = build_dataset(data, with_stats=False).splits["train"]
  picked = build_dataset({**data, "bands": ("B010", "B002")},
                         with_stats=False).splits["train"]
  assert len(picked) == len(full)
  rows, cols = full.footprint(5)
  np.testing.assert_array_equal(picked[5]["image"],
                                cube[rows, cols][..., [9, 1]])


def test_same_names_other_wavelengths_fail_the_band_check(tmp_path):
  cube = make_cube()
  np.save(tmp_path / "cube.npy", cube)
  a = build(tmp_path / "cube.npy", wavelengths=NM, task="unlabelled")
  shifted = NM[:3] + [620.0] + NM[4:]
  b = build(tmp_path / "cube.npy", wavelengths=shifted, task="unlabelled")
  assert bands_lib.names(a.info.bands) == bands_lib.names(b.info.bands)
  with pytest.raises(ValueError, match=r"band mismatch. Band 4 \(B004\) is "
                                       r"centred at 600 nm"):
    bands_lib.check_same(a.info.bands, b.info.bands, "The checkpoint")


def test_classes_from_values_names_and_unlabelled_value(tmp_path):
  cube = make_cube()
  np.save(tmp_path / "cube.npy", cube)
  labels = make_labels(unlabelled=255, values=(0, 1, 2))
  np.save(tmp_path / "gt.npy", labels)
  common = dict(label_path=str(tmp_path / "gt.npy"), wavelengths=NM)
  ds = build(tmp_path / "cube.npy", unlabelled_value=255,
             class_names=("a", "b", "c"), task="segmentation", **common)
  assert ds.info.class_names == ("a", "b", "c")
  mask = ds.splits["train"][0]["mask"]
  rows, cols = ds.splits["train"].footprint(0)
  np.testing.assert_array_equal(
      mask, np.where(labels[rows, cols] == 255, 255, labels[rows, cols]))
  # Explicit values, in another class order.
  ds = build(tmp_path / "cube.npy", unlabelled_value=255,
             class_values=(2, 0, 1), patch_size=7, **common)
  assert ds.info.class_names == ("class 2", "class 0", "class 1")
  label = ds.splits["train"][0]["label"]
  rows, cols = ds.splits["train"].footprint(0)
  centre = labels[(rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2]
  assert int(label) == (2, 0, 1).index(int(centre))
  with pytest.raises(DataError, match=r"values 255 \(.* px\) that are neither"):
    build(tmp_path / "cube.npy", class_values=(0, 1, 2), unlabelled_value=-1,
          **common)
  with pytest.raises(errors.ConfigValueError, match="not both"):
    build(tmp_path / "cube.npy", class_values=(0, 255), unlabelled_value=255,
          **common)


def test_unlabelled_cube_and_errors_that_name_the_fix(tmp_path):
  cube = make_cube()
  np.save(tmp_path / "cube.npy", cube)
  ds = build(tmp_path / "cube.npy", wavelengths=NM)
  assert ds.info.task == "unlabelled" and ds.info.class_names == ()
  assert set(ds.splits["train"][0]) == {"image"}
  with pytest.raises(MissingDataError, match="config.data.path"):
    build(tmp_path / "nothing.npy")
  with pytest.raises(MissingDataError, match="config.data.label_path"):
    build(tmp_path / "cube.npy", wavelengths=NM, label_path="gone.npy")
  with pytest.raises(errors.ConfigValueError, match="config.data.wavelengths"):
    build(tmp_path / "cube.npy")
  with pytest.raises(errors.ConfigValueError, match="needs a label map"):
    build(tmp_path / "cube.npy", wavelengths=NM, task="segmentation")
  np.save(tmp_path / "chw.npy", np.moveaxis(cube, -1, 0)[:, :, :36])
  with pytest.raises(errors.ConfigValueError, match="pixel_order='chw'"):
    build(tmp_path / "chw.npy", wavelengths=NM)
  with pytest.raises(errors.ConfigValueError, match="pixel_order must"):
    build(tmp_path / "cube.npy", wavelengths=NM, pixel_order="xyz")
  np.save(tmp_path / "small.npy", make_labels()[:30])
  with pytest.raises(DataError, match="30 x 40 px but the image"):
    build(tmp_path / "cube.npy", wavelengths=NM,
          label_path=str(tmp_path / "small.npy"))
  (tmp_path / "cube.jp2").write_bytes(b"")
  with pytest.raises(errors.ConfigValueError, match="Cannot tell the format"):
    build(tmp_path / "cube.jp2", wavelengths=NM)


def test_sources_pickle_without_pixels_and_read_them_again(tmp_path):
  cube, labels = make_cube(dtype=np.float32), make_labels()
  write_mat(tmp_path / "scene.mat", {"X": cube, "gt": labels}, "5")
  ds = build(tmp_path / "scene.mat", image_variable="X", label_variable="gt",
             wavelengths=NM, task="segmentation")
  source = ds.splits["train"]
  first = source[0]
  blob = pickle.dumps(source)
  assert len(blob) < cube.nbytes / 2  # the label map, not the cube
  again = pickle.loads(blob)
  np.testing.assert_array_equal(again[0]["image"], first["image"])
  np.testing.assert_array_equal(again[0]["mask"], first["mask"])
