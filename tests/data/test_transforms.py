"""Tests of the numpy per-example transforms (any number of bands)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eo_jax.data import transforms as T
from eo_jax.data.bands import Band


def _torch_resize(x, size, mode):
  t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].double()
  kw = {"align_corners": False} if mode == "bilinear" else {}
  out = F.interpolate(t, size=size, mode=mode, **kw)
  return out[0].permute(1, 2, 0).numpy()


def test_bilinear_resize_hand_computed():
  # Half-pixel centres: output x samples input at (x + 0.5) * 2/4 - 0.5,
  # clamped: -0.25 -> 0, 0.25, 0.75, 1.25 -> 1.
  x = np.array([[0.0, 1.0]], np.float32)[..., None]
  out = T.resize(x, (1, 4))
  np.testing.assert_allclose(out[0, :, 0], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize("size", [(7, 5), (20, 33), (3, 3), (11, 11)])
def test_bilinear_resize_matches_pytorch(size):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(11, 13, 6)).astype(np.float32)  # 6 bands, non-square
  out = T.resize(x, size)
  assert out.shape == size + (6,) and out.dtype == np.float32
  np.testing.assert_allclose(out, _torch_resize(x, size, "bilinear"), atol=1e-5)


@pytest.mark.parametrize("size", [(5, 4), (26, 17), (13, 9)])
def test_nearest_resize_matches_pytorch_nearest_exact(size):
  rng = np.random.default_rng(1)
  mask = rng.integers(0, 50, size=(13, 9))
  out = T.resize(mask, size, "nearest")
  ref = _torch_resize(mask[..., None].astype(np.float64), size, "nearest-exact")
  assert out.dtype == mask.dtype
  np.testing.assert_array_equal(out, ref[..., 0].astype(mask.dtype))


def test_resize_same_size_is_identity_and_bad_args_fail():
  x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
  np.testing.assert_array_equal(T.resize(x, (2, 3)), x)
  with pytest.raises(ValueError, match="method"):
    T.resize(x, 4, "cubic")
  with pytest.raises(ValueError, match="positive"):
    T.resize(x, (0, 3))


def test_full_scale_unit_ratio_crop_is_a_plain_resize():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 16, 7)).astype(np.float32)
  mask = rng.integers(0, 5, (16, 16))
  same, same_mask = T.random_resized_crop(x, rng, 16, (1, 1), (1, 1), mask=mask)
  np.testing.assert_array_equal(same, x)
  np.testing.assert_array_equal(same_mask, mask)
  small, _ = T.random_resized_crop(x, rng, (8, 5), (1, 1), (1, 1))
  np.testing.assert_allclose(small, T.resize(x, (8, 5)))


def test_crop_boxes_respect_scale_ratio_and_bounds():
  rng = np.random.default_rng(3)
  for _ in range(300):
    top, left, h, w = T.sample_crop_box(rng, 40, 60, (0.2, 0.6), (0.5, 2.0))
    assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
    # Rounding h and w to pixels moves area and ratio a little.
    assert 0.2 * 2400 * 0.9 <= h * w <= 0.6 * 2400 * 1.1
    assert 0.5 * 0.85 <= w / h <= 2.0 * 1.15


def test_crop_applies_the_same_geometry_to_the_mask():
  h, w = 24, 30
  rows, cols = np.mgrid[:h, :w]
  image = np.stack([rows, cols], -1).astype(np.float32)
  mask = rows * w + cols  # unique id per pixel
  rng = np.random.default_rng(5)
  for _ in range(50):
    out, out_mask = T.random_resized_crop(image, rng, 12, (0.1, 1.0),
                                          (0.5, 2.0), mask=mask)
    # Bilinear samples at the same points the nearest mask pixel comes from,
    # so the two positions differ by less than one source pixel.
    assert np.abs(out[..., 0] - out_mask // w).max() < 1.0
    assert np.abs(out[..., 1] - out_mask % w).max() < 1.0


def test_flips_and_rotations_permute_pixels_exactly():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 6, 3)).astype(np.float32)
  for k in range(4):
    np.testing.assert_array_equal(T.rot90(x, k), np.rot90(x, k, axes=(0, 1)))
  np.testing.assert_array_equal(T.flip(x, True, False), x[:, ::-1])
  np.testing.assert_array_equal(T.flip(x, False, True), x[::-1])
  seen = set()
  for _ in range(40):
    y, m = T.random_flips(x, rng, mask=x[..., 0])
    y, m = T.random_rot90(y, rng, mask=m)
    # Same multiset of values, same pixel moves for image and mask.
    np.testing.assert_array_equal(np.sort(y, None), np.sort(x, None))
    np.testing.assert_array_equal(m, y[..., 0])
    seen.add(y.tobytes())
  assert len(seen) == 8  # the dihedral group of the square


def test_rotation_keeps_non_square_shapes():
  rng = np.random.default_rng(0)
  x = np.arange(4 * 7, dtype=np.float32).reshape(4, 7, 1)
  outs = {T.random_rot90(x, rng)[0].tobytes() for _ in range(30)}
  assert all(T.random_rot90(x, rng)[0].shape == x.shape for _ in range(30))
  assert len(outs) == 2  # 0 and 180 degrees only


def test_normalize_round_trip_and_values():
  bands = (Band("a", 500, mean=2.0, std=4.0), Band("b", 600, mean=-1.0, std=0.5),
           Band("flat", 700, mean=3.0, std=0.0))
  x = np.array([[[6.0, 0.0, 3.0]]], np.float32)
  y = T.normalize(x, bands)
  np.testing.assert_allclose(y, [[[1.0, 2.0, 0.0]]])  # std 0 -> divide by 1
  np.testing.assert_allclose(T.denormalize(y, bands), x)
  rng = np.random.default_rng(0)
  z = rng.normal(size=(5, 5, 3)).astype(np.float32)
  np.testing.assert_allclose(T.denormalize(T.normalize(z, bands), bands), z,
                             atol=1e-6)


def test_normalize_errors_are_explicit():
  with pytest.raises(ValueError, match="build_dataset"):
    T.normalize(np.zeros((2, 2, 1)), (Band("a", 500),))
  with pytest.raises(ValueError, match="3 channels but 1 bands"):
    T.normalize(np.zeros((2, 2, 3)), (Band("a", 500, mean=0, std=1),))


def test_resize_method_keeps_the_meaning_of_each_dtype():
  for dtype in (np.int8, np.uint16, np.int32, np.int64, bool):
    assert T.resize_method(dtype) == "nearest"
  for dtype in (np.float16, np.float32, np.float64):
    assert T.resize_method(np.dtype(dtype)) == "bilinear"
  with pytest.raises(TypeError, match="complex"):
    T.resize_method(np.complex64)
  flags = np.array([[True, False], [False, True]])
  out = T.resize(flags, (4, 4), T.resize_method(flags.dtype))
  assert out.dtype == bool and set(out.ravel().tolist()) == {True, False}


def test_split_draws_reproduce_the_random_transforms():
  """sample_* + the plain transforms make the same draws and results as the
  random_* transforms, so any number of arrays can share one draw."""
  x = np.random.default_rng(0).normal(size=(10, 10, 2)).astype(np.float32)
  mask = np.arange(100).reshape(10, 10)
  for seed in range(12):
    a, b = np.random.default_rng(seed), np.random.default_rng(seed)
    ref, ref_mask = T.random_resized_crop(x, a, 6, (0.2, 1.0), (0.5, 2.0),
                                          mask=mask)
    ref, ref_mask = T.random_flips(ref, a, ref_mask)
    ref, ref_mask = T.random_rot90(ref, a, ref_mask)
    box = T.sample_crop_box(b, 10, 10, (0.2, 1.0), (0.5, 2.0))
    flips = T.sample_flips(b)
    k = T.sample_rot90(b, 6, 6)
    for array, method, expected in ((x, "bilinear", ref),
                                    (mask, "nearest", ref_mask)):
      out = T.rot90(T.flip(T.crop_and_resize(array, box, 6, method), *flips), k)
      np.testing.assert_array_equal(out, expected)
    assert a.random() == b.random()  # both generators in the same state
  # Non-square arrays: half turns only, so the shape never changes.
  rng = np.random.default_rng(1)
  assert {T.sample_rot90(rng, 4, 7) for _ in range(40)} == {0, 2}
  assert {T.sample_rot90(rng, 5, 5) for _ in range(80)} == {0, 1, 2, 3}
