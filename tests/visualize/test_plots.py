"""Tests for eo_jax.visualize: curves, history, confusion matrix, segmentation maps."""
import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from eo_jax.visualize import confusion, curves, segmentation_maps


def _png_size(path):
  with Image.open(path) as im:
    assert im.format == "PNG"
    im.load()
    return im.size


# --- Metric history and curves ---------------------------------------------


def test_history_json_round_trip_and_resume(tmp_path):
  h = curves.MetricHistory()
  h.append(10, {"train/loss": np.float32(2.0), "train/lr": 0.1,
                "val/confusion_matrix": np.zeros((2, 2))})  # arrays skipped
  h.append(20, {"train/loss": 1.5, "val/loss": float("nan")})
  path = tmp_path / "sub" / "history.json"
  h.save(path)
  back = curves.MetricHistory.load(path)
  assert back.as_dict().keys() == {"train/loss", "train/lr", "val/loss"}
  assert back["train/loss"] == [(10, 2.0), (20, 1.5)]
  assert math.isnan(back["val/loss"][0][1])
  assert json.loads(path.read_text().replace("NaN", "null"))["train/lr"] == [[10, 0.1]]
  # A run resuming from step 10 drops what was logged after its checkpoint.
  resumed = curves.MetricHistory.load(path, max_step=10)
  assert resumed.as_dict() == {"train/loss": [(10, 2.0)], "train/lr": [(10, 0.1)]}
  assert len(curves.MetricHistory.load(tmp_path / "absent.json")) == 0


def test_group_metrics_pairs_train_and_val():
  groups = curves.group_metrics(["train/loss", "val/loss", "val/f1/Forest", "lr"])
  assert groups == {"loss": {"train": "train/loss", "val": "val/loss"},
                    "f1/Forest": {"val": "val/f1/Forest"}, "lr": {"": "lr"}}


def test_plot_curves_writes_a_grid_png(tmp_path):
  history = {"train/loss": [(s, 1 / (s + 1)) for s in range(0, 100, 5)],
             "val/loss": [(s, 1.2 / (s + 1)) for s in range(0, 100, 25)],
             "val/accuracy": [(s, s / 100) for s in range(0, 100, 25)],
             "train/lr": [(s, 0.1) for s in range(100)]}
  small = curves.plot_curves(history, tmp_path / "c1.png", metrics=["loss"])
  big = curves.plot_curves(history, tmp_path / "c3.png", title="run")
  w1, h1 = _png_size(small)
  w3, h3 = _png_size(big)
  assert (w1, h1) == (450, 320)  # one 4.5 x 3.2 in subplot at 100 dpi
  assert w3 == 3 * 450 and h3 > h1  # three metrics side by side plus a title
  with pytest.raises(ValueError, match="acc"):
    curves.plot_curves(history, tmp_path / "x.png", metrics=["acc"])
  with pytest.raises(ValueError, match="empty"):
    curves.plot_curves({}, tmp_path / "x.png")


# --- Confusion matrix -------------------------------------------------------


def test_plot_confusion_matrix(tmp_path):
  cm = np.array([[50, 2, 0], [3, 40, 7], [0, 0, 0]])
  names = ["AnnualCrop", "HerbaceousVegetation", "Pasture"]
  w, h = _png_size(confusion.plot_confusion_matrix(cm, names, tmp_path / "cm.png"))
  assert 350 <= w <= 800 and 350 <= h <= 700
  _png_size(confusion.plot_confusion_matrix(
      cm, names, tmp_path / "cm_counts.png", normalize=False, title="val"))
  big = np.random.default_rng(0).integers(0, 100, (12, 12))
  w_big, _ = _png_size(confusion.plot_confusion_matrix(
      big, [f"c{i}" for i in range(12)], tmp_path / "cm12.png"))
  assert w_big > w
  with pytest.raises(ValueError, match="class names"):
    confusion.plot_confusion_matrix(cm, names[:2], tmp_path / "bad.png")


# --- Segmentation maps ------------------------------------------------------


def test_rgb_composite_range_and_stretch():
  rng = np.random.default_rng(0)
  image = rng.normal(1000, 300, (2, 16, 16, 13)).astype(np.float32)
  rgb = segmentation_maps.rgb_composite(image, (3, 2, 1))
  assert rgb.shape == (2, 16, 16, 3) and rgb.dtype == np.float32
  assert rgb.min() == 0.0 and rgb.max() == 1.0
  # 2-98 % stretch: about 2 % of each band's pixels clip at each end.
  for band in range(3):
    frac_low = np.mean(rgb[0, ..., band] == 0.0)
    assert 0.01 <= frac_low <= 0.04
  # Band order is respected: red is band 3 stretched alone.
  lin = np.linspace(0, 1, 16 * 16).reshape(16, 16)
  image = np.stack([lin, 1 - lin, 5 * lin, lin], axis=-1)
  rgb = segmentation_maps.rgb_composite(image, (2, 1, 0), percentiles=(0, 100))
  np.testing.assert_allclose(rgb[..., 0], lin, atol=1e-6)
  np.testing.assert_allclose(rgb[..., 1], 1 - lin, atol=1e-6)
  # A constant band does not divide by zero (0/0 would warn; its NaN is
  # masked in the output, so finiteness alone proves nothing): every pixel
  # equals the band's low percentile, which the stretch maps to 0.
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    flat = segmentation_maps.rgb_composite(np.stack(
        [np.full((4, 4), 7.0), lin[:4, :4], np.full((4, 4), -2.0)], axis=-1),
        percentiles=(0, 100))
  np.testing.assert_array_equal(flat[..., 0], 0.0)
  np.testing.assert_array_equal(flat[..., 2], 0.0)
  # The varying band next to them is still stretched to [0, 1].
  assert flat[..., 1].min() == 0.0 and flat[..., 1].max() == 1.0
  with pytest.raises(ValueError, match="out of range"):
    segmentation_maps.rgb_composite(image, (0, 1, 4))


def test_colourise_fixed_colours_and_ignore():
  mask = np.array([[0, 1], [2, 255]])
  out = segmentation_maps.colourise(mask, 3, ignore_index=255)
  colours = segmentation_maps.class_colours(3)
  np.testing.assert_allclose(out[0, 1], colours[1])
  np.testing.assert_allclose(out[1, 1], segmentation_maps.IGNORE_COLOUR)
  assert len({tuple(c) for c in segmentation_maps.class_colours(30)}) == 30
  with pytest.raises(ValueError, match="ignore_index"):
    segmentation_maps.colourise(mask, 3)


def test_plot_segmentation(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.random((2, 32, 32, 3))
  mask = rng.integers(0, 4, (2, 32, 32))
  mask[:, :4] = 255
  pred = rng.integers(0, 4, (2, 32, 32))
  names = ["water", "field", "urban", "forest"]
  w2, h2 = _png_size(segmentation_maps.plot_segmentation(
      rgb, mask, pred, names, tmp_path / "seg.png", ignore_index=255))
  w1, h1 = _png_size(segmentation_maps.plot_segmentation(
      rgb[0], mask[0], pred[0], names, tmp_path / "seg1.png", ignore_index=255))
  assert h2 > h1 and w1 >= 900
  with pytest.raises(ValueError, match="Shapes"):
    segmentation_maps.plot_segmentation(rgb, mask, pred[:1], names,
                                        tmp_path / "bad.png", ignore_index=255)
