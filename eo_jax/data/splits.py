"""Train / val / test splits of ONE scene, spatially disjoint by default.

Patches cut around neighbouring pixels overlap and neighbouring pixels look
alike, so a split that draws pixels at random puts most of every test
patch's content into training patches too; hyperspectral benchmarks split
this way report inflated accuracies (Nalepa, Myller & Kawulok 2019,
"Validating hyperspectral image segmentation", IEEE GRSL 16(8)). Here the
default is spatially disjoint:

1. The scene is cut into a grid of about square blocks of side
   `block_size` (rows and columns of blocks split the scene evenly, so edge
   blocks are not slivers).
2. Whole blocks are assigned to the splits by their fractions (largest
   remainder; every split with a positive fraction gets at least one
   block), in a random order drawn from `seed`. Of `tries` such draws, the
   first that leaves every split room for a patch (holding a labelled pixel,
   given a label map) is kept; given a label map, draws are tried best
   first: those whose splits hold each class's labelled pixels closest to
   the fractions, and that leave no class out of a split (class-stratified
   at the level of blocks).
3. Where blocks of different splits meet, a margin of at least `margin`
   pixels (default: the patch size) belongs to no split: each side gives up
   ceil(margin / 2) pixels, measured in the chessboard metric so that
   corners where blocks meet diagonally are covered too. The scene's own
   edge is not a border.
4. A patch belongs to a split only when its whole footprint lies inside
   that split's area (`SceneSplit.corners`): no pixel of a test patch lies
   in any training patch, and the nearest training pixel is more than
   `margin` pixels away.

`split='random_pixels_leaky'` (`random_pixel_split`) gives the leaky
benchmark protocol instead: every labelled pixel is drawn into a split at
random (class-stratified), so that scores can be compared with published
numbers; it logs a warning saying why those numbers are inflated.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np
from scipy import ndimage

from eo_jax import errors

SPATIAL = "spatial_blocks"
LEAKY = "random_pixels_leaky"
KINDS = (SPATIAL, LEAKY)
# Region value of the pixels that belong to no split (margins; unlabelled
# pixels of a leaky split).
NO_SPLIT = -1
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_NAMES = ("train", "val", "test")
# Draws of the block order compared when a label map is given.
DEFAULT_TRIES = 64

LEAKY_WARNING = (
    "config.data.split='random_pixels_leaky': labelled pixels are drawn into "
    "train / val / test at random, so the patches of different splits "
    "overlap and test pixels sit next to training pixels that look alike. "
    "Scores measured this way are inflated (Nalepa et al. 2019, IEEE GRSL "
    "16(8)) and only comparable with papers that split the same way; the "
    "default split='spatial_blocks' measures generalisation to unseen areas.")


@dataclasses.dataclass(frozen=True)
class SceneSplit:
  """Which split every pixel of a scene belongs to.

  Attributes:
    regions: (H, W) int8, an index into `names`, or NO_SPLIT (-1) for
      margins and, in a leaky split, unlabelled pixels.
    names: the split names, e.g. ('train', 'val', 'test').
    kind: SPATIAL or LEAKY.
    block_size: side of the blocks (spatial), 0 for a leaky split.
    margin: the guaranteed gap in pixels between areas of different splits.
    blocks: (block rows, block columns) split index of every block
      (spatial), None for a leaky split.
  """
  regions: np.ndarray
  names: tuple[str, ...]
  kind: str
  block_size: int = 0
  margin: int = 0
  blocks: np.ndarray | None = None

  @property
  def shape(self) -> tuple[int, int]:
    return tuple(self.regions.shape)

  def index(self, split: str) -> int:
    if split not in self.names:
      raise errors.ConfigError(f"No split {split!r}; the scene is split "
                               f"into {list(self.names)}.")
    return self.names.index(split)

  def area(self, split: str) -> np.ndarray:
    """(H, W) bool: the pixels of `split`."""
    return self.regions == self.index(split)

  def corners(self, split: str, patch_size: int, stride: int) -> np.ndarray:
    """(N, 2) top-left corners of the patch_size x patch_size windows lying
    fully inside `split`'s area, on a grid of step `stride` per connected
    area (`window_corners`)."""
    return window_corners(self.area(split), patch_size, stride)


def _check_size(name: str, value: int, minimum: int = 1) -> int:
  if isinstance(value, bool) or int(value) != value or value < minimum:
    raise errors.ConfigValueError(
        f"config.data.{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def parse_fractions(fractions: Any, names: Sequence[str] = SPLIT_NAMES
                    ) -> dict[str, float]:
  """{split: fraction} from a mapping or a sequence (in `names` order).

  Splits with fraction 0 are left out (e.g. (0.8, 0.2, 0.0): no test
  split). Raises ConfigValueError unless the fractions are >= 0 and sum
  to 1.
  """
  if isinstance(fractions, str):
    # A command-line override gives '0.7,0.15,0.15' as one string.
    fractions = [v for v in re.split(r"[,+\s]+", fractions.strip("()[] "))
                 if v]
  if isinstance(fractions, Mapping):
    pairs = [(str(k), v) for k, v in fractions.items()]
  else:
    values = list(fractions)
    if len(values) > len(names):
      raise errors.ConfigValueError(
          f"config.data.split_fractions has {len(values)} entries; give at "
          f"most {len(names)}, for {list(names)}.")
    pairs = list(zip(names, values))
  try:
    parsed = {k: float(v) for k, v in pairs}
  except (TypeError, ValueError):
    raise errors.ConfigValueError(
        f"config.data.split_fractions must be numbers, got {fractions!r}."
    ) from None
  if (any(not math.isfinite(v) or v < 0 for v in parsed.values())
      or not math.isclose(sum(parsed.values()), 1.0, abs_tol=1e-6)):
    raise errors.ConfigValueError(
        f"config.data.split_fractions must be >= 0 and sum to 1, got "
        f"{fractions!r} (for {[k for k, _ in pairs]}).")
  kept = {k: v for k, v in parsed.items() if v > 0}
  if "train" not in kept:
    raise errors.ConfigValueError(
        f"config.data.split_fractions gives the train split no share "
        f"({fractions!r}); band statistics and training need one.")
  return kept


def default_block_size(shape: tuple[int, int], patch_size: int,
                       margin: int) -> int:
  """Blocks big enough to hold a patch inside their margins, at most four
  patches wide, and at most a quarter of the scene's shorter side where
  that still holds a patch (so that small scenes get several blocks)."""
  smallest = patch_size + margin + 2
  return max(smallest, min(4 * patch_size, min(shape) // 4))


def _cuts(n: int, parts: int) -> np.ndarray:
  return np.round(np.linspace(0, n, parts + 1)).astype(np.int64)


def block_grid(shape: tuple[int, int], block_size: int
               ) -> tuple[np.ndarray, np.ndarray]:
  """Row and column edges of a grid of about block_size x block_size blocks."""
  rows = _cuts(shape[0], max(1, round(shape[0] / block_size)))
  cols = _cuts(shape[1], max(1, round(shape[1] / block_size)))
  return rows, cols


def _block_ids(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray
               ) -> np.ndarray:
  r = np.searchsorted(rows, np.arange(shape[0]), side="right") - 1
  c = np.searchsorted(cols, np.arange(shape[1]), side="right") - 1
  return r[:, None] * (len(cols) - 1) + c[None, :]


def _block_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
  """Blocks per split: largest remainder, at least one per split."""
  f = np.asarray(fractions, np.float64)
  counts = np.floor(f * n).astype(np.int64)
  order = np.argsort(-(f * n - counts), kind="stable")
  counts[order[:n - counts.sum()]] += 1
  # A split rounded down to nothing borrows from the largest one.
  for s in np.flatnonzero(counts == 0):
    counts[np.argmax(counts)] -= 1
    counts[s] = 1
  return counts


def _score(assign: np.ndarray, hist: np.ndarray, fractions: np.ndarray
           ) -> float:
  """How far a block assignment is from giving every split its fraction of
  every class's labelled pixels; each class left out of a split costs more
  than any deviation."""
  per_split = np.zeros((len(fractions), hist.shape[1]), np.float64)
  np.add.at(per_split, assign, hist)
  total = hist.sum(axis=0)
  present = total > 0
  if not present.any():
    return 0.0
  share = per_split[:, present] / total[present]
  missing = int((per_split[:, present] == 0).sum())
  return missing + float(np.mean((share - fractions[:, None]) ** 2))


def _erode(regions: np.ndarray, num_splits: int, radius: int) -> np.ndarray:
  """Drops every pixel within `radius` (chessboard) of another split."""
  if radius <= 0:
    return regions
  out = np.full(regions.shape, NO_SPLIT, np.int8)
  size = 2 * radius + 1
  for s in range(num_splits):
    inside = (regions == s).astype(np.uint8)
    # mode='nearest': beyond the scene's edge the block continues, so the
    # edge itself costs no margin.
    kept = ndimage.minimum_filter(inside, size=size, mode="nearest")
    out[kept.astype(bool)] = s
  return out


def _every_split_fits(regions: np.ndarray, num_splits: int, size: int,
                      labels: np.ndarray | None) -> bool:
  """Whether every split's area holds a size x size window (with a labelled
  pixel, given labels)."""
  for s in range(num_splits):
    corners = window_corners(regions == s, size, 1)
    if not len(corners):
      return False
    if labels is not None:
      labelled = summed_area((labels >= 0) & (regions == s))
      if not window_sums(labelled, corners, size).any():
        return False
  return True


def spatial_split(shape: tuple[int, int], patch_size: int,
                  fractions: Any = DEFAULT_FRACTIONS, seed: int = 0,
                  block_size: int = 0, margin: int | None = None,
                  labels: np.ndarray | None = None,
                  tries: int = DEFAULT_TRIES,
                  names: Sequence[str] = SPLIT_NAMES) -> SceneSplit:
  """Assigns square blocks of a scene to splits, with margins between them.

  Args:
    shape: the scene's (H, W).
    patch_size: side of the patches that will be cut (sets the defaults).
    fractions: share of each split: a sequence in `names` order, or a
      mapping {split: fraction}; zero shares are left out.
    seed: seeds the block order (deterministic for a given seed).
    block_size: side of the blocks; 0 chooses `default_block_size`.
    margin: pixels between areas of different splits, at least patch_size;
      None means patch_size.
    labels: optional (H, W) integer class map, negative where unlabelled:
      block orders are tried best balanced first (module docstring).
    tries: block orders drawn and compared.
    names: split names for a sequence of fractions.

  Returns:
    The SceneSplit.

  Raises:
    ConfigValueError: sizes that cannot work (the message says which key to
      change).
  """
  height, width = (int(v) for v in shape)
  patch_size = _check_size("patch_size", patch_size)
  margin = patch_size if margin is None else _check_size("margin", margin, 0)
  if margin < patch_size:
    raise errors.ConfigValueError(
        f"config.data.margin={margin} is smaller than the patch size "
        f"{patch_size}; spatially disjoint splits keep at least one patch "
        "between areas of different splits. Raise the margin or leave it "
        "unset (None: the patch size).")
  block_size = (default_block_size((height, width), patch_size, margin)
                if not block_size else _check_size("block_size", block_size))
  if block_size < patch_size:
    raise errors.ConfigValueError(
        f"config.data.block_size={block_size} is smaller than the patch size "
        f"{patch_size}; no patch would fit in a block. Raise block_size or "
        "set it to 0 (automatic).")
  parsed = parse_fractions(fractions, names)
  split_names = tuple(parsed)
  frac = np.array([parsed[n] for n in split_names])
  rows, cols = block_grid((height, width), block_size)
  num_blocks = (len(rows) - 1) * (len(cols) - 1)
  if num_blocks < len(split_names):
    raise errors.ConfigValueError(
        f"A {height} x {width} scene holds only {num_blocks} block(s) of "
        f"about {block_size} px, fewer than the {len(split_names)} splits "
        f"{list(split_names)}. Lower config.data.block_size (or patch_size), "
        "or give fewer splits a share in config.data.split_fractions.")
  counts = _block_counts(num_blocks, frac)
  base = np.repeat(np.arange(len(split_names)), counts)
  ids = _block_ids((height, width), rows, cols)
  rng = np.random.default_rng(seed)
  hist = None
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (height, width):
      raise errors.ConfigValueError(
          f"The label map has shape {labels.shape}, the scene {shape}.")
    k = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    keep = labels >= 0
    hist = np.zeros((num_blocks, max(k, 1)), np.float64)
    np.add.at(hist, (ids[keep], labels[keep].astype(np.int64)), 1.0)
  candidates = [base[rng.permutation(num_blocks)]
                for _ in range(max(1, int(tries)))]
  scores = [0.0 if hist is None else _score(c, hist, frac) for c in candidates]
  radius = (margin + 1) // 2
  # Best score first (the first of equal draws); the first draw that leaves
  # every split a window (holding a labelled pixel, given labels) wins.
  order = sorted(range(len(candidates)), key=scores.__getitem__)
  assign = candidates[order[0]]
  for i in order:
    regions = _erode(candidates[i][ids].astype(np.int8), len(split_names),
                     radius)
    if _every_split_fits(regions, len(split_names), patch_size, labels):
      assign = candidates[i]
      break
  regions = _erode(assign[ids].astype(np.int8), len(split_names), radius)
  return SceneSplit(regions=regions, names=split_names, kind=SPATIAL,
                    block_size=block_size, margin=margin,
                    blocks=assign.reshape(len(rows) - 1, len(cols) - 1))


def random_pixel_split(labels: np.ndarray, fractions: Any = DEFAULT_FRACTIONS,
                       seed: int = 0, names: Sequence[str] = SPLIT_NAMES,
                       warn: bool = True) -> SceneSplit:
  """The leaky benchmark protocol: labelled pixels drawn into splits at
  random, stratified by class. Logs `LEAKY_WARNING` (see the module
  docstring for why its scores are inflated).

  Args:
    labels: (H, W) integer class map, negative where unlabelled.
    fractions, seed, names: as for `spatial_split`.
    warn: log the warning (tests turn it off).
  """
  # Imported here: the datasets package imports this module.
  from eo_jax.data.datasets.base import stratified_split  # pylint: disable=g-import-not-at-top
  if warn:
    logging.warning("%s", LEAKY_WARNING)
  labels = np.asarray(labels)
  parsed = parse_fractions(fractions, names)
  flat = np.flatnonzero(labels.ravel() >= 0)
  regions = np.full(labels.size, NO_SPLIT, np.int8)
  parts = stratified_split(labels.ravel()[flat], list(parsed.values()), seed)
  for s, part in enumerate(parts):
    regions[flat[part]] = s
  return SceneSplit(regions=regions.reshape(labels.shape), names=tuple(parsed),
                    kind=LEAKY)


def make_split(kind: str, shape: tuple[int, int], patch_size: int,
               fractions: Any = DEFAULT_FRACTIONS, seed: int = 0,
               block_size: int = 0, margin: int | None = None,
               labels: np.ndarray | None = None) -> SceneSplit:
  """`spatial_split` or `random_pixel_split` by name (config.data.split)."""
  if kind == SPATIAL:
    return spatial_split(shape, patch_size, fractions, seed, block_size,
                         margin, labels)
  if kind == LEAKY:
    if labels is None:
      raise errors.ConfigValueError(
          f"config.data.split={LEAKY!r} draws labelled pixels, and this "
          f"dataset has no label map; use split={SPATIAL!r}.")
    return random_pixel_split(labels, fractions, seed)
  raise errors.ConfigValueError(
      f"config.data.split must be one of {KINDS}, got {kind!r}.")


def summed_area(values: np.ndarray) -> np.ndarray:
  """(H + 1, W + 1) int64 summed-area table of a 2-D array."""
  sat = np.zeros((values.shape[0] + 1, values.shape[1] + 1), np.int64)
  sat[1:, 1:] = np.cumsum(np.cumsum(values, 0, dtype=np.int64), 1)
  return sat


def window_sums(sat: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
  """Sum of the size x size window at each (top, left) corner."""
  r, c = corners[:, 0], corners[:, 1]
  return (sat[r + size, c + size] - sat[r, c + size] - sat[r + size, c]
          + sat[r, c])


def grid_corners(shape: tuple[int, int], size: int, stride: int
                 ) -> np.ndarray:
  """(N, 2) corners on the grid of step `stride` of the windows inside the
  scene, row by row."""
  rows = np.arange(0, shape[0] - size + 1, stride)
  cols = np.arange(0, shape[1] - size + 1, stride)
  rr, cc = np.meshgrid(rows, cols, indexing="ij")
  return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int64)


def window_corners(mask: np.ndarray, size: int, stride: int) -> np.ndarray:
  """(N, 2) corners of size x size windows fully inside `mask`, sorted.

  Each connected area of `mask` gets its own grid of step `stride`, placed
  (offset within one step) to hold the most windows, ties to the smallest
  offset: an area just larger than a window holds one wherever it lies, and
  an L-shaped area is not missed by a grid anchored elsewhere. Windows of
  different areas never overlap: a window inside `mask` lies in one area.
  """
  mask = np.asarray(mask, bool)
  areas, _ = ndimage.label(mask)
  found = []
  for k, box in enumerate(ndimage.find_objects(areas), start=1):
    if box is None:
      continue
    rows, cols = box
    if rows.stop - rows.start < size or cols.stop - cols.start < size:
      continue
    inside = areas[box] == k
    every = grid_corners(inside.shape, size, 1)
    fits = (window_sums(summed_area(inside), every, size) == size * size)
    fits = fits.reshape(inside.shape[0] - size + 1, inside.shape[1] - size + 1)
    if not fits.any():
      continue
    # Windows per grid offset: pad to whole steps, fold the steps together.
    nr, nc = -(-fits.shape[0] // stride), -(-fits.shape[1] // stride)
    padded = np.zeros((nr * stride, nc * stride), bool)
    padded[:fits.shape[0], :fits.shape[1]] = fits
    per_offset = padded.reshape(nr, stride, nc, stride).sum(axis=(0, 2))
    dr, dc = np.unravel_index(np.argmax(per_offset), per_offset.shape)
    chosen = np.argwhere(fits[dr::stride, dc::stride]) * stride + [dr, dc]
    found.append(chosen + [rows.start, cols.start])
  if not found:
    return np.zeros((0, 2), np.int64)
  corners = np.concatenate(found).astype(np.int64)
  return corners[np.lexsort((corners[:, 1], corners[:, 0]))]
