"""Whole-scene inference with a trained segmenter: overlapping sliding windows.

  python -m eo_jax.predict --workdir=runs/seg_whu --input=tile.tif --output=map

The run in --workdir is restored (`eo_jax.restore_run`, its best state when
early stopping kept one); the input (a GeoTIFF, or a .npy (H, W, C) array)
must hold the run's bands in the run's order. It is normalised with the
run's band statistics, cut into windows of the training image size (or
--window) every --stride pixels, each window's class probabilities are
blended into the scene ('gaussian' weights favour window centres, where a
network sees the most context; 'mean' weights all pixels alike), and the
arg-max is written as a label map: `<output>.tif` keeping the input's
georeference tags when the input was a GeoTIFF, else `<output>.npy`, plus a
colour picture `<output>.png` with a legend.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np

from eo_jax.errors import ConfigValueError, InputShapeError

BLENDS = ("gaussian", "mean")
# GeoTIFF tags that place a raster on the ground (pixel scale, tiepoints,
# transformation, geo keys and their double / ASCII parameters).
_GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)


def window_weights(size: tuple[int, int], blend: str) -> np.ndarray:
  """(h, w) blending weights of one window."""
  if blend == "mean":
    return np.ones(size, np.float32)
  if blend != "gaussian":
    raise ConfigValueError(f"--blend must be one of {BLENDS}, got {blend!r}.")
  axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 4)) ** 2)
          for n in size]
  return np.outer(*axes).astype(np.float32)


def window_corners(length: int, window: int, stride: int) -> list[int]:
  """Window starts covering [0, length): every `stride`, the last flush."""
  if window >= length:
    return [0]
  starts = list(range(0, length - window + 1, stride))
  if starts[-1] != length - window:
    starts.append(length - window)
  return starts


def sliding_window_probabilities(
    predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *,
    window: tuple[int, int], stride: tuple[int, int], num_classes: int,
    blend: str = "gaussian", batch_size: int = 16) -> np.ndarray:
  """(H, W, K) blended class probabilities of a normalised (H, W, C) image.

  `predict` maps a (B, h, w, C) batch of windows to (B, h, w, K) logits. An
  image smaller than the window is padded by reflection (edge repeat for a
  single row or column) and cropped back.
  """
  h, w, _ = image.shape
  wh, ww = window
  pad = ((0, max(wh - h, 0)), (0, max(ww - w, 0)), (0, 0))
  if any(p[1] for p in pad):
    mode = "reflect" if min(h, w) > 1 else "edge"
    image = np.pad(image, pad, mode=mode)
  hh, pw = image.shape[:2]
  weights = window_weights((wh, ww), blend)
  total = np.zeros((hh, pw, num_classes), np.float64)
  norm = np.zeros((hh, pw, 1), np.float64)
  corners = [(r, c) for r in window_corners(hh, wh, stride[0])
             for c in window_corners(pw, ww, stride[1])]
  for start in range(0, len(corners), batch_size):
    chunk = corners[start:start + batch_size]
    batch = np.stack([image[r:r + wh, c:c + ww] for r, c in chunk])
    logits = np.asarray(predict(batch), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for (r, c), p in zip(chunk, probs):
      total[r:r + wh, c:c + ww] += p * weights[..., None]
      norm[r:r + wh, c:c + ww] += weights[..., None]
  return (total / norm)[:h, :w].astype(np.float32)


def read_scene(path: str) -> tuple[np.ndarray, dict[int, tuple]]:
  """(H, W, C) pixels of a GeoTIFF or .npy file, and its geo tags (if any)."""
  if path.endswith(".npy"):
    array = np.load(path, allow_pickle=False)
    if array.ndim == 2:
      array = array[..., None]
    return np.asarray(array, np.float32), {}
  import tifffile  # pylint: disable=g-import-not-at-top
  from eo_jax.data import raster  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input {path} does not exist.")
  try:
    header = raster.read_header(path)
  except ValueError as e:
    raise InputShapeError(f"--input: {e}") from None
  array = raster.channels_last(np.asarray(raster.read_array(path, memmap=False)),
                               header.axes, path)
  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    tags = {code: (page.tags[code].dtype, page.tags[code].count,
                   page.tags[code].value)
            for code in _GEO_TAGS if code in page.tags}
  return array.astype(np.float32), tags


def write_label_map(labels: np.ndarray, output: str, geo_tags: dict[int, tuple]
                    ) -> str:
  """Writes `<output>.tif` (with `geo_tags`) or `<output>.npy`; returns the path."""
  dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
  labels = labels.astype(dtype)
  os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
  if geo_tags:
    import tifffile  # pylint: disable=g-import-not-at-top
    path = output + ".tif"
    extratags = [(code, dtype_, count, value, True)
                 for code, (dtype_, count, value) in geo_tags.items()]
    tifffile.imwrite(path, labels, photometric="minisblack", extratags=extratags)
    return path
  path = output + ".npy"
  np.save(path, labels)
  return path


def predict_scene(run, image: np.ndarray, *, window: int = 0, stride: int = 0,
                  blend: str = "gaussian", batch_size: int = 16) -> np.ndarray:
  """(H, W) int labels of a raw-unit (H, W, C) scene with a restored `run`."""
  if image.shape[-1] != run.info.num_bands:
    raise InputShapeError(
        f"The input has {image.shape[-1]} bands; the run was trained on "
        f"{run.info.num_bands} ({[b.name for b in run.info.bands]}). Give the "
        "same bands in the same order.")
  size = window or run.config.input.image_size or (run.info.image_size or (0,))[0]
  if not size:
    raise ConfigValueError("The run's training image size is unknown; pass --window.")
  step = stride or max(size // 2, 1)
  probs = sliding_window_probabilities(
      run.predict, run.normalize(image), window=(size, size), stride=(step, step),
      num_classes=run.info.num_classes, blend=blend, batch_size=batch_size)
  return probs.argmax(-1)


def main(argv: list[str] | None = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained segmentation run")
  parser.add_argument("--input", required=True, help="a GeoTIFF or .npy scene")
  parser.add_argument("--output", required=True,
                      help="output path without extension (.tif/.npy and .png)")
  parser.add_argument("--window", type=int, default=0,
                      help="window side in pixels (default: the training size)")
  parser.add_argument("--stride", type=int, default=0,
                      help="pixels between windows (default: half a window)")
  parser.add_argument("--blend", choices=BLENDS, default="gaussian")
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args(argv)
  import eo_jax  # pylint: disable=g-import-not-at-top
  from eo_jax import errors  # pylint: disable=g-import-not-at-top
  from eo_jax.visualize import segmentation_maps  # pylint: disable=g-import-not-at-top
  from eo_jax.visualize.figures import save_figure  # pylint: disable=g-import-not-at-top
  try:
    run = eo_jax.restore_run(args.workdir)
    image, tags = read_scene(args.input)
    labels = predict_scene(run, image, window=args.window, stride=args.stride,
                           blend=args.blend, batch_size=args.batch_size)
  except (errors.UserError, FileNotFoundError) as e:
    print(f"error: {errors.message(e)}", file=sys.stderr)
    return 1
  path = write_label_map(labels, args.output, tags)
  figure = segmentation_maps.plot_label_map(
      labels, list(run.info.class_names),
      title=f"{os.path.basename(args.input)}: {os.path.basename(args.workdir)}, "
            f"step {run.step}")
  png = save_figure(figure, args.output + ".png")
  counts = np.bincount(labels.reshape(-1), minlength=run.info.num_classes)
  print(f"Wrote {path} ({labels.shape[0]} x {labels.shape[1]}) and {png}.")
  for name, count in zip(run.info.class_names, counts):
    print(f"  {name}: {count / labels.size:.1%}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
