"""'tiny_imagenet': Tiny ImageNet (Stanford CS231n), 200 classes of 64x64 RGB.

Read lazily (one JPEG per `__getitem__`) from the published layout, as
tiny-imagenet-200.zip extracts it, under `config.data.path` (the
`tiny-imagenet-200` folder itself or the folder holding it):

  wnids.txt                       the 200 WordNet ids, one a line
  words.txt                       'wnid<TAB>name, synonym, ...' (all WordNet)
  train/<wnid>/images/*.JPEG      500 images per class
  val/images/*.JPEG               10,000 images
  val/val_annotations.txt         'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1'

Splits:
  'train': the official training images, less those carved out for 'val'.
  'val':   `val_fraction` of each class of the official training images,
           chosen with `split_seed` (deterministic, stratified); absent when
           `val_fraction` is 0.
  'test':  the official validation set, labelled by val_annotations.txt (the
           official test set has no labels and is not read).

Classes are numbered in sorted-wnid order, as torchvision's ImageFolder
numbers the train folders, so labels match most published models. Class
names are the first name in words.txt ('n01443537' -> 'goldfish'); when two
classes share it, the wnid is appended. Images come as float32 in [0, 255]
(greyscale JPEGs, a few percent of the set, are converted to RGB).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from eo_jax.data import bands as bands_lib
from eo_jax.data.datasets.base import (CLASSIFICATION, DATASETS, Dataset,
                                       DatasetInfo, LabelledImageFiles,
                                       missing_data, hold_out_val)

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
IMAGE_SHAPE = (64, 64, 3)
_FOLDER = "tiny-imagenet-200"
_EXTENSIONS = (".jpeg", ".jpg")
LAYOUT = ("<path>/wnids.txt, <path>/words.txt, "
          "<path>/train/<wnid>/images/*.JPEG, <path>/val/images/*.JPEG and "
          "<path>/val/val_annotations.txt (path may also be the folder "
          f"holding {_FOLDER}/)")


class TinyImageNetFiles(LabelledImageFiles):
  """Lazy source over JPEG files: {'image': (64, 64, 3) float32, 'label'}."""
  dataset_name = "Tiny ImageNet"
  reread_hint = f"re-extract or re-download {URL}"

  def __init__(self, paths: Sequence[str], labels: Sequence[int], name: str):
    super().__init__(labels, name, IMAGE_SHAPE)
    self._paths = list(paths)

  @property
  def paths(self) -> tuple[str, ...]:
    """The image files, in example order."""
    return tuple(self._paths)

  def __repr__(self) -> str:
    return f"TinyImageNetFiles({self._name}, n={len(self)})"

  def _where(self, index: int) -> str:
    return str(self._paths[index])

  def _decode(self, index: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(self._paths[index]) as img:
      return np.asarray(img.convert("RGB"))

  def subset(self, indices: np.ndarray, name: str) -> "TinyImageNetFiles":
    return TinyImageNetFiles([self._paths[i] for i in indices],
                             self.labels[indices], name)


def _find_root(path: str | None) -> Path:
  if not path:
    raise missing_data("Tiny ImageNet", path, URL, "config.data.path", LAYOUT)
  root = Path(path).expanduser()
  if root.is_file():
    raise ValueError(f"config.data.path={path} is a file; extract {root.name} "
                     "and point config.data.path at the extracted "
                     f"{_FOLDER} folder.")
  for candidate in (root, root / _FOLDER):
    if (candidate / "wnids.txt").is_file():
      return candidate
  raise missing_data("Tiny ImageNet", root, URL, "config.data.path", LAYOUT)


def _read_lines(path: Path, root: Path) -> list[str]:
  if not path.is_file():
    raise missing_data(f"Tiny ImageNet's {path.relative_to(root)}", path, URL,
                       "config.data.path", LAYOUT)
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\r\n") for line in f if line.strip()]


def _class_names(wnids: Sequence[str], root: Path) -> tuple[str, ...]:
  words = {}
  for line in _read_lines(root / "words.txt", root):
    wnid, _, text = line.partition("\t")
    words[wnid.strip()] = text
  # A wnid missing from words.txt is named by itself rather than failing.
  first = [words.get(w, w).split(",")[0].strip() or w for w in wnids]
  counts = {n: first.count(n) for n in first}
  return tuple(n if counts[n] == 1 else f"{n} ({w})"
               for n, w in zip(first, wnids))


def _images_in(folder: Path) -> list[str]:
  return sorted(f for f in os.listdir(folder)
                if f.lower().endswith(_EXTENSIONS))


def _train_files(root: Path, wnids: Sequence[str]) -> TinyImageNetFiles:
  paths, labels = [], []
  for label, wnid in enumerate(wnids):
    folder = root / "train" / wnid / "images"
    if not folder.is_dir():
      raise missing_data(f"Tiny ImageNet training images of class {wnid}",
                         folder, URL, "config.data.path", LAYOUT)
    names = _images_in(folder)
    if not names:
      raise ValueError(f"{folder} has no JPEG images; the extraction is "
                       f"incomplete. Re-extract {URL}.")
    paths += [str(folder / n) for n in names]
    labels += [label] * len(names)
  return TinyImageNetFiles(paths, labels, "train")


def _val_files(root: Path, wnids: Sequence[str]) -> TinyImageNetFiles:
  annotations = root / "val" / "val_annotations.txt"
  folder = root / "val" / "images"
  lines = _read_lines(annotations, root)
  if not folder.is_dir():
    raise missing_data("Tiny ImageNet validation images", folder, URL,
                       "config.data.path", LAYOUT)
  present = set(os.listdir(folder))
  index = {w: i for i, w in enumerate(wnids)}
  paths, labels = [], []
  for number, line in enumerate(lines, 1):
    fields = line.split("\t")
    if len(fields) < 2:
      raise ValueError(f"{annotations}, line {number}: expected 'file<TAB>wnid"
                       f"<TAB>box', got {line!r}.")
    name, wnid = fields[0].strip(), fields[1].strip()
    if wnid not in index:
      raise ValueError(f"{annotations}, line {number}: class {wnid!r} is not "
                       "in wnids.txt; the files come from different versions "
                       "of the dataset.")
    if name not in present:
      raise ValueError(f"{annotations}, line {number} names {name}, which is "
                       f"not in {folder}; the extraction is incomplete.")
    paths.append(str(folder / name))
    labels.append(index[wnid])
  return TinyImageNetFiles(paths, labels, "test")


@DATASETS.register("tiny_imagenet")
def tiny_imagenet(path: str | None = None, val_fraction: float = 0.1,
                  split_seed: int = 0) -> Dataset:
  """Builds Tiny ImageNet (see the module docstring).

  Args:
    path: the extracted `tiny-imagenet-200` folder, or the folder holding it.
    val_fraction: share of each class's training images held out as 'val'
      (0 -> no 'val' split).
    split_seed: seed of the per-class shuffle that picks them.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"config.data.val_fraction must be in [0, 1), got "
                     f"{val_fraction}.")
  root = _find_root(path)
  listed = _read_lines(root / "wnids.txt", root)
  wnids = tuple(sorted({w.strip() for w in listed}))
  if len(wnids) != len(listed):
    raise ValueError(f"{root / 'wnids.txt'} lists a class twice.")
  full = _train_files(root, wnids)
  splits = {"test": _val_files(root, wnids)}
  splits.update(hold_out_val(full, val_fraction, split_seed))
  info = DatasetInfo(name="tiny_imagenet", bands=bands_lib.RGB,
                     class_names=_class_names(wnids, root),
                     task=CLASSIFICATION, image_size=IMAGE_SHAPE[:2],
                     rgb_bands=("R", "G", "B"))
  return Dataset(info=info, splits=splits)
