"""Tests for eo_jax.models.lenet."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import summary
from eo_jax.data import bands as bands_lib
from eo_jax.models import build_model, lenet


@pytest.fixture(autouse=True)
def _quick_rng_compile():
  # XLA CPU compiles jax 0.10's default (partitionable) threefry several
  # times slower; which random stream initialises the weights is irrelevant
  # to these tests.
  with jax.threefry_partitionable(False):
    yield


def _bands(n):
  return bands_lib.RGB if n == 3 else bands_lib.SENTINEL2[:n]


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("num_bands,size", [(1, 32), (3, 32), (13, 64)])
def test_shapes_and_param_count(num_bands, size):
  model = build_model({"name": "lenet"}, bands=_bands(num_bands),
                      num_classes=10)
  x = jnp.zeros((2, size, size, num_bands))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, feats = jax.eval_shape(model.apply, variables, x)
  # conv 5x5 VALID then pool 2: (size - 4) // 2, twice.
  s1 = (size - 4) // 2
  s2 = (s1 - 4) // 2
  assert logits.shape == (2, 10)
  assert {k: v.shape for k, v in feats.items()} == {
      "stem": (2, s1, s1, 6), "stage_1": (2, s2, s2, 16),
      "pre_logits": (2, 84)}
  expected = ((25 * num_bands + 1) * 6 + (25 * 6 + 1) * 16 +
              (s2 * s2 * 16 + 1) * 120 + 121 * 84 + 85 * 10)
  assert _count(variables["params"]) == expected
  if (num_bands, size) == (1, 32):
    assert expected == 61_706  # the classic LeNet-5 count, as in the docstring
  assert set(variables["params"]["head"]) == {"fc"}


def test_values_and_headless_output():
  model = lenet.LeNet(num_classes=3, bands=_bands(2))
  x = jax.random.normal(jax.random.key(0), (4, 20, 20, 2))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  logits, feats = jax.jit(model.apply)(variables, x)
  head = variables["params"]["head"]["fc"]
  np.testing.assert_allclose(
      logits, feats["pre_logits"] @ head["kernel"] + head["bias"], rtol=1e-5,
      atol=1e-6)
  assert (feats["pre_logits"] >= 0).all()  # after a ReLU
  # Max pooling of ReLU'd conv outputs: never negative.
  assert (feats["stem"] >= 0).all() and (feats["stage_1"] >= 0).all()

  headless = lenet.LeNet(num_classes=0, bands=_bands(2))
  params = {k: v for k, v in variables["params"].items() if k != "head"}
  out, feats0 = jax.jit(headless.apply)({"params": params}, x)
  np.testing.assert_allclose(out, feats["pre_logits"], rtol=1e-6)
  np.testing.assert_allclose(feats0["pre_logits"], out)


def test_receptive_field():
  rows = {r.path: r for r in summary.summarize(
      lenet.LeNet(num_classes=10), (1, 32, 32, 1))}
  # 5x5 -> 5; pool 2/2 -> 6, jump 2; 5x5 -> 6 + 4*2 = 14; pool -> 16, jump 4.
  assert [(rows[p].receptive_field, rows[p].jump)
          for p in ("conv1", "pool1", "conv2", "pool2")] == [
              (5, 1), (6, 2), (14, 2), (16, 4)]


def test_bad_inputs_fail_clearly():
  model = lenet.LeNet(num_classes=2, bands=_bands(3))
  init = lambda x, **kw: jax.eval_shape(model.init, jax.random.key(0), x, **kw)
  with pytest.raises(ValueError, match="at least 16x16"):
    init(jnp.zeros((1, 12, 32, 3)))
  with pytest.raises(ValueError, match="3 bands.*13 channels"):
    init(jnp.zeros((1, 32, 32, 13)))
  with pytest.raises(ValueError, match="mask"):
    init(jnp.zeros((1, 32, 32, 3)), mask=jnp.zeros((1, 4)))


# --- An independent forward pass in float64 numpy ---------------------------


def _np_conv_valid(x, kernel, bias):
  """Unpadded stride-1 convolution (cross-correlation), NHWC x HWIO."""
  kh, kw = kernel.shape[:2]
  # (B, H', W', C, kh, kw): every kh x kw window of every channel.
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  return np.einsum("bhwcij,ijco->bhwo", windows, kernel) + bias


def _np_max_pool_2x2(x):
  """2x2 windows, stride 2, VALID: an odd last row/column is dropped."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _np_lenet(params, image):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  relu = lambda a: np.maximum(a, 0.0)
  x = np.asarray(image, np.float64)
  feats = {}
  x = feats["stem"] = _np_max_pool_2x2(
      relu(_np_conv_valid(x, p["conv1"]["kernel"], p["conv1"]["bias"])))
  x = feats["stage_1"] = _np_max_pool_2x2(
      relu(_np_conv_valid(x, p["conv2"]["kernel"], p["conv2"]["bias"])))
  x = x.reshape(x.shape[0], -1)  # row-major over (H, W, C), as Flax's reshape
  x = relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  x = feats["pre_logits"] = relu(x @ p["fc2"]["kernel"] + p["fc2"]["bias"])
  head = p["head"]["fc"]
  return x @ head["kernel"] + head["bias"], feats


def _assert_close_to_scale(got, want, rel, name):
  got = np.asarray(got, np.float64)
  err = np.abs(got - want).max()
  assert err <= rel * np.abs(want).max(), (name, err, np.abs(want).max())


def test_forward_pass_matches_numpy_float64_reference():
  # 25 x 20 pixels: non-square (an H/W swap in the flatten changes fc1's
  # input order) and odd after the first conv (21 rows: the first pool must
  # drop the last row). 21x16 -> pool 10x8 -> conv 6x4 -> pool 3x2x16 = 96.
  model = lenet.LeNet(num_classes=5, bands=_bands(3))
  x = jax.random.normal(jax.random.key(0), (3, 25, 20, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  # Flax initialises biases to zero; random biases make the test see them.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda path, a: (jnp.asarray(rng.normal(0, 0.1, a.shape), a.dtype)
                       if path[-1].key == "bias" else a), variables["params"])
  logits, feats = jax.jit(model.apply)({"params": params}, x)

  want_logits, want = _np_lenet(params, x)
  assert feats["stage_1"].shape == (3, 3, 2, 16)
  # float32 sums of <= 150 products per output against float64: measured
  # max errors 3e-7 to 5e-7 of each output's scale (a (W, H, C) flatten
  # would be off by 35% of the logits' scale).
  for name in ("stem", "stage_1", "pre_logits"):
    assert feats[name].shape == want[name].shape, name
    _assert_close_to_scale(feats[name], want[name], 1e-5, name)
  _assert_close_to_scale(logits, want_logits, 1e-5, "logits")
  # The comparison is not vacuous: ReLUs are active and inactive, logits
  # differ between images.
  assert 0 < (want["pre_logits"] > 0).mean() < 1
  assert np.ptp(want_logits, axis=0).min() > 1e-3
