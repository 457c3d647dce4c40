"""Tests of band helpers: bands from wavelengths, display bands, band checks."""
import numpy as np
import pytest

from eo_jax import errors
from eo_jax.data import bands as bands_lib


def test_bands_from_wavelengths_names_and_checks():
  bands = bands_lib.bands_from_wavelengths([450, 550.5, 650])
  assert bands_lib.names(bands) == ("B001", "B002", "B003")
  assert bands_lib.wavelengths(bands) == (450.0, 550.5, 650.0)
  assert bands[1].long_name == "550.5 nm"
  named = bands_lib.bands_from_wavelengths([450, 550], names=("blue", "green"),
                                           resolution_m=2.0)
  assert bands_lib.names(named) == ("blue", "green")
  assert named[0].resolution_m == 2.0
  wide = bands_lib.bands_from_wavelengths(np.linspace(400, 2500, 1200))
  assert wide[0].name == "B0001" and wide[-1].name == "B1200"
  with pytest.raises(errors.ConfigValueError, match=r"\(2, -5.0\)"):
    bands_lib.bands_from_wavelengths([450, -5])
  with pytest.raises(errors.ConfigValueError, match="nan"):
    bands_lib.bands_from_wavelengths([450, float("nan")])
  with pytest.raises(errors.ConfigValueError, match="2 band names for 3"):
    bands_lib.bands_from_wavelengths([1, 2, 3], names=("a", "b"))
  with pytest.raises(errors.ConfigValueError, match=r"\['a'\]"):
    bands_lib.bands_from_wavelengths([1, 2], names=("a", "a"))


def test_display_bands_are_the_nearest_to_red_green_blue():
  cube = bands_lib.bands_from_wavelengths(np.arange(400, 1001, 10))
  # 640, 550 and 470 nm are bands 25, 16 and 8 (1-based).
  assert bands_lib.display_bands(cube) == ("B025", "B016", "B008")
  s2 = bands_lib.display_bands(bands_lib.SENTINEL2)
  assert s2 == ("B04", "B03", "B02")
  # Bands that do not reach the visible range give no true colour.
  swir = bands_lib.bands_from_wavelengths(np.arange(1000, 2500, 10))
  assert bands_lib.display_bands(swir) == ()
  assert bands_lib.display_bands(cube[:2]) == ()
  one_visible = bands_lib.bands_from_wavelengths([545, 560, 900])
  assert bands_lib.display_bands(one_visible) == ()  # R, G, B not distinct


def test_band_check_compares_wavelengths_not_only_names():
  sensor_a = bands_lib.bands_from_wavelengths([450, 550, 650])
  sensor_b = bands_lib.bands_from_wavelengths([450, 570, 650])
  assert bands_lib.names(sensor_a) == bands_lib.names(sensor_b)
  with pytest.raises(ValueError, match="band mismatch") as e:
    bands_lib.check_same(sensor_a, sensor_b, "The checkpoint")
  assert isinstance(e.value, errors.UserError)
  assert "Band 2 (B002) is centred at 550 nm" in str(e.value)
  assert "570 nm here" in str(e.value)
  # Wavelengths written with fewer decimals are the same band.
  rounded = bands_lib.bands_from_wavelengths([450.4, 549.6, 650])
  bands_lib.check_same(sensor_a, rounded, "x")
  # Statistics and long names do not matter.
  with_stats = tuple(b.with_stats(1.0, 2.0) for b in sensor_a)
  bands_lib.check_same(sensor_a, with_stats, "x")
  with pytest.raises(ValueError, match=r"band mismatch. Expected 3 bands"):
    bands_lib.check_same(sensor_a, sensor_a[:2], "x")
