"""Shared plotting helpers: saving figures as PNGs, and RGB composites of
N-band images (band choice by index or name, stretch, flat and missing
values, errors)."""
import inspect
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from eo_jax.data import bands
from eo_jax.visualize import (attention, confusion, curves, figures, heatmaps,
                              pca, reconstruction, segmentation_maps)

PLOTS = (attention.plot_attention, confusion.plot_confusion_matrix,
         curves.plot_curves, heatmaps.plot_evidence, pca.plot_patch_pca,
         reconstruction.plot_reconstruction, segmentation_maps.plot_segmentation)


@pytest.mark.parametrize("plot", PLOTS, ids=lambda f: f.__name__)
def test_plot_functions_return_figures_and_take_no_path(plot):
  parameters = inspect.signature(plot).parameters
  assert "path" not in parameters
  assert plot.__annotations__["return"] == "Figure"
  # Options are keyword-only: a call still passing an output path where the
  # path used to be fails loudly instead of becoming a title or a flag.
  for p in parameters.values():
    if p.default is not p.empty:
      assert p.kind == p.KEYWORD_ONLY, p.name


# --- save_figure ------------------------------------------------------------


def test_save_figure_creates_folders_and_returns_the_path(tmp_path):
  fig = Figure(figsize=(3.0, 2.0))
  fig.subplots().plot([0, 1], [1, 0])
  target = tmp_path / "a" / "b" / "fig.png"
  path = figures.save_figure(fig, target)
  assert isinstance(path, str) and path == str(target)
  with Image.open(path) as im:
    assert im.format == "PNG"
    assert im.size == (300, 200)  # inches times the default 100 dpi
  assert figures.save_figure(fig, tmp_path / "hi.png", dpi=50) == str(
      tmp_path / "hi.png")
  with Image.open(tmp_path / "hi.png") as im:
    assert im.size == (150, 100)


# --- rgb_composite ----------------------------------------------------------


def test_rgb_composite_picks_and_stretches_bands():
  ramp = np.linspace(0, 100, 101 * 4).reshape(101, 4)
  image = np.stack([ramp, 2 * ramp + 5, np.full_like(ramp, 7.0)], -1)
  out = figures.rgb_composite(image, (1, 0, 2), percentiles=(0, 100))
  assert out.shape == (101, 4, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[..., 0], ramp / 100, atol=1e-6)
  np.testing.assert_allclose(out[..., 1], ramp / 100, atol=1e-6)
  np.testing.assert_allclose(out[..., 2], 0.5)  # constant band: mid-grey
  by_name = figures.rgb_composite(image, ("G", "R", "B"), bands.RGB,
                                  percentiles=(0, 100))
  np.testing.assert_allclose(by_name, out)
  clipped = figures.rgb_composite(image, (0, 0, 0), percentiles=(10, 90))
  assert clipped.min() == 0.0 and clipped.max() == 1.0
  assert (clipped[..., 0] == 0).sum() > 1  # the low tail is clipped
  # One index or one name: grey, the band in all three channels.
  grey = figures.rgb_composite(image, [1], percentiles=(0, 100))
  np.testing.assert_array_equal(grey, np.repeat(out[..., :1], 3, -1))
  np.testing.assert_array_equal(
      figures.rgb_composite(image, "G", bands.RGB, percentiles=(0, 100)), grey)


def test_rgb_composite_range_and_stretch():
  rng = np.random.default_rng(0)
  image = rng.normal(1000, 300, (2, 16, 16, 13)).astype(np.float32)
  rgb = figures.rgb_composite(image, (3, 2, 1))
  assert rgb.shape == (2, 16, 16, 3) and rgb.dtype == np.float32
  assert rgb.min() == 0.0 and rgb.max() == 1.0
  # 2-98 % stretch: about 2 % of each band's pixels clip at each end.
  for band in range(3):
    frac_low = np.mean(rgb[0, ..., band] == 0.0)
    assert 0.01 <= frac_low <= 0.04
  # Band order is respected: red is band 3 stretched alone.
  lin = np.linspace(0, 1, 16 * 16).reshape(16, 16)
  image = np.stack([lin, 1 - lin, 5 * lin, lin], axis=-1)
  rgb = figures.rgb_composite(image, (2, 1, 0), percentiles=(0, 100))
  np.testing.assert_allclose(rgb[..., 0], lin, atol=1e-6)
  np.testing.assert_allclose(rgb[..., 1], 1 - lin, atol=1e-6)
  # A constant band does not divide by zero (0/0 would warn; its NaN is
  # masked in the output, so finiteness alone proves nothing). It is drawn
  # flat mid-grey (0.5). This test used to pin 0 (the removed copy in
  # segmentation_maps), the heatmaps copy gave 0.5; the shared function
  # keeps 0.5 so that a flat band stays apart from missing pixels, which
  # are drawn 0 (black).
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    flat = figures.rgb_composite(np.stack(
        [np.full((4, 4), 7.0), lin[:4, :4], np.full((4, 4), -2.0)], axis=-1),
        percentiles=(0, 100))
  np.testing.assert_array_equal(flat[..., 0], 0.5)
  np.testing.assert_array_equal(flat[..., 2], 0.5)
  # The varying band next to them is still stretched to [0, 1].
  assert flat[..., 1].min() == 0.0 and flat[..., 1].max() == 1.0
  # IndexError, as numpy raises for an index out of bounds (the removed copy
  # here raised ValueError; the heatmaps copy, and its test, IndexError).
  with pytest.raises(IndexError, match="out of range"):
    figures.rgb_composite(image, (0, 1, 4))


def test_rgb_composite_stretches_each_image_of_a_batch_alone():
  rng = np.random.default_rng(3)
  one = rng.uniform(0, 1, (8, 9, 4))
  # The second image is the first in other units: the same picture.
  batch = np.stack([one, 1000 * one + 50])
  out = figures.rgb_composite(batch, (0, 1, 2))
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)
  np.testing.assert_allclose(out[0], figures.rgb_composite(one, (0, 1, 2)),
                             atol=1e-6)
  # Negative indices count from the last band.
  np.testing.assert_array_equal(figures.rgb_composite(one, (-1, -2, -3)),
                                figures.rgb_composite(one, (3, 2, 1)))


def test_rgb_composite_missing_pixels_are_black_and_ignored_by_the_stretch():
  lin = np.linspace(0, 1, 5 * 6).reshape(5, 6)
  image = np.stack([lin, lin, lin], -1)
  image[2, 3, 0] = np.nan
  image[3, 2, 1] = np.inf
  image[..., 2] = np.nan  # a band with no valid pixel
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    out = figures.rgb_composite(image, (0, 1, 2), percentiles=(0, 100))
  assert out.dtype == np.float32 and np.isfinite(out).all()
  assert out[2, 3, 0] == 0.0 and out[3, 2, 1] == 0.0
  np.testing.assert_array_equal(out[..., 2], 0.0)
  # The other pixels are stretched over the valid values only: the NaN does
  # not turn the whole band black, and the infinity does not squash it.
  valid = np.ones(lin.shape, bool)
  valid[2, 3] = False
  np.testing.assert_allclose(out[..., 0][valid], lin[valid], atol=1e-6)
  valid = np.ones(lin.shape, bool)
  valid[3, 2] = False
  np.testing.assert_allclose(out[..., 1][valid], lin[valid], atol=1e-6)
  assert out[..., 0].max() == 1.0 and out[..., 1].max() == 1.0


def test_rgb_composite_errors():
  image = np.zeros((4, 4, 3))
  with pytest.raises(ValueError, match=r"\(H, W, C\) or \(N, H, W, C\)"):
    figures.rgb_composite(image[0], (0, 1, 2))
  with pytest.raises(ValueError, match=r"\(H, W, C\) or \(N, H, W, C\)"):
    figures.rgb_composite(image[None, None], (0, 1, 2))
  with pytest.raises(ValueError, match="3 channels .* or 1"):
    figures.rgb_composite(image, (0, 1))
  with pytest.raises(IndexError, match="3 channels"):
    figures.rgb_composite(image, (0, 1, 5))
  with pytest.raises(TypeError, match="integers"):
    figures.rgb_composite(image, (0, 1.5, 2))
  with pytest.raises(ValueError, match="pass the image's band list"):
    figures.rgb_composite(image, ("R", "G", "B"))
  with pytest.raises(ValueError, match="mixes"):
    figures.rgb_composite(image, ("R", 1, 2), bands.RGB)
  with pytest.raises(ValueError, match="not in this dataset"):
    figures.rgb_composite(image, ("R", "G", "B04"), bands.RGB)
  with pytest.raises(ValueError, match="13 bands but the image has 3"):
    figures.rgb_composite(image, ("B04", "B03", "B02"), bands.SENTINEL2)
  with pytest.raises(ValueError, match="percentiles"):
    figures.rgb_composite(image, (0, 1, 2), percentiles=(98, 2))
