"""Tests for eo_jax.summary against hand-computed shapes, params, FLOPs, RF."""
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from eo_jax import summary
from eo_jax.data import bands as bands_lib
from eo_jax.models import layers, resnet


class _Stack(nn.Module):
  """conv3x3/1 -> conv3x3/2 -> maxpool2/2 -> conv3x3/1 -> flatten -> dense."""

  @nn.compact
  def __call__(self, x, train=False):
    x = layers.Conv(4, (3, 3), padding="SAME", name="c1")(x)
    x = nn.relu(layers.Conv(8, (3, 3), strides=2, padding="SAME",
                            name="c2")(x))
    x = layers.MaxPool((2, 2), (2, 2), name="pool")(x)
    x = layers.Conv(6, (3, 3), padding="SAME", use_bias=False, name="c3")(x)
    return nn.Dense(5, name="fc")(x.reshape(x.shape[0], -1))


def _by_path(rows):
  return {r.path: r for r in rows}


def test_hand_computed_conv_stack():
  rows = summary.summarize(_Stack(), (1, 16, 16, 2))
  # One row per module call: c1 (16x16) goes through nn.Conv via super(),
  # which must not produce a second row.
  assert [r.path for r in rows] == ["", "c1", "c2", "pool", "c3", "fc"]
  got = _by_path(rows)
  expected = {
      # path: (output shape, params, FLOPs = 2 * Ho*Wo*kh*kw*cin*cout, RF, jump)
      "c1": ((1, 16, 16, 4), 3 * 3 * 2 * 4 + 4, 2 * 256 * 9 * 2 * 4, 3, 1),
      "c2": ((1, 8, 8, 8), 3 * 3 * 4 * 8 + 8, 2 * 64 * 9 * 4 * 8, 5, 2),
      "pool": ((1, 4, 4, 8), 0, 0, 7, 4),
      "c3": ((1, 4, 4, 6), 3 * 3 * 8 * 6, 2 * 16 * 9 * 8 * 6, 15, 4),
  }
  for path, (shape, params, flops, rf, jump) in expected.items():
    r = got[path]
    assert (r.output_shape, r.params, r.flops, r.receptive_field, r.jump) == (
        shape, params, flops, rf, jump), path
  fc = got["fc"]
  assert (fc.output_shape, fc.params, fc.flops) == ((1, 5), 96 * 5 + 5,
                                                    2 * 96 * 5)
  assert fc.receptive_field is None
  assert rows[0].depth == 0 and all(r.depth == 1 for r in rows[1:])

  t = summary.totals(rows)
  assert t["params"] == 76 + 296 + 432 + 485
  assert t["flops"] == 36864 + 36864 + 13824 + 960
  table = summary.format_table(rows, xla_total=80000.0)
  assert "Total parameters: 1,289" in table and "88,512" in table


def test_xla_cross_check_is_close_to_analytic():
  rows = summary.summarize(_Stack(), (2, 16, 16, 2))
  analytic = summary.totals(rows)["flops"]
  assert analytic == 2 * 88512
  xla = summary.xla_flops(_Stack(), (2, 16, 16, 2))
  if xla is None:
    pytest.skip("backend has no cost analysis")
  # XLA skips taps on padding (fewer) and counts bias adds, ReLU and pool
  # comparisons (more); for this stack both are within a quarter.
  assert 0.75 < xla / analytic < 1.25


def test_resnet18_receptive_field_by_hand():
  model = resnet.resnet18(bands=bands_lib.RGB, num_classes=10)
  rows = summary.summarize(model, (1, 64, 64, 3))
  got = _by_path(rows)
  # Stem: 7x7/2 conv -> r = 7, j = 2; 3x3/2 pool -> r = 7 + 2*2 = 11, j = 4.
  assert (got["stem_conv"].receptive_field, got["stem_conv"].jump) == (7, 2)
  assert (got["stem_pool"].receptive_field, got["stem_pool"].jump) == (11, 4)
  # Stage 1: four 3x3/1 convs at j = 4 -> 11 + 4*2*4 = 43.
  assert got["stage_1_block_1"].receptive_field == 43
  # Stage 2 block 0: conv1 3x3/2 -> 43 + 2*4 = 51, j = 8; conv2 -> 67.
  assert (got["stage_2_block_0/conv1"].receptive_field,
          got["stage_2_block_0/conv1"].jump) == (51, 8)
  assert got["stage_2_block_0"].receptive_field == 67
  # The projection shortcut reads the block input (43), not the residual
  # branch: a 1x1/2 conv keeps 43 and doubles the jump.
  assert (got["stage_2_block_0/proj_conv"].receptive_field,
          got["stage_2_block_0/proj_conv"].jump) == (43, 8)
  # Published ResNet-18 receptive field: 435 px at jump 32.
  assert (got["stage_4_block_1"].receptive_field,
          got["stage_4_block_1"].jump) == (435, 32)
  assert got[""].receptive_field is None  # the model outputs logits
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 64, 64, 3)))
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert summary.totals(rows)["params"] == n_params


class _Tokens(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (4, 4), strides=4, padding="VALID", name="patch")(x)
    x = x.reshape(x.shape[0], -1, 8)
    x = nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(x)
    return nn.Dense(3, name="out")(x)


def test_token_layers_report_tokens_and_attention_flops():
  rows = _by_path(summary.summarize(_Tokens(), (1, 16, 16, 3)))
  assert (rows["patch"].receptive_field, rows["patch"].jump) == (4, 4)
  assert rows["out"].tokens == 16 and rows["out"].receptive_field is None
  # q, k, v, out projections (8 -> 2 heads x 4) as DenseGeneral rows, and
  # the two 16x16 attention products over 8 features on the attention row.
  assert rows["attn/query"].flops == 2 * 16 * 8 * 8
  assert rows["attn"].flops == 2 * 2 * 16 * 16 * 8
  assert rows["attn"].params == 0
  assert rows["attn/out"].params == 8 * 8 + 8


def test_shared_module_counts_params_once():

  class Twice(nn.Module):

    @nn.compact
    def __call__(self, x, train=False):
      dense = nn.Dense(4, name="d")
      return dense(dense(x))

  rows = summary.summarize(Twice(), (2, 4))
  assert [r.path for r in rows] == ["", "d", "d"]
  assert summary.totals(rows) == {"params": 20, "flops": 2 * 2 * 2 * 4 * 4}


def test_command_line(tmp_path):
  config = tmp_path / "lenet_config.py"
  config.write_text(textwrap.dedent("""
      from eo_jax.config import base_config

      def get_config(arg=None):
        c = base_config()
        c.model.name = "lenet"
        c.model.hidden = (30, 10)
        return c
  """))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep +
             os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "eo_jax.summary", f"--config={config}",
       "--bands=3", "--image_size=32", "--xla_flops=false",
       "--config.model.hidden=(20, 10)"],
      capture_output=True, text=True, env=env, cwd=root, timeout=120)
  assert out.returncode == 0, out.stderr
  # conv1 5x5x3x6+6, conv2 5x5x6x16+16, fc 400x20+20, 20x10+10, head 10x10+10
  # (the --config override of `hidden` must reach the model).
  assert "Total parameters: 11,212" in out.stdout
  assert "pool2" in out.stdout


def test_vit_block_totals_and_attention_flops_by_hand():
  # 16x16 input, patch 8 -> 4 patches + cls = 5 tokens of width 16, 2 heads,
  # MLP 32, one block; 2 bands, 3 classes.
  from eo_jax.models import vit
  model = vit.ViT(bands=bands_lib.SENTINEL2[:2], num_classes=3, patch_size=8,
                  width=16, depth=1, num_heads=2, mlp_dim=32)
  rows = summary.summarize(model, (1, 16, 16, 2))
  got = _by_path(rows)
  t, d = 5, 16
  assert got["embedding"].flops == 2 * 4 * 8 * 8 * 2 * d
  assert (got["embedding"].receptive_field, got["embedding"].jump) == (8, 8)
  assert got["block_0/attn"].tokens == t
  assert got["block_0/attn"].flops == 2 * 2 * t * t * d  # q.k and w.v
  assert got["block_0/attn/query"].flops == 2 * t * d * d
  block_params = (2 * 2 * d             # two LayerNorms
                  + 4 * (d * d + d)     # q, k, v, out
                  + d * 32 + 32 + 32 * d + d)  # fc1, fc2
  block_flops = 4 * 2 * t * d * d + 2 * 2 * t * t * d + 2 * 2 * t * d * 32
  i = [r.path for r in rows].index("block_0")
  assert summary.subtree_totals(rows)[i] == (block_params, block_flops)
  assert summary.subtree_totals(rows)[0] == (
      summary.totals(rows)["params"], summary.totals(rows)["flops"])
  line = next(l for l in summary.format_table(rows).splitlines()
              if l.strip().startswith("block_0"))
  assert f"({block_params:,})" in line
