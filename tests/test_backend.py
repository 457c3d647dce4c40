"""eo_jax.backend: one place decides the CPU rewrites, and both choices
compute the same model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import backend
from eo_jax.data import bands as bands_lib
from eo_jax.models import layers, resnet


@pytest.fixture(autouse=True)
def _no_choice_leaks(monkeypatch):
  # Every test starts from the environment's default and leaves no choice
  # behind for the next.
  monkeypatch.delenv(backend.ENV_VAR, raising=False)
  previous = backend.set_formulations(None)
  yield
  backend.set_formulations(previous)


def test_default_on_cpu_is_the_cpu_formulation():
  assert jax.default_backend() == "cpu"
  f = backend.formulations()
  assert f == backend.cpu_formulations()
  assert (f.im2col_max_size, f.matmul_kernel_grad, f.max_pool_views_grad,
          f.partitionable_init_rng) == (4, True, True, False)
  assert layers.IM2COL_MAX_SIZE == f.im2col_max_size


def test_xla_mode_is_plain_xla_ops():
  f = backend.xla_formulations()
  assert (f.im2col_max_size, f.matmul_kernel_grad, f.max_pool_views_grad,
          f.partitionable_init_rng) == (0, False, False, None)


def test_environment_variable_then_call_decide(monkeypatch):
  monkeypatch.setenv(backend.ENV_VAR, "xla")
  assert backend.formulations() == backend.xla_formulations()
  assert backend.set_formulations("cpu") is None  # a call beats the variable
  assert backend.formulations() == backend.cpu_formulations()
  custom = backend.Formulations(2, False, True, False, None)
  assert backend.set_formulations(custom) == "cpu"
  assert backend.formulations() is custom
  backend.set_formulations(None)
  assert backend.formulations() == backend.xla_formulations()
  monkeypatch.setenv(backend.ENV_VAR, "gpu")
  with pytest.raises(ValueError, match="EO_JAX_FORMULATIONS.*'gpu'"):
    backend.formulations()


def test_bad_choices_fail_clearly():
  with pytest.raises(ValueError, match="auto"):
    backend.set_formulations("fast")
  with pytest.raises(TypeError, match="Formulations"):
    backend.set_formulations(4)
  with pytest.raises(ValueError, match=">= 0"):
    backend.Formulations(-1, True, True, False, False)


def test_multi_process_runs_unroll_the_kernel_gradient_taps(monkeypatch):
  assert not backend.formulations().unroll_kernel_grad_taps
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert backend.cpu_formulations().unroll_kernel_grad_taps
  assert backend.xla_formulations().unroll_kernel_grad_taps


def test_init_rng_context_follows_the_choice():
  with jax.threefry_partitionable(True):
    with backend.use_formulations("cpu"), backend.init_rng_context():
      assert not jax.config.jax_threefry_partitionable
    with backend.use_formulations("xla"), backend.init_rng_context():
      assert jax.config.jax_threefry_partitionable  # jax's own setting


def _paths_taken(monkeypatch):
  calls = []
  for fn in ("conv_im2col", "conv_matmul_kernel_grad", "max_pool"):
    monkeypatch.setattr(layers, fn, lambda *a, f=getattr(layers, fn), n=fn,
                        **k: (calls.append(n), f(*a, **k))[1])
  return calls


def test_layers_follow_the_backend_unless_told_otherwise(monkeypatch):
  calls = _paths_taken(monkeypatch)
  conv = layers.Conv(2, (3, 3))
  pool = layers.MaxPool((3, 3), (2, 2), "SAME")
  small, large = jnp.ones((1, 2, 2, 3)), jnp.ones((1, 8, 8, 3))
  variables = conv.init(jax.random.key(0), small)

  def run(conv=conv):
    calls.clear()
    conv.apply(variables, small)
    conv.apply(variables, large)
    pool.apply({}, large)
    return list(calls)

  rewrites = ["conv_im2col", "conv_matmul_kernel_grad", "max_pool"]
  assert run() == rewrites
  with backend.use_formulations("xla"):
    assert run() == []
    # An attribute set on the module beats the backend ...
    assert run(layers.Conv(2, (3, 3), im2col_max_size=4)) == ["conv_im2col"]
    # ... and an override block beats both.
    with layers.override_formulations(im2col_max_size=2,
                                      matmul_kernel_grad=True,
                                      max_pool_views_grad=True):
      assert run() == rewrites
  assert run() == rewrites


def test_cpu_and_xla_formulations_compute_the_same_resnet():
  # Every rewrite is met: im2col on the 4x4, 2x2 and 1x1 maps, the matmul
  # kernel gradient on the 8x8 ones and the stem's 16x16 input, the max
  # pool's gradient; strided and projection convs included.
  model = resnet.resnet(bands=bands_lib.RGB, num_classes=5,
                        stage_sizes=(1, 1, 1, 1), width=8)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  labels = jnp.arange(4) % 5
  with backend.init_rng_context():
    variables = jax.jit(model.init)(jax.random.key(0), x)
  params, stats = variables["params"], variables["batch_stats"]

  def loss(params, x):
    (logits, _), _ = model.apply({"params": params, "batch_stats": stats}, x,
                                 train=True, mutable=["batch_stats"])
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits),
                                 labels[:, None], axis=1)
    return -jnp.mean(picked), logits

  results = {}
  for mode in ("cpu", "xla"):
    with backend.use_formulations(mode):
      # A new function per mode: the choice is read while tracing, and a
      # jit cache keyed on the same function would reuse the first trace.
      step = jax.jit(jax.value_and_grad(lambda p, x: loss(p, x),
                                        argnums=(0, 1), has_aux=True))
      results[mode] = step(params, x)
  (l_cpu, logits_cpu), g_cpu = results["cpu"]
  (l_xla, logits_xla), g_xla = results["xla"]
  np.testing.assert_allclose(logits_cpu, logits_xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(l_cpu, l_xla, rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_cpu),
                          jax.tree.leaves(g_xla)):
    scale = float(np.abs(b).max())
    # float32 sums in another order: ~1e-6 of the largest entry; 1e-4 of
    # it leaves ample margin while any formulation error would be O(1).
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale + 1e-7,
                               err_msg=jax.tree_util.keystr(path))
