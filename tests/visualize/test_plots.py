"""Tests for eo_jax.visualize: curves, confusion matrix, segmentation maps,
masked-image reconstructions.

The plot functions return figures; each test renders them with `save_figure`
and checks the PNG."""
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from eo_jax.visualize import (confusion, curves, reconstruction,
                              segmentation_maps)
from eo_jax.visualize.figures import save_figure


def _png_size(fig, path):
  """Saves `fig` as a PNG at `path` and returns its (width, height)."""
  assert isinstance(fig, Figure)
  with Image.open(save_figure(fig, path)) as im:
    assert im.format == "PNG"
    im.load()
    return im.size


# --- Curves -----------------------------------------------------------------


def test_group_metrics_pairs_train_and_val():
  groups = curves.group_metrics(["train/loss", "val/loss", "val/f1/Forest", "lr"])
  assert groups == {"loss": {"train": "train/loss", "val": "val/loss"},
                    "f1/Forest": {"val": "val/f1/Forest"}, "lr": {"": "lr"}}


def test_plot_curves_draws_a_grid(tmp_path):
  history = {"train/loss": [(s, 1 / (s + 1)) for s in range(0, 100, 5)],
             "val/loss": [(s, 1.2 / (s + 1)) for s in range(0, 100, 25)],
             "val/accuracy": [(s, s / 100) for s in range(0, 100, 25)],
             "train/lr": [(s, 0.1) for s in range(100)]}
  small = curves.plot_curves(history, metrics=["loss"])
  big = curves.plot_curves(history, title="run")
  # One subplot holding both splits of 'loss'.
  (ax,) = small.get_axes()
  assert sorted(line.get_label() for line in ax.get_lines()) == ["train", "val"]
  w1, h1 = _png_size(small, tmp_path / "c1.png")
  w3, h3 = _png_size(big, tmp_path / "c3.png")
  assert (w1, h1) == (450, 320)  # one 4.5 x 3.2 in subplot at 100 dpi
  assert w3 == 3 * 450 and h3 > h1  # three metrics side by side plus a title
  with pytest.raises(ValueError, match="acc"):
    curves.plot_curves(history, metrics=["acc"])
  with pytest.raises(ValueError, match="empty"):
    curves.plot_curves({})


def _best_lines(ax):
  return [line for line in ax.get_lines() if line.get_gid() == curves.BEST_STEP_GID]


def test_plot_curves_marks_the_best_step_and_notes_the_loss():
  history = {"train/loss": [(s, 2.0 / (s + 1)) for s in range(0, 100, 10)],
             "val/loss": [(s, 1.0 / (s + 1)) for s in range(0, 100, 20)],
             "val/macro_f1": [(s, 0.3 + s / 1000) for s in range(0, 100, 20)],
             "train/lr": [(s, 0.1) for s in range(0, 100, 10)]}
  note = "train: class-weighted CE (config.loss), val: plain CE"
  fig = curves.plot_curves(history, best_step=60, best_metric="val/macro_f1",
                           notes={"loss": note})
  panels = {ax.get_title().split("\n")[0]: ax for ax in fig.axes if ax.get_visible()}
  assert set(panels) == {"loss", "macro_f1", "lr"}
  # A dashed vertical line at the best step in every panel ...
  for ax in panels.values():
    (line,) = _best_lines(ax)
    assert list(line.get_xdata()) == [60, 60] and line.get_linestyle() == "--"
  # ... named in the legend and annotated with its value on the metric's panel only.
  legends = {name: [t.get_text() for t in ax.get_legend().get_texts()]
             for name, ax in panels.items()}
  assert "best val/macro_f1 (step 60)" in legends["macro_f1"]
  assert not any("best" in text for text in legends["loss"] + legends["lr"])
  assert [t.get_text() for t in panels["macro_f1"].texts] == ["0.360"]
  assert not panels["loss"].texts
  # The loss panel says its splits are different quantities; the others do not.
  assert note in " ".join(panels["loss"].get_title().split())
  assert panels["macro_f1"].get_title() == "macro_f1"
  # Without a best step nothing is marked.
  plain = curves.plot_curves(history, metrics=["loss"])
  assert not _best_lines(plain.axes[0])


# --- Confusion matrix -------------------------------------------------------


def test_plot_confusion_matrix(tmp_path):
  cm = np.array([[50, 2, 0], [3, 40, 7], [0, 0, 0]])
  names = ["AnnualCrop", "HerbaceousVegetation", "Pasture"]
  w, h = _png_size(confusion.plot_confusion_matrix(cm, names),
                   tmp_path / "cm.png")
  assert 350 <= w <= 800 and 350 <= h <= 700
  _png_size(confusion.plot_confusion_matrix(cm, names, normalize=False,
                                            title="val"),
            tmp_path / "cm_counts.png")
  big = np.random.default_rng(0).integers(0, 100, (12, 12))
  w_big, _ = _png_size(confusion.plot_confusion_matrix(
      big, [f"c{i}" for i in range(12)]), tmp_path / "cm12.png")
  assert w_big > w
  with pytest.raises(ValueError, match="class names"):
    confusion.plot_confusion_matrix(cm, names[:2])


def test_confusion_title_names_run_split_step_and_metrics():
  cm = np.array([[50, 2], [3, 40]])
  fig = confusion.plot_confusion_matrix(
      cm, ["forest", "grassland"], run="eolearn_sample", split="val", step=780,
      metrics={"accuracy": 0.7531, "macro_f1": 0.4362, "loss": 0.7, "map": 0.5})
  assert fig.axes[0].get_title() == ("eolearn_sample: val, step 780\n"
                                     "accuracy 0.753, macro-F1 0.436")
  # Segmentation: mIoU first.
  seg = confusion.confusion_title(run="s2", split="test", step=5,
                                  metrics={"miou": 0.41, "overall_acc": 0.8,
                                           "mean_acc": 0.5})
  assert seg == "s2: test, step 5\nmIoU 0.410, overall accuracy 0.800"
  # A given title wins; nothing given, no title.
  titled = confusion.plot_confusion_matrix(cm, ["a", "b"], title="mine", split="val")
  assert titled.axes[0].get_title() == "mine"
  assert confusion.plot_confusion_matrix(cm, ["a", "b"]).axes[0].get_title() == ""


# --- Segmentation maps ------------------------------------------------------


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
      rgb, mask, pred, names, ignore_index=255), tmp_path / "seg.png")
  w1, h1 = _png_size(segmentation_maps.plot_segmentation(
      rgb[0], mask[0], pred[0], names, ignore_index=255), tmp_path / "seg1.png")
  assert h2 > h1 and w1 >= 900
  with pytest.raises(ValueError, match="Shapes"):
    segmentation_maps.plot_segmentation(rgb, mask, pred[:1], names,
                                        ignore_index=255)


# --- Reconstructions --------------------------------------------------------


def test_plot_reconstruction(tmp_path):
  rng = np.random.default_rng(0)
  original = rng.normal(size=(2, 16, 16, 5))
  recon = original.copy()
  recon[1] *= 2.0
  hidden = reconstruction.patch_mask_to_pixels(
      rng.integers(0, 2, (2, 16)), 4, (4, 4))
  fig = reconstruction.plot_reconstruction(original, hidden, recon, (3, 2, 1),
                                           title="mae")
  shown = [ax.get_images()[0].get_array() for ax in fig.axes]
  assert len(shown) == 6  # two rows of original | masked | reconstruction
  # Example 0 is reconstructed exactly: the same colours on both sides.
  np.testing.assert_array_equal(shown[0], shown[2])
  # One stretch over original and reconstruction: example 1's doubled values
  # differ in colour from its original.
  assert not np.allclose(shown[3], shown[5])
  # Hidden pixels of the masked input are grey, the others the original's.
  masked, picture = np.asarray(shown[1]), np.asarray(shown[0])
  np.testing.assert_array_equal(masked[hidden[0]], reconstruction.MASK_GREY)
  np.testing.assert_array_equal(masked[~hidden[0]], picture[~hidden[0]])
  w, h = _png_size(fig, tmp_path / "recon.png")
  assert (w, h) == (750, 550)  # 7.5 x (2.5 * 2 + 0.5) inches at 100 dpi
  with pytest.raises(ValueError, match="hidden"):
    reconstruction.plot_reconstruction(original, hidden[:1], recon, (3, 2, 1))
