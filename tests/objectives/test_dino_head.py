"""The DINO head against a numpy forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from eo_jax.models.dino_head import DINOHead


def _gelu(x):
  return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _numpy_head(params, x, num_layers):
  for i in range(num_layers):
    layer = params[f"mlp_{i}"]
    x = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"])
    if i < num_layers - 1:
      x = _gelu(x)
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  v = np.asarray(params["last_layer"], np.float64)
  return x @ (v / np.linalg.norm(v, axis=0, keepdims=True))


def test_head_is_mlp_then_cosine_to_unit_prototypes():
  head = DINOHead(num_prototypes=7, hidden_dim=16, bottleneck_dim=5)
  x = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
  params = head.init(jax.random.key(0), x)["params"]
  assert set(params) == {"mlp_0", "mlp_1", "mlp_2", "last_layer"}
  assert params["last_layer"].shape == (5, 7)
  out = head.apply({"params": params}, x)
  assert out.dtype == jnp.float32 and out.shape == (4, 7)
  np.testing.assert_allclose(out, _numpy_head(params, x, 3), rtol=1e-4, atol=1e-6)
  assert np.all(np.abs(out) <= 1 + 1e-6)  # cosines
  # DINOv2's init: truncated normal std 0.02, zero biases.
  assert abs(float(np.std(params["mlp_1"]["kernel"])) - 0.02) < 0.005
  np.testing.assert_array_equal(params["mlp_0"]["bias"], 0.0)


def test_last_layer_gain_is_fixed_to_one():
  head = DINOHead(num_prototypes=6, hidden_dim=8, bottleneck_dim=4, num_layers=2)
  x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
  params = head.init(jax.random.key(1), x)["params"]
  out = head.apply({"params": params}, x)
  # Scaling a prototype's vector changes nothing: only directions are learned.
  scaled = dict(params, last_layer=params["last_layer"] * jnp.arange(1.0, 7.0))
  np.testing.assert_allclose(head.apply({"params": scaled}, x), out, rtol=1e-5)
  np.testing.assert_allclose(out, _numpy_head(params, x, 2), rtol=1e-4, atol=1e-6)


def test_single_layer_head():
  head = DINOHead(num_prototypes=3, hidden_dim=99, bottleneck_dim=4, num_layers=1)
  x = np.ones((2, 5), np.float32)
  params = head.init(jax.random.key(2), x)["params"]
  assert set(params) == {"mlp_0", "last_layer"}
  np.testing.assert_allclose(head.apply({"params": params}, x),
                             _numpy_head(params, x, 1), rtol=1e-4, atol=1e-6)
