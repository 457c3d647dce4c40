"""timm and DINOv2 ViT state dicts give eo_jax's ViT the same outputs.

The twins (tests/interop/torch_twins.py) follow timm's VisionTransformer and
DINOv2's DinoVisionTransformer with their key names and random weights; the
eo_jax ViT built to the same size must give the same logits, class token,
registers and patch tokens (and the same tokens under a DINOv2 mask) to
1e-5 relative in float32.
"""
import numpy as np
import pytest
import torch

from eo_jax.data import bands as bands_lib
from eo_jax.interop import torch_weights
from eo_jax.models import vit as vit_lib
import parity
import torch_twins

TOL = 1e-5
SIZE = dict(image=16, patch=4, dim=32, depth=2, num_heads=4)


def _image(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(2, 16, 16, 3)).astype(np.float32)


def _vit(**kwargs):
  return vit_lib.vit(bands=bands_lib.RGB, patch_size=4, width=32, depth=2,
                     num_heads=4, **kwargs)


@pytest.mark.parametrize("no_embed_class,reg_tokens,layerscale,suffix", [
    (False, 0, False, ".pth"),           # pos_embed (1, 1 + N, D)
    (True, 2, False, ".safetensors"),    # pos_embed (1, N, D), registers
    (False, 2, True, ".pth"),            # pos entries of the registers too
])
def test_timm_logits_match(no_embed_class, reg_tokens, layerscale, suffix,
                           tmp_path):
  twin = torch_twins.randomize(torch_twins.TimmViT(
      **SIZE, hidden=48, num_classes=6, reg_tokens=reg_tokens,
      no_embed_class=no_embed_class, layerscale=layerscale), seed=5)
  path = parity.save(twin, tmp_path / f"timm{suffix}")
  model = _vit(num_classes=6, mlp_dim=48, num_registers=reg_tokens,
               layerscale_init=1e-5 if layerscale else None, head_zeroinit=False)
  image = _image()
  variables = parity.converted_variables(model, image, path, "vit")
  logits, _ = parity.apply(model, variables, image)
  with torch.no_grad():
    want = twin(parity.nchw(image)).numpy()
  diff = parity.relative_difference(logits, want)
  print(f"timm ViT (no_embed_class={no_embed_class}, registers={reg_tokens}, "
        f"layerscale={layerscale}): max relative difference {diff:.2e}")
  assert diff < TOL
  if no_embed_class:
    assert not np.asarray(variables["params"]["cls_pos_embedding"]).any()


def _dinov2_features(twin, image, masks=None):
  with torch.no_grad():
    out = twin.forward_features(parity.nchw(image), masks)
  return {k: v.numpy() for k, v in out.items()}


def test_dinov2_with_registers_layerscale_and_mask_token(tmp_path):
  twin = torch_twins.randomize(torch_twins.DinoV2ViT(
      **SIZE, hidden=64, num_register_tokens=4, layerscale=True), seed=6)
  path = parity.save(twin, tmp_path / "dinov2_reg.pth")
  model = _vit(num_classes=0, mlp_dim=64, num_registers=4, layerscale_init=1e-5,
               use_mask_token=True)
  image = _image(1)
  variables = parity.converted_variables(model, image, path, "vit")
  masks = np.random.default_rng(2).random((2, 16)) < 0.4
  for mask in (None, masks):
    want = _dinov2_features(twin, image,
                            None if mask is None else torch.from_numpy(mask))
    pooled, features = parity.apply(model, variables, image,
                                    mask=None if mask is None else mask)
    diffs = {
        "cls": parity.relative_difference(pooled, want["x_norm_clstoken"]),
        "registers": parity.relative_difference(features["registers"],
                                                want["x_norm_regtokens"]),
        "patches": parity.relative_difference(
            np.asarray(features["patch_tokens"]).reshape(2, 16, 32),
            want["x_norm_patchtokens"])}
    print(f"DINOv2 ViT (registers, LayerScale, mask={mask is not None}): "
          + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) < TOL


def test_dinov2_swiglu_with_chunked_blocks(tmp_path):
  # DINOv2's SwiGLU hidden size for mlp_dim 48: (int(48 * 2 / 3) + 7) // 8 * 8.
  hidden = vit_lib.swiglu_hidden_dim(48)
  assert hidden == 32
  twin = torch_twins.randomize(torch_twins.DinoV2ViT(
      **SIZE, hidden=hidden, swiglu=True, block_chunks=2), seed=7)
  path = parity.save(twin, tmp_path / "dinov2_swiglu.pth")
  assert "blocks.1.1.mlp.w12.weight" in torch.load(path, weights_only=True)
  model = _vit(num_classes=0, mlp_dim=48, ffn="swiglu", layerscale_init=1e-5)
  image = _image(3)
  variables = parity.converted_variables(model, image, path, "vit")
  pooled, features = parity.apply(model, variables, image)
  want = _dinov2_features(twin, image)
  diff = max(parity.relative_difference(pooled, want["x_norm_clstoken"]),
             parity.relative_difference(
                 np.asarray(features["patch_tokens"]).reshape(2, 16, 32),
                 want["x_norm_patchtokens"]))
  print(f"DINOv2 ViT (SwiGLU, chunked blocks): max relative difference {diff:.2e}")
  assert diff < TOL


def test_qkv_split_by_hand():
  """Rows [q; k; v] of the fused projection, heads contiguous in each."""
  d, heads = 8, 2
  qkv = np.arange(3 * d * d, dtype=np.float32).reshape(3 * d, d)
  bias = np.arange(3 * d, dtype=np.float32)
  sd = {"blocks.0.attn.qkv.weight": qkv, "blocks.0.attn.qkv.bias": bias}
  shapes = {f"block_0/attn/{n}/kernel": (d, heads, d // heads)
            for n in ("query", "key", "value")}
  shapes.update({f"block_0/attn/{n}/bias": (heads, d // heads)
                 for n in ("query", "key", "value")})
  from eo_jax.interop import torch_vit  # pylint: disable=g-import-not-at-top
  conversion, _ = torch_vit.convert(sd, shapes, {})
  key = conversion.params["block_0/attn/key/kernel"]
  # Output feature j of head h of k is row d + h * hd + j; input i is column i.
  for i, h, j in [(0, 0, 0), (5, 1, 2), (7, 1, 3)]:
    assert key[i, h, j] == qkv[d + h * 4 + j, i]
  np.testing.assert_array_equal(conversion.params["block_0/attn/value/bias"],
                                bias[2 * d:].reshape(2, 4))


def test_posemb_of_another_grid_is_kept_for_init_from_to_resize(tmp_path):
  twin = torch_twins.randomize(torch_twins.DinoV2ViT(**SIZE, hidden=64), seed=8)
  path = parity.save(twin, tmp_path / "d.pth")
  model = _vit(num_classes=0, mlp_dim=64, layerscale_init=1e-5)
  big = np.zeros((1, 24, 24, 3), np.float32)  # a 6x6 grid
  param_shapes, _ = parity.shapes(model, big)
  conversion = torch_weights.convert_state_dict(
      torch_weights.load_state_dict(path), "vit", param_shapes, {})
  assert conversion.params["pos_embedding"].shape == (1, 4, 4, 32)
  assert any("bicubically" in n for n in conversion.notes)
  pos = twin.pos_embed.detach().numpy()
  np.testing.assert_array_equal(conversion.params["cls_pos_embedding"], pos[:, :1])
  resized = model.adapt_param("pos_embedding", conversion.params["pos_embedding"],
                              param_shapes["pos_embedding"])
  assert resized.shape == (1, 6, 6, 32)
