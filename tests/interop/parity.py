"""Shared steps of the interop tests: save a twin's state dict in a published
format, read it back through eo_jax, and measure differences."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import traverse_util

from eo_jax.interop import torch_weights
from eo_jax.models import layers


def save(model: torch.nn.Module, path) -> str:
  """The twin's state dict written as .pth (torch.save) or .safetensors."""
  path = str(path)
  state = model.state_dict()
  if path.endswith(".safetensors"):
    from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: v.contiguous() for k, v in state.items()}, path)
  else:
    torch.save(state, path)
  return path


def shapes(model, image: np.ndarray, **kwargs) -> tuple[dict, dict]:
  """({param path: shape}, {batch_stats path: shape}) of an eo_jax model."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.asarray(image), **kwargs))
  flat = lambda t: {"/".join(k): tuple(v.shape) for k, v in
                    traverse_util.flatten_dict(dict(t)).items()}
  return flat(abstract["params"]), flat(abstract.get("batch_stats", {}))


def random_variables(model, image: np.ndarray, seed: int = 0, **kwargs) -> dict:
  """Variables of `model` with random values, drawn in numpy.

  Kernels ~ N(0, 1 / fan_in), other parameters ~ N(0, 0.5), BatchNorm
  variances in [0.5, 1.5). Cheaper than `model.init`, whose random
  initialisers compile for every parameter shape when run op by op.
  """
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.asarray(image), **kwargs))

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2 else 0
    scale = 1 / np.sqrt(fan_in) if fan_in else 0.5
    return jnp.asarray(rng.normal(0, scale, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, dict(abstract))


def converted_variables(model, image: np.ndarray, path: str, kind: str,
                        **kwargs) -> dict:
  """The eo_jax variables of `model` read from the state dict at `path`."""
  param_shapes, stat_shapes = shapes(model, image, **kwargs)
  conversion = torch_weights.convert_state_dict(
      torch_weights.load_state_dict(path), kind, param_shapes, stat_shapes)
  for k, shape in param_shapes.items():
    assert conversion.params[k].shape == shape, (k, conversion.params[k].shape, shape)
  unflat = lambda d: traverse_util.unflatten_dict(
      {tuple(k.split("/")): jnp.asarray(v) for k, v in d.items()})
  variables = {"params": unflat(conversion.params)}
  if conversion.batch_stats:
    variables["batch_stats"] = unflat(conversion.batch_stats)
  return variables


def apply(model, variables: dict, image: np.ndarray, **kwargs):
  """`model.apply` run eagerly with XLA's own convolutions.

  The CPU formulations of eo_jax/models/layers.py compute the same values
  (tests/models/test_layers.py) but cost seconds per op-by-op call; these
  tests check the weight mapping, not them.
  """
  with layers.override_formulations(im2col_max_size=0, matmul_kernel_grad=False,
                                    max_pool_views_grad=False):
    return model.apply(variables, jnp.asarray(image), **kwargs)


def nchw(image: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))


def relative_difference(got, want) -> float:
  """max |got - want| / max |want|."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return float(np.abs(got - want).max() / np.abs(want).max())
