"""Tests for eo_jax.models.layers: the im2col Conv must equal nn.Conv."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import backend
from eo_jax.models import layers


@pytest.fixture(autouse=True)
def _quick_rng_compile():
  # XLA CPU compiles jax 0.10's default (partitionable) threefry several
  # times slower; which random stream initialises the weights is irrelevant
  # to these tests.
  with jax.threefry_partitionable(False):
    yield


def _against_nn_conv(x, im2col_max_size, im2col_kernel_grad_max_channels=0,
                     **conv_kwargs):
  """Outputs and input/param gradients of nn.Conv and of layers.Conv.

  `im2col_max_size` picks the layers.Conv path: large (64) forces im2col for
  every shape tested here, 0 forces the XLA conv with the matmul kernel
  gradient (set explicitly, whatever the backend's default), per tap unless
  `im2col_kernel_grad_max_channels` admits the input's channels. Returns
  (variables, [(y, grads) of nn.Conv, of layers.Conv]).
  """
  ref = nn.Conv(**conv_kwargs)
  ours = layers.Conv(**conv_kwargs, im2col_max_size=im2col_max_size,
                     matmul_kernel_grad=True,
                     im2col_kernel_grad_max_channels=(
                         im2col_kernel_grad_max_channels))
  variables = ref.init(jax.random.key(0), x)
  weights = jax.random.normal(jax.random.key(1), (1,))  # for a non-trivial loss

  def loss(module, params, x):
    y = module.apply({"params": params}, x)
    return jnp.sum(jnp.sin(y) * (1.0 + weights)), y

  results = []
  for module in (ref, ours):
    (_, y), grads = jax.jit(jax.value_and_grad(
        lambda p, x, m=module: loss(m, p, x), argnums=(0, 1), has_aux=True))(
            variables["params"], x)
    results.append((y, grads))
  return variables, results


def _both(x, **conv_kwargs):
  """nn.Conv vs layers.Conv on its im2col path."""
  return _against_nn_conv(x, 64, **conv_kwargs)[1]


@pytest.mark.parametrize("shape,strides,padding", [
    ((2, 1, 1, 5), 1, "SAME"),
    ((2, 2, 2, 5), 1, "SAME"),
    ((2, 2, 3, 5), 2, "SAME"),
    ((2, 4, 4, 5), 2, "SAME"),
    ((2, 5, 6, 5), 2, "SAME"),
    ((2, 3, 4, 5), 1, "VALID"),
    ((2, 6, 5, 5), 2, "VALID"),
    ((2, 2, 2, 5), 1, 1),
    ((2, 5, 5, 5), 2, 1),
    ((2, 3, 4, 5), 2, ((2, 0), (0, 1))),
    ((2, 4, 4, 5), 1, ((1, -1), (2, 0))),
])
def test_matches_nn_conv_values_and_grads(shape, strides, padding):
  kernel = 3
  pads = layers.explicit_padding(padding, shape[1:3], (kernel, kernel),
                                 (strides, strides))
  if any(n + lo + hi < kernel for n, (lo, hi) in zip(shape[1:3], pads)):
    pytest.skip("kernel larger than the padded map; nn.Conv fails too")
  x = jax.random.normal(jax.random.key(2), shape)
  (y_ref, g_ref), (y, g) = _both(
      x, features=7, kernel_size=(kernel, kernel), strides=strides,
      padding=padding)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=(1, 1), strides=2, use_bias=False),
    dict(kernel_size=(2, 3), strides=(1, 2), padding="SAME"),
    dict(kernel_size=(3, 3), kernel_dilation=2, padding="SAME"),
    dict(kernel_size=(7, 7), strides=2, padding=3),
])
def test_matches_nn_conv_other_shapes(kwargs):
  x = jax.random.normal(jax.random.key(3), (3, 4, 4, 6))
  (y_ref, g_ref), (y, g) = _both(x, features=4, **kwargs)
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_path_choice_is_by_input_size(monkeypatch):
  calls = []
  original = layers.conv_im2col

  def spy(*args, **kwargs):
    calls.append(args[0].shape)
    return original(*args, **kwargs)

  monkeypatch.setattr(layers, "conv_im2col", spy)
  conv = layers.Conv(features=2, kernel_size=(3, 3), im2col_max_size=4)
  for size in (4, 5):
    x = jnp.ones((1, size, size, 3))
    conv.init(jax.random.key(0), x)
  assert calls == [(1, 4, 4, 3)]
  # Grouped convolutions always use XLA's convolution.
  calls.clear()
  grouped = layers.Conv(features=6, kernel_size=(3, 3), feature_group_count=3)
  grouped.init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))
  assert not calls


def test_same_params_as_nn_conv():
  x = jnp.ones((2, 2, 2, 3))
  for size in (2, 16):
    x = jnp.ones((2, size, size, 3))
    ours = layers.Conv(8, (3, 3)).init(jax.random.key(0), x)
    ref = nn.Conv(8, (3, 3)).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, ref)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
      np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_keeps_float32_params():
  conv = layers.Conv(4, (3, 3), dtype=jnp.bfloat16)
  # 2x2 maps take the im2col path, 6x6 ones XLA's convolution.
  for size in (2, 6):
    x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
    variables = conv.init(jax.random.key(0), x)
    y = conv.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    assert variables["params"]["kernel"].dtype == jnp.float32
    y = np.asarray(y, np.float32)
    ref = np.asarray(layers.Conv(4, (3, 3)).apply(variables, x))
    # Inputs, kernel and output each rounded to 8 significant bits (<= 2^-8
    # = 0.39% each, ~1.2% together at worst): measured max errors 0.34%
    # (2x2) and 0.39% (6x6) of max |y|; 2% leaves ~5x margin.
    assert np.abs(ref).max() > 1.0
    assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max()
    assert not np.array_equal(y, ref)  # bfloat16 was really used


def test_kernel_too_large_for_map_is_a_clear_error():
  with pytest.raises(ValueError, match="does not fit"):
    layers.conv_im2col(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)),
                       (1, 1), ((0, 0), (0, 0)))


def test_max_pool_module_matches_function():
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 3))
  pool = layers.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)))
  y = pool.apply({}, x)
  # Hand check of one output: the top-left window covers rows/cols 0..1.
  np.testing.assert_allclose(y[:, 0, 0], x[:, :2, :2].max(axis=(1, 2)))
  assert y.shape == (2, 4, 4, 3)
  avg = layers.AvgPool((2, 2), (2, 2)).apply({}, x)
  np.testing.assert_allclose(avg[:, 1, 2], x[:, 2:4, 4:6].mean(axis=(1, 2)),
                             rtol=1e-6)



def _with_kernel_grad_path(x, **conv_kwargs):
  """nn.Conv vs layers.Conv forced onto conv_matmul_kernel_grad."""
  return _against_nn_conv(x, 0, **conv_kwargs)


@pytest.mark.parametrize("shape,kernel,strides,padding,dilation", [
    ((2, 6, 6, 5), 3, 1, "SAME", 1),
    ((2, 7, 6, 5), 3, 2, "SAME", 1),
    ((2, 8, 8, 5), 3, 2, ((1, 1), (1, 1)), 1),
    ((2, 9, 9, 3), 7, 2, 3, 1),
    ((2, 8, 8, 5), 1, 2, "VALID", 1),
    ((2, 8, 7, 5), 3, 1, "SAME", 2),
    ((2, 8, 8, 5), 3, 1, ((2, 0), (0, 1)), 1),
])
def test_matmul_kernel_grad_matches_nn_conv(shape, kernel, strides, padding,
                                            dilation):
  x = jax.random.normal(jax.random.key(2), shape)
  _, ((y_ref, g_ref), (y, g)) = _with_kernel_grad_path(
      x, features=7, kernel_size=(kernel, kernel), strides=strides,
      padding=padding, kernel_dilation=dilation)
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


def test_matmul_kernel_grad_unrolled_form_for_multi_process(monkeypatch):
  # Multi-process runs take the unrolled per-tap form; same results.
  monkeypatch.setattr(layers.jax, "process_count", lambda: 2)
  x = jax.random.normal(jax.random.key(2), (2, 7, 6, 5))
  _, ((y_ref, g_ref), (y, g)) = _with_kernel_grad_path(
      x, features=7, kernel_size=(3, 3), strides=2, padding="SAME")
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("path,size,dilation,padding,unrolled", [
    # im2col (small maps): ResNet-style padding = dilation, where most taps
    # of a 2x2 or 4x4 map read padding (a dilated ResNet's last stage).
    ("im2col", 2, 2, 2, False),
    ("im2col", 4, 4, 4, False),
    ("im2col", 4, 2, "SAME", False),
    # XLA's forward, kernel gradient as per-tap matmuls (scan and unrolled).
    ("matmul", 8, 2, 2, False),
    ("matmul", 9, 4, 4, False),
    ("matmul", 8, 2, "SAME", True),
])
def test_dilated_conv_matches_nn_conv(monkeypatch, path, size, dilation,
                                      padding, unrolled):
  if unrolled:
    monkeypatch.setattr(layers.jax, "process_count", lambda: 2)
  calls = []
  for fn in ("conv_im2col", "conv_matmul_kernel_grad"):
    monkeypatch.setattr(layers, fn, lambda *a, f=getattr(layers, fn), n=fn,
                        **k: (calls.append(n), f(*a, **k))[1])
  x = jax.random.normal(jax.random.key(4), (2, size, size + 1, 5))
  _, ((y_ref, g_ref), (y, g)) = _against_nn_conv(
      x, 64 if path == "im2col" else 0, features=6, kernel_size=(3, 3),
      strides=1, padding=padding, kernel_dilation=dilation)
  assert set(calls) == {"conv_im2col" if path == "im2col"
                        else "conv_matmul_kernel_grad"}
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


def test_matmul_kernel_grad_forward_mode_and_kernel_only():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  dx = jax.random.normal(jax.random.key(2), x.shape)
  dk = jax.random.normal(jax.random.key(3), kernel.shape)
  pads = ((1, 1), (1, 1))

  def ref(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (2, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(x, k):
    return layers.conv_matmul_kernel_grad(x, k, (2, 2), pads)

  _, t_ref = jax.jvp(ref, (x, kernel), (dx, dk))
  _, t = jax.jvp(ours, (x, kernel), (dx, dk))
  np.testing.assert_allclose(t, t_ref, atol=1e-4, rtol=1e-5)
  # Only the kernel differentiated: the input's tangent is a symbolic zero.
  g_ref = jax.grad(lambda k: jnp.sum(ref(x, k) ** 2))(kernel)
  g = jax.jit(jax.grad(lambda k: jnp.sum(ours(x, k) ** 2)))(kernel)
  np.testing.assert_allclose(g, g_ref, atol=1e-4, rtol=1e-5)


_YNN_CONVS = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"


def test_override_formulations_applies_while_tracing(monkeypatch):
  # The CPU formulation where convolutions run on YNNPACK (all rewrites).
  monkeypatch.setenv("XLA_FLAGS", _YNN_CONVS)
  calls = []
  for fn in ("conv_im2col", "conv_matmul_kernel_grad"):
    original = getattr(layers, fn)
    monkeypatch.setattr(layers, fn, lambda *a, f=original, n=fn, **k: (
        calls.append(n), f(*a, **k))[1])
  conv = layers.Conv(features=2, kernel_size=(3, 3))
  small, large = jnp.ones((1, 2, 2, 3)), jnp.ones((1, 8, 8, 3))
  variables = conv.init(jax.random.key(0), small)
  calls.clear()
  conv.apply(variables, small)
  conv.apply(variables, large)
  assert calls == ["conv_im2col", "conv_matmul_kernel_grad"]
  calls.clear()
  with layers.override_formulations(im2col_max_size=0,
                                    matmul_kernel_grad=False):
    y_xla = conv.apply(variables, small)
    conv.apply(variables, large)
  assert not calls
  y = conv.apply(variables, small)  # the override ended with the block
  assert calls == ["conv_im2col"]
  np.testing.assert_allclose(y, y_xla, atol=1e-5)
  with pytest.raises(ValueError, match=">= 0"):
    with layers.override_formulations(im2col_max_size=-1):
      pass


@pytest.mark.parametrize("window,strides,padding", [
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 2), (2, 2), "VALID"),
    ((3, 3), (1, 1), "SAME"),
    ((3, 2), None, "VALID"),
])
def test_max_pool_gradient_matches_nn_max_pool(window, strides, padding):
  # ReLU zeros create ties; both must send the gradient to the first
  # maximum of each window.
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 9, 8, 3)))
  x = x.at[:, 2:4, 2:4].set(0.5)  # positive ties too
  pool = layers.MaxPool(window, strides, padding)

  def ref(x):
    return nn.max_pool(x, window, strides, padding)

  def ours(x):
    return pool.apply({}, x)

  np.testing.assert_array_equal(ours(x), ref(x))
  cotangent = jax.random.normal(jax.random.key(1), ref(x).shape)
  g_ref = jax.vjp(ref, x)[1](cotangent)[0]
  g = jax.jit(lambda x: jax.vjp(ours, x)[1](cotangent)[0])(x)
  np.testing.assert_array_equal(g, g_ref)
  dx = jax.random.normal(jax.random.key(2), x.shape)
  for a, b in zip(jax.jvp(ours, (x,), (dx,)), jax.jvp(ref, (x,), (dx,))):
    np.testing.assert_array_equal(a, b)  # values (from the views) too


def test_max_pool_override_uses_nn_max_pool(monkeypatch):
  calls = []
  original = layers.max_pool
  monkeypatch.setattr(layers, "max_pool",
                      lambda *a: (calls.append(1), original(*a))[1])
  pool = layers.MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)))
  x = jnp.ones((1, 8, 8, 2))
  with layers.override_formulations(max_pool_views_grad=False):
    pool.apply({}, x)
  assert not calls
  pool.apply({}, x)
  assert calls == [1]


def _im2col_forms_used(monkeypatch):
  """Records each kernel-gradient form `conv_matmul_kernel_grad` runs."""
  used = []
  for form, fn in list(layers._KERNEL_GRAD_FORMS.items()):
    monkeypatch.setitem(layers._KERNEL_GRAD_FORMS, form,
                        lambda *a, f=fn, n=form: (used.append(n), f(*a))[1])
  return used


@pytest.mark.parametrize("shape,kernel,strides,padding,dilation", [
    # The ResNet stem (7x7/2, padding 3) on even and odd sizes, 1..13 bands.
    ((2, 16, 16, 13), 7, 2, 3, 1),
    ((1, 15, 13, 4), 7, 2, 3, 1),
    ((3, 9, 10, 1), 7, 2, 3, 1),
    ((2, 11, 11, 2), 5, 2, "SAME", 1),
    ((2, 10, 9, 3), 3, 2, ((1, 0), (2, 1)), 1),
    ((3, 7, 8, 5), 3, 1, "VALID", 1),
    ((2, 8, 9, 3), 3, 1, "SAME", 2),
])
def test_im2col_kernel_grad_matches_nn_conv(monkeypatch, shape, kernel,
                                            strides, padding, dilation):
  used = _im2col_forms_used(monkeypatch)
  x = jax.random.normal(jax.random.key(5), shape)
  _, ((y_ref, g_ref), (y, g)) = _against_nn_conv(
      x, 0, im2col_kernel_grad_max_channels=64, features=6,
      kernel_size=(kernel, kernel), strides=strides, padding=padding,
      kernel_dilation=dilation)
  assert set(used) == {"im2col"}
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=2e-5, rtol=1e-5)
  # Kernel, bias and (XLA's own) input gradients.
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_pixels,max_bands,devices,chunking", [
    # (groups, images per group, output rows per band) for a batch of 4
    # 3x4 outputs.
    (1, 8, 1, (1, 1, 1)),     # bands of one output row
    (8, 8, 1, (1, 1, 2)),     # bands of 2 rows, the last 1 row
    (1, 2, 1, (1, 1, 2)),     # capped at 2 bands: 2 rows, then 1
    (24, 8, 1, (1, 2, 3)),    # 2 whole images per chunk
    (1000, 8, 1, (1, 4, 3)),  # the whole batch in one chunk
    (12, 8, 2, (2, 1, 3)),    # one image per device in each chunk
    (12, 8, 5, (1, 1, 3)),    # 5 devices do not divide the batch
])
def test_im2col_kernel_grad_chunking(monkeypatch, chunk_pixels, max_bands,
                                     devices, chunking):
  # Chunks of rows, of whole images and across devices cover every output
  # pixel once: the kernel gradient equals XLA's for each.
  monkeypatch.setattr(layers, "_IM2COL_CHUNK_PIXELS", chunk_pixels)
  monkeypatch.setattr(layers, "_IM2COL_MAX_BANDS", max_bands)
  monkeypatch.setattr(layers.jax, "device_count", lambda: devices)
  assert layers._im2col_chunking(4, 3, 4) == chunking
  x = jax.random.normal(jax.random.key(6), (4, 5, 7, 3))
  kernel = jax.random.normal(jax.random.key(7), (3, 3, 3, 2))
  pads = ((0, 0), (1, 1))
  ct = jax.random.normal(jax.random.key(8), (4, 3, 4, 2))

  def ref(k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(k):
    return layers.conv_matmul_kernel_grad(x, k, (1, 2), pads,
                                          kernel_grad="im2col")

  g_ref = jax.vjp(ref, kernel)[1](ct)[0]
  g = jax.jit(lambda k: jax.vjp(ours, k)[1](ct)[0])(kernel)
  np.testing.assert_allclose(g, g_ref, atol=2e-5, rtol=1e-5)


def test_im2col_kernel_grad_forward_mode_and_no_input_gradient():
  x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
  kernel = jax.random.normal(jax.random.key(1), (7, 7, 3, 4))
  dx = jax.random.normal(jax.random.key(2), x.shape)
  dk = jax.random.normal(jax.random.key(3), kernel.shape)
  pads = ((3, 3), (3, 3))

  def ref(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (2, 2), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(x, k):
    return layers.conv_matmul_kernel_grad(x, k, (2, 2), pads,
                                          kernel_grad="im2col")

  _, t_ref = jax.jvp(ref, (x, kernel), (dx, dk))
  _, t = jax.jvp(ours, (x, kernel), (dx, dk))
  np.testing.assert_allclose(t, t_ref, atol=1e-4, rtol=1e-5)
  # A stem's training pass: the kernel's gradient only. The image's
  # (XLA's transposed convolution) is never built: the program's one
  # convolution is the forward pass.
  program = jax.jit(jax.grad(lambda k: jnp.sum(ours(x, k) ** 2))).lower(
      kernel).as_text()
  assert program.count("stablehlo.convolution") == 1
  with pytest.raises(ValueError, match="'taps'"):
    layers.conv_matmul_kernel_grad(x, kernel, (2, 2), pads, kernel_grad="s2d")


def test_cpu_rule_picks_im2col_kernel_grad_where_intended(monkeypatch):
  # The rule is for convolutions on YNNPACK; with XLA's own (eo_jax's CPU
  # default) the kernel gradients are XLA's, checked at the end.
  monkeypatch.setenv("XLA_FLAGS", _YNN_CONVS)
  used = _im2col_forms_used(monkeypatch)
  assert backend.cpu_formulations().im2col_kernel_grad_max_channels == 128
  assert backend.xla_formulations().im2col_kernel_grad_max_channels == 0

  def forms(conv, size, channels):
    x = jnp.ones((2, size, size, channels))
    variables = conv.init(jax.random.key(0), x)
    used.clear()
    jax.grad(lambda p: jnp.sum(conv.apply({"params": p}, x)))(
        variables["params"])
    return list(used)

  stem = layers.Conv(8, (7, 7), strides=2, padding=3)
  conv3 = layers.Conv(8, (3, 3), padding=1)
  with backend.use_formulations("cpu"):
    assert forms(stem, 12, 13) == ["im2col"]
    assert forms(conv3, 6, 128) == ["im2col"]
    assert forms(conv3, 6, 129) == ["taps"]  # many channels: per tap
    assert forms(layers.Conv(8, (1, 1)), 6, 3) == ["taps"]  # one tap
    assert forms(layers.Conv(8, (1, 3)), 6, 3) == ["im2col"]
    assert forms(conv3, 4, 3) == []  # small maps: conv_im2col
    # A module attribute, then an override block, beat the backend.
    assert forms(layers.Conv(8, (3, 3), im2col_kernel_grad_max_channels=0),
                 6, 3) == ["taps"]
    with layers.override_formulations(im2col_kernel_grad_max_channels=0):
      assert forms(stem, 12, 13) == ["taps"]
    with layers.override_formulations(matmul_kernel_grad=False):
      assert forms(stem, 12, 13) == []  # nn.Conv
    # Multi-process runs keep the unrolled taps (no scan of collectives).
    monkeypatch.setattr(layers.jax, "process_count", lambda: 2)
    assert forms(stem, 12, 13) == ["taps"]
  with backend.use_formulations("xla"):
    assert forms(stem, 12, 13) == []
  monkeypatch.setenv("XLA_FLAGS", backend.CPU_XLA_FLAGS)
  with backend.use_formulations("cpu"):
    assert forms(stem, 12, 13) == [] and forms(conv3, 6, 128) == []
  with pytest.raises(ValueError, match="im2col_kernel_grad_max_channels"):
    with layers.override_formulations(im2col_kernel_grad_max_channels=-1):
      pass
