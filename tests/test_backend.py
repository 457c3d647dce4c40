"""eo_jax.backend: one place decides the CPU rewrites, and both choices
compute the same model."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax import backend
from eo_jax.data import bands as bands_lib
from eo_jax.models import layers, resnet

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  # Importing eo_jax handed the convolutions back to XLA's own code, so
  # kernel gradients stay XLA's too.
  assert not backend.ynn_convolutions()
  assert (f.im2col_max_size, f.matmul_kernel_grad, f.max_pool_views_grad,
          f.partitionable_init_rng) == (4, False, True, False)
  assert layers.IM2COL_MAX_SIZE == f.im2col_max_size


def test_cpu_formulation_keeps_matmul_kernel_gradients_for_ynnpack_convs(
    monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type="
                     "+individual_convolution")
  f = backend.cpu_formulations()
  assert f.matmul_kernel_grad and f.im2col_kernel_grad_max_channels == 128


@pytest.mark.parametrize("flags, ynn", [
    ("", True),  # jax's default hands convolutions to YNNPACK
    ("--xla_force_host_platform_device_count=4", True),
    (backend.CPU_XLA_FLAGS, False),
    ("--xla_cpu_experimental_ynn_fusion_type=", False),  # nothing to YNNPACK
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot", False),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_dot,"
     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION", True),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_dot", True),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,"
     "+individual_convolution", True),
    # The last occurrence wins.
    (backend.CPU_XLA_FLAGS + " --xla_cpu_experimental_ynn_fusion_type="
     "+individual_convolution", True),
])
def test_ynn_convolutions_reads_the_flag_as_xla_does(flags, ynn):
  assert backend.ynn_convolutions({"XLA_FLAGS": flags}) is ynn


def test_configure_xla_cpu_adds_the_flag_once_and_keeps_a_users_choice(
    monkeypatch):
  monkeypatch.setattr(backend, "_backends_started", lambda: False)
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert backend.configure_xla_cpu(env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                              + backend.CPU_XLA_FLAGS)
  assert not backend.configure_xla_cpu(env)  # already there: unchanged
  assert env["XLA_FLAGS"].count("ynn_fusion_type") == 1
  empty = {}
  assert backend.configure_xla_cpu(empty)
  assert empty == {"XLA_FLAGS": backend.CPU_XLA_FLAGS}
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
  assert not backend.configure_xla_cpu(mine)
  assert mine == {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
  plain_xla = {backend.ENV_VAR: "xla"}
  assert not backend.configure_xla_cpu(plain_xla)
  assert "XLA_FLAGS" not in plain_xla
  # Too late once JAX has read its flags: nothing changes.
  monkeypatch.setattr(backend, "_backends_started", lambda: True)
  late = {}
  assert not backend.configure_xla_cpu(late) and late == {}


_PROBE = """
import os, sys
import eo_jax  # noqa: F401  (sets the flag before JAX starts)
import jax, jax.numpy as jnp
x, w = jnp.ones((8, 32, 32, 13)), jnp.ones((7, 7, 13, 64))
conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
hlo = jax.jit(conv).lower(x, w).compile().as_text()
print("ynn" if "__ynn_fusion" in hlo else "xla")
"""


@pytest.mark.parametrize("flags, runs_on", [
    ("", "xla"),
    ("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution", "ynn")])
def test_importing_eo_jax_hands_cpu_convolutions_to_xla(flags, runs_on):
  """In a fresh process, as a user's script starts; a user's own setting of
  the flag is obeyed. (That jax 0.10 sends this stem convolution to
  YNNPACK by default is what the second case shows.)"""
  env = {k: v for k, v in os.environ.items() if k != backend.ENV_VAR}
  env["XLA_FLAGS"] = flags
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                       capture_output=True, text=True, cwd=_ROOT)
  assert out.stdout.split()[-1] == runs_on


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

  # CPU default (XLA's own convolutions): XLA keeps the kernel gradients.
  cpu = ["conv_im2col", "max_pool"]
  rewrites = ["conv_im2col", "conv_matmul_kernel_grad", "max_pool"]
  assert run() == cpu
  with backend.use_formulations("xla"):
    assert run() == []
    # An attribute set on the module beats the backend ...
    assert run(layers.Conv(2, (3, 3), im2col_max_size=4)) == ["conv_im2col"]
    # ... and an override block beats both.
    with layers.override_formulations(im2col_max_size=2,
                                      matmul_kernel_grad=True,
                                      max_pool_views_grad=True):
      assert run() == rewrites
  assert run() == cpu
  with layers.override_formulations(matmul_kernel_grad=True):
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
