"""Local-evidence heatmaps for models with a known receptive field (BagNets).

Two ways to get "how much does each image region vote for class k":

* `evidence_map` spreads a model's own per-location logits
  (`features['local_logits']`) back over the input pixels, using the
  receptive field (q, jump, offset) the model reports. Cheap: one forward pass.
* `sliding_patch_logits` runs every q x q patch through the network on its
  own. For a BagNet in eval mode the patch at location (i, j) of the output
  grid gives exactly `local_logits[i, j]`; at stride 1 (optionally padded) it
  gives the dense, pixel-resolution heatmap of the BagNet paper.

`plot_evidence` returns a figure of a heatmap next to and over an RGB
composite of any three bands (`figures.rgb_composite`); save it with
`figures.save_figure`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.visualize.figures import rgb_composite

ArrayLike = Any


def _coverage(n_pixels: int, n_locations: int, jump: int, offset: int,
              q: int) -> np.ndarray:
  """(n_pixels, n_locations) 0/1 matrix: does location i's patch cover y."""
  starts = offset + jump * np.arange(n_locations)
  y = np.arange(n_pixels)[:, None]
  return ((y >= starts) & (y < starts + q)).astype(np.float64)


def evidence_map(local_logits: ArrayLike, class_index: int,
                 image_hw: tuple[int, int], jump: int, offset: int, q: int,
                 *, reduce: str = "mean",
                 fill_value: float = np.nan) -> np.ndarray:
  """Per-pixel evidence for one class from a map of local logits.

  Output location (i, j) covers the q x q input patch whose top-left pixel is
  (offset + i * jump, offset + j * jump). A pixel's evidence is the mean
  (`reduce='mean'`) or the sum (`reduce='sum'`) of the class logits of all
  locations whose patch covers it. With the mean, a pixel covered by one
  patch shows that patch's logit, and the map stays in logit units whatever
  the overlap; the sum weights pixels by how many patches see them. Pixels no
  patch covers (a margin at the bottom/right when (H - q) is not a multiple of
  the jump, or a border when offset > 0) get `fill_value`.

  Args:
    local_logits: (h, w, K) or (B, h, w, K) per-location logits.
    class_index: which of the K classes.
    image_hw: (H, W) of the input image.
    jump: input pixels between neighbouring output locations.
    offset: input pixel where location 0's patch starts.
    q: receptive field size in pixels.
    reduce: 'mean' or 'sum' over the covering locations.
    fill_value: value of pixels that no patch covers.

  Returns:
    (H, W) or (B, H, W) float32 evidence.
  """
  logits = np.asarray(local_logits, dtype=np.float64)
  if logits.ndim not in (3, 4):
    raise ValueError(f"local_logits must be (h, w, K) or (B, h, w, K); got "
                     f"shape {logits.shape}.")
  if reduce not in ("mean", "sum"):
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}.")
  num_classes = logits.shape[-1]
  if not -num_classes <= class_index < num_classes:
    raise IndexError(f"class_index {class_index} is out of range for "
                     f"{num_classes} classes.")
  if jump < 1 or q < 1:
    raise ValueError(f"jump ({jump}) and q ({q}) must be positive.")
  h, w = logits.shape[-3:-1]
  height, width = image_hw
  for axis, n, size in (("rows", h, height), ("columns", w, width)):
    if offset < 0 or offset + (n - 1) * jump + q > size:
      raise ValueError(
          f"{n} output {axis} with jump {jump}, offset {offset} and receptive "
          f"field {q} reach pixel {offset + (n - 1) * jump + q - 1}, outside "
          f"an image of {size} {axis}. Pass the model's own receptive field "
          "and the size of the image it saw.")

  rows = _coverage(height, h, jump, offset, q)
  cols = _coverage(width, w, jump, offset, q)
  total = rows @ logits[..., class_index] @ cols.T
  counts = np.outer(rows.sum(1), cols.sum(1))
  if reduce == "mean":
    with np.errstate(invalid="ignore", divide="ignore"):
      total = total / counts
  total = np.where(counts > 0, total, fill_value)
  return total.astype(np.float32)


def _patch_windows(image: np.ndarray, q: int, stride: int,
                   pad: bool) -> np.ndarray:
  """A (nh, nw, q, q, C) strided view of every q x q patch (no copy)."""
  if pad:
    before = (q - 1) // 2
    after = q - 1 - before
    image = np.pad(image, ((before, after), (before, after), (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(image, (q, q), axis=(0, 1))
  return windows[::stride, ::stride].transpose(0, 1, 3, 4, 2)


def sliding_patch_logits(apply_fn: Callable[[np.ndarray], Any],
                         image: ArrayLike, q: int, stride: int = 1, *,
                         pad: bool = False,
                         batch_size: int = 256) -> np.ndarray:
  """Class logits of every q x q patch of an image, each seen alone.

  Patch (i, j) has its top-left pixel at (i * stride, j * stride). With
  `pad=True` the image is first zero-padded by (q - 1) // 2 on the top/left
  (and the rest on the bottom/right), so patch (i, j) is centred on pixel
  (i * stride, j * stride) for odd q, and at stride 1 the result has the
  image's size: the BagNet paper's dense heatmap. Zero is the band mean for
  normalised inputs, i.e. "no information".

  Args:
    apply_fn: maps a (N, q, q, C) batch to (N, K) logits, e.g.
      `lambda x: model.apply(variables, x, train=False)[0]`. A returned
      `(output, features)` pair is accepted; its first element is used.
    image: (H, W, C) image, normalised as the model expects.
    q: patch size (the model's receptive field).
    stride: pixels between neighbouring patches.
    pad: zero-pad so that patches are centred on pixels (see above).
    batch_size: patches per call; every call gets exactly this many (the
      last batch is zero-padded), so a jitted `apply_fn` compiles once.

  Returns:
    (nh, nw, K) float32 logits.
  """
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f"image must be (H, W, C); got shape {image.shape}. "
                     "Pass one image of the batch.")
  if q < 1 or stride < 1 or batch_size < 1:
    raise ValueError(f"q ({q}), stride ({stride}) and batch_size "
                     f"({batch_size}) must be positive.")
  if not pad and min(image.shape[:2]) < q:
    raise ValueError(f"Image {image.shape[0]}x{image.shape[1]} is smaller "
                     f"than the {q}x{q} patch; use pad=True.")
  windows = _patch_windows(image, q, stride, pad)
  nh, nw = windows.shape[:2]
  batch = min(batch_size, nh * nw)
  outputs = []
  for start in range(0, nh * nw, batch):
    # Gather one batch at a time: all patches at once can take gigabytes.
    rows, cols = np.divmod(np.arange(start, min(start + batch, nh * nw)), nw)
    chunk = windows[rows, cols]
    n = len(chunk)
    if n < batch:
      chunk = np.concatenate(
          [chunk, np.zeros((batch - n,) + chunk.shape[1:], chunk.dtype)])
    logits = apply_fn(chunk)
    if isinstance(logits, (tuple, list)):
      logits = logits[0]
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] != batch:
      raise ValueError(f"apply_fn must return (N, K) logits for N = {batch} "
                       f"patches; got shape {logits.shape}.")
    outputs.append(logits[:n])
  return np.concatenate(outputs).reshape(nh, nw, -1)


def plot_evidence(image: ArrayLike, rgb: Sequence[int | str] | str,
                  heatmap: ArrayLike, *, class_name: str = "",
                  bands: Sequence[bands_lib.Band] | None = None,
                  percentiles: tuple[float, float] = (2.0, 98.0),
                  clip_percentile: float = 99.0, alpha: float = 0.6) -> Figure:
  """Draws the RGB composite, the evidence heatmap, and the two overlaid.

  The heatmap uses a diverging map centred on zero (red for, blue against
  the class), clipped at the `clip_percentile` of |evidence| so that one
  extreme patch does not wash out the rest; uncovered (NaN) pixels are left
  transparent.

  Args:
    image: (H, W, C) image.
    rgb: bands to render as red, green, blue (indices or names, see
      `figures.rgb_composite`).
    heatmap: (H, W) evidence at the image's resolution (`evidence_map`).
    class_name: named in the titles.
    bands: the image's band list, when `rgb` gives names.
    percentiles: stretch of the composite.
    clip_percentile: colour-scale limit of the heatmap.
    alpha: heatmap opacity in the overlay.

  Returns:
    The figure, 12 x 4.2 inches.
  """
  if np.ndim(image) != 3:
    # rgb_composite also takes batches; this figure shows one image.
    raise ValueError(f"image must be (H, W, C); got shape {np.shape(image)}. "
                     "Pass one image of the batch.")
  composite = rgb_composite(image, rgb, bands, percentiles)
  heat = np.asarray(heatmap, dtype=np.float64)
  if heat.shape != composite.shape[:2]:
    raise ValueError(f"heatmap shape {heat.shape} differs from the image's "
                     f"{composite.shape[:2]}; upsample it with evidence_map.")
  finite = np.abs(heat[np.isfinite(heat)])
  limit = float(np.percentile(finite, clip_percentile)) if finite.size else 1.0
  limit = limit if limit > 0 else 1.0
  cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=(0, 0, 0, 0))
  masked = np.ma.masked_invalid(heat)
  label = class_name or "class"
  rgb_names = rgb if isinstance(rgb, str) else ", ".join(str(b) for b in rgb)

  fig = Figure(figsize=(12, 4.2))
  # tight_layout below measures text, which needs a canvas that can render.
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 3)
  axes[0].imshow(composite, interpolation="nearest")
  axes[0].set_title(f"image ({rgb_names})")
  shown = axes[1].imshow(masked, cmap=cmap, vmin=-limit, vmax=limit,
                         interpolation="nearest")
  axes[1].set_title(f"evidence for {label}")
  # Grey, not white: white is zero evidence, grey is "no patch covers this".
  axes[1].set_facecolor("0.8")
  fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04, label="logit")
  # Grey the image under the overlay so the heatmap's colours read true.
  axes[2].imshow(composite.mean(-1), cmap="gray", vmin=0, vmax=1,
                 interpolation="nearest")
  axes[2].imshow(masked, cmap=cmap, vmin=-limit, vmax=limit, alpha=alpha,
                 interpolation="nearest")
  axes[2].set_title(f"overlay: {label}")
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return fig
