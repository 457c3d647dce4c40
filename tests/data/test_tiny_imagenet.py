"""Tiny ImageNet, read from a fixture in the published tiny-imagenet-200
layout."""
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from eo_jax.data import bands
from eo_jax.data.datasets import build_dataset
from eo_jax.data.datasets.base import DATASETS, MissingDataError
from eo_jax.data.datasets import tiny_imagenet

# wnids.txt order is deliberately not sorted; labels follow sorted wnids.
WNIDS_LISTED = ("n09999999", "n01443537", "n02012849")
SORTED = ("n01443537", "n02012849", "n09999999")
COLOURS = {"n01443537": (220, 40, 40), "n02012849": (40, 220, 40),
           "n09999999": (40, 40, 220)}
WORDS = {
    "n00001740": "entity",
    "n01443537": "goldfish, Carassius auratus",
    "n02012849": "crane",
    "n09999999": "crane, derrick",  # same first name as n02012849
}
PER_CLASS = 10
VAL_PER_CLASS = 3


def _jpeg(path, colour, mode="RGB"):
  image = Image.new("RGB", (64, 64), colour)
  if mode == "L":
    image = image.convert("L")
  image.save(path, format="JPEG", quality=95)


@pytest.fixture
def root(tmp_path):
  """tmp_path/tiny-imagenet-200 with 3 classes, as the zip extracts."""
  base = tmp_path / "tiny-imagenet-200"
  base.mkdir()
  (base / "wnids.txt").write_text("\n".join(WNIDS_LISTED) + "\n")
  (base / "words.txt").write_text(
      "".join(f"{w}\t{t}\n" for w, t in WORDS.items()))
  for wnid in WNIDS_LISTED:
    folder = base / "train" / wnid / "images"
    folder.mkdir(parents=True)
    boxes = []
    for i in range(PER_CLASS):
      name = f"{wnid}_{i}.JPEG"
      # One greyscale JPEG, as the real training set has some.
      _jpeg(folder / name, COLOURS[wnid], "L" if (wnid, i) == (SORTED[0], 3)
            else "RGB")
      boxes.append(f"{name}\t0\t0\t63\t63\n")
    (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
  (base / "val" / "images").mkdir(parents=True)
  lines = []
  for k in range(VAL_PER_CLASS * 3):
    wnid = WNIDS_LISTED[k % 3]
    _jpeg(base / "val" / "images" / f"val_{k}.JPEG", COLOURS[wnid])
    lines.append(f"val_{k}.JPEG\t{wnid}\t1\t2\t50\t60\n")
  (base / "val" / "val_annotations.txt").write_text("".join(lines))
  (base / "test" / "images").mkdir(parents=True)
  _jpeg(base / "test" / "images" / "test_0.JPEG", (0, 0, 0))
  return base


def _label_from_colour(image):
  """Which class colour an image is: its brightest channel (or grey -> 0)."""
  return int(np.argmax(image.reshape(-1, 3).mean(0)))


def test_info_classes_and_bands(root):
  ds = DATASETS.get("tiny_imagenet")(path=str(root))
  assert ds.info.name == "tiny_imagenet"
  assert ds.info.bands == bands.RGB
  assert ds.info.image_size == (64, 64)
  assert ds.info.rgb_bands == ("R", "G", "B")
  assert ds.info.class_names == ("goldfish", "crane (n02012849)",
                                 "crane (n09999999)")


def test_splits_sizes_stratified_and_deterministic(root):
  ds = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.2)
  train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
  assert (len(train), len(val), len(test)) == (24, 6, 9)
  assert np.bincount(val.labels).tolist() == [2, 2, 2]
  assert np.bincount(train.labels).tolist() == [8, 8, 8]
  files = lambda s: set(s.paths)
  assert not files(train) & files(val)
  assert len(files(train) | files(val)) == 3 * PER_CLASS
  again = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.2)
  assert files(again.split("val")) == files(val)
  other = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.2,
                                      split_seed=1)
  assert files(other.split("val")) != files(val)
  no_val = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.0)
  assert sorted(no_val.splits) == ["test", "train"]
  assert len(no_val.split("train")) == 3 * PER_CLASS


def test_examples_decode_with_labels_matching_pixels(root):
  ds = tiny_imagenet.tiny_imagenet(path=str(root))
  for split in ("train", "val", "test"):
    source = ds.split(split)
    for i in range(len(source)):
      example = source[i]
      image = example["image"]
      assert image.shape == (64, 64, 3) and image.dtype == np.float32
      assert example["label"].dtype == np.int32
      assert 0 <= image.min() and image.max() <= 255
      wnid = SORTED[int(example["label"])]
      if np.ptp(image.mean((0, 1))) < 1:  # the greyscale JPEG
        assert wnid == SORTED[0]
        continue
      assert _label_from_colour(image) == _label_from_colour(
          np.array(COLOURS[wnid], np.float32)), (split, i)
      np.testing.assert_allclose(image.mean((0, 1)), COLOURS[wnid], atol=4)


def test_greyscale_jpeg_becomes_three_equal_channels(root):
  ds = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.0)
  train = ds.split("train")
  grey = [i for i, p in enumerate(train.paths)
          if p.endswith(f"{SORTED[0]}_3.JPEG")]
  image = train[grey[0]]["image"]
  np.testing.assert_array_equal(image[..., 0], image[..., 1])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  expected = Image.new("RGB", (1, 1), COLOURS[SORTED[0]]).convert("L")
  assert abs(image.mean() - expected.getpixel((0, 0))) < 4


def test_path_may_be_the_parent_folder(root):
  ds = tiny_imagenet.tiny_imagenet(path=str(root.parent))
  assert len(ds.split("test")) == 9


def test_build_dataset_selects_bands_and_computes_stats(root):
  config = ml_collections.ConfigDict(dict(
      name="tiny_imagenet", path=str(root), val_fraction=0.2,
      bands=("G", "R")))
  ds = build_dataset(config)
  assert [b.name for b in ds.info.bands] == ["G", "R"]
  assert ds.split("train")[0]["image"].shape == (64, 64, 2)
  train = ds.split("train")
  pixels = np.stack([train[i]["image"] for i in range(len(train))])
  np.testing.assert_allclose([b.mean for b in ds.info.bands],
                             pixels.mean((0, 1, 2)), rtol=1e-5)


def test_missing_data_names_the_url_and_config_key(tmp_path):
  for path in (None, str(tmp_path / "nowhere"), str(tmp_path)):
    with pytest.raises(MissingDataError) as e:
      tiny_imagenet.tiny_imagenet(path=path)
    assert "tiny-imagenet-200.zip" in str(e.value)
    assert "config.data.path" in str(e.value)
  archive = tmp_path / "tiny-imagenet-200.zip"
  archive.write_bytes(b"PK")
  with pytest.raises(ValueError, match="extract"):
    tiny_imagenet.tiny_imagenet(path=str(archive))


def test_missing_pieces_of_the_layout(root):
  os.remove(root / "val" / "val_annotations.txt")
  with pytest.raises(MissingDataError, match="val_annotations.txt"):
    tiny_imagenet.tiny_imagenet(path=str(root))


def test_missing_class_folder(root):
  (root / "wnids.txt").write_text("\n".join(WNIDS_LISTED + ("n07777777",)))
  with pytest.raises(MissingDataError, match="n07777777"):
    tiny_imagenet.tiny_imagenet(path=str(root))


def test_bad_annotations_fail_with_line_number(root):
  path = root / "val" / "val_annotations.txt"
  path.write_text(path.read_text() + "val_0.JPEG\tn05555555\t0\t0\t1\t1\n")
  with pytest.raises(ValueError, match=r"line 10: class 'n05555555'"):
    tiny_imagenet.tiny_imagenet(path=str(root))
  path.write_text("val_99.JPEG\tn01443537\t0\t0\t1\t1\n")
  with pytest.raises(ValueError, match="names val_99.JPEG"):
    tiny_imagenet.tiny_imagenet(path=str(root))


def test_corrupt_file_is_named_when_read(root):
  bad = root / "train" / SORTED[1] / "images" / f"{SORTED[1]}_0.JPEG"
  bad.write_bytes(b"\xff\xd8\xff not a jpeg")
  ds = tiny_imagenet.tiny_imagenet(path=str(root), val_fraction=0.0)  # lazy
  train = ds.split("train")
  index = train.paths.index(str(bad))
  with pytest.raises(ValueError, match=f"{bad.name}.*corrupt"):
    train[index]
  with pytest.raises(IndexError):
    train[len(train)]


def test_wrong_image_size_is_named(root):
  bad = root / "val" / "images" / "val_0.JPEG"
  Image.new("RGB", (32, 32), (1, 2, 3)).save(bad, format="JPEG")
  test = tiny_imagenet.tiny_imagenet(path=str(root)).split("test")
  with pytest.raises(ValueError, match="val_0.JPEG has shape"):
    test[0]


def test_bad_val_fraction():
  with pytest.raises(ValueError, match="val_fraction"):
    tiny_imagenet.tiny_imagenet(path="x", val_fraction=1.0)
