"""Tiny CIFAR-10 (binary release) and CIFAR-10-C fixtures, in the published
layouts, for tests/data/test_cifar.py and tests/test_robustness.py.

Pixel values are a known function of (record, row, column, channel), so a
test can check any decoded pixel against the bytes it wrote.
"""
import os
import tarfile

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
           "horse", "ship", "truck")


def pixel(record, y, x, c):
  """The value written at row y, column x, channel c of `record` (0-255)."""
  return (31 * record + 3 * y + 5 * x + 80 * c) % 256


def image(record):
  """(32, 32, 3) uint8 image of `record` as `pixel` defines it."""
  y, x, c = np.meshgrid(np.arange(32), np.arange(32), np.arange(3), indexing="ij")
  return pixel(record, y, x, c).astype(np.uint8)


def record_bytes(label, picture):
  """One 3073-byte record: the label, then the R, G and B planes row-major."""
  planes = np.asarray(picture, np.uint8).transpose(2, 0, 1).reshape(-1)
  return bytes([label]) + planes.tobytes()


def write_cifar10(folder, per_batch=4, num_test=6, class_names=CLASSES,
                  images=None):
  """Writes folder/cifar-10-batches-bin/ and returns its path.

  Training record r (0-based over data_batch_1..5) and test record t have
  labels r % 10 and t % 10; their pictures are `image(r)` and
  `image(1000 + t)`, or `images(global id, label)` when given.
  """
  images = images or (lambda rid, label: image(rid))
  batches = os.path.join(folder, "cifar-10-batches-bin")
  os.makedirs(batches, exist_ok=True)
  for b in range(5):
    with open(os.path.join(batches, f"data_batch_{b + 1}.bin"), "wb") as f:
      for r in range(b * per_batch, (b + 1) * per_batch):
        f.write(record_bytes(r % 10, images(r, r % 10)))
  with open(os.path.join(batches, "test_batch.bin"), "wb") as f:
    for t in range(num_test):
      f.write(record_bytes(t % 10, images(1000 + t, t % 10)))
  with open(os.path.join(batches, "batches.meta.txt"), "w") as f:
    f.write("\n".join(class_names) + "\n\n")
  with open(os.path.join(batches, "readme.html"), "w") as f:
    f.write("<html></html>\n")
  return batches


def write_cifar10_archive(batches, path):
  """cifar-10-binary.tar.gz of a `write_cifar10` folder, as published."""
  with tarfile.open(path, "w:gz") as tar:
    tar.add(batches, arcname="cifar-10-batches-bin")
  return path


def write_cifar10_c(folder, labels, corrupted):
  """Writes folder/CIFAR-10-C/ and returns its path.

  Args:
    labels: the n test labels (repeated for the 5 severities).
    corrupted: {corruption: fn(severity) -> (n, 32, 32, 3) uint8}.
  """
  root = os.path.join(folder, "CIFAR-10-C")
  os.makedirs(root, exist_ok=True)
  np.save(os.path.join(root, "labels.npy"),
          np.tile(np.asarray(labels, np.uint8), 5))
  for name, make in corrupted.items():
    stack = np.concatenate([np.asarray(make(s), np.uint8) for s in range(1, 6)])
    np.save(os.path.join(root, f"{name}.npy"), stack)
  return root
