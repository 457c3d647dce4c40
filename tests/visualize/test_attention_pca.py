"""Class-token attention maps and patch-feature PCA: values against hand-built
attention and an eigendecomposition, and the figures they draw (saved as
PNGs)."""
import numpy as np
import pytest
from PIL import Image

from eo_jax.visualize import attention, pca
from eo_jax.visualize.figures import save_figure


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _attention(heads, grid, prefix, seed=0):
  tokens = prefix + grid[0] * grid[1]
  logits = np.random.default_rng(seed).normal(size=(heads, tokens, tokens)) * 2
  return _softmax(logits).astype(np.float32)


def _png(fig, path):
  """Saves `fig` as a PNG at `path` and returns its pixels."""
  with Image.open(save_figure(fig, path)) as im:
    assert im.format == "PNG"
    im.load()
    return np.asarray(im)


# --- Attention --------------------------------------------------------------


@pytest.mark.parametrize("prefix", [1, 5])  # class token, + 4 registers
def test_cls_attention_maps_are_the_cls_row_over_patches(prefix):
  grid = (3, 4)
  weights = _attention(heads=2, grid=grid, prefix=prefix)
  maps = attention.cls_attention_maps(weights, grid, prefix)
  assert maps.shape == (2, 3, 4)
  for h in range(2):
    for i in range(3):
      for j in range(4):
        # Patch (i, j) is token prefix + i * gw + j (row-major).
        assert maps[h, i, j] == weights[h, 0, prefix + i * 4 + j]
    # The rest of the row went to the class token and the registers.
    np.testing.assert_allclose(maps[h].sum() + weights[h, 0, :prefix].sum(),
                               1.0, rtol=1e-5)
    assert maps[h].sum() <= 1.0 + 1e-6
  if prefix > 1:
    assert np.all(maps.sum((1, 2)) < 1.0)


def test_cls_attention_on_a_known_pattern_and_upsampling():
  # One head attends only to patch (1, 2) of a 2x3 grid, the other evenly.
  grid, prefix = (2, 3), 2
  weights = np.zeros((2, 8, 8), np.float32)
  weights[0, 0, prefix + 1 * 3 + 2] = 1.0
  weights[1, 0, prefix:] = 1 / 6
  maps = attention.cls_attention_maps(weights, grid, prefix)
  expected = np.zeros((2, 3))
  expected[1, 2] = 1.0
  np.testing.assert_array_equal(maps[0], expected)
  np.testing.assert_allclose(maps[1], np.full((2, 3), 1 / 6))
  big = attention.upsample_patches(maps, 4)
  assert big.shape == (2, 8, 12)
  assert big[0, 4:8, 8:12].min() == 1.0 and big[0].sum() == 16.0


def test_cls_attention_rejects_mismatched_tokens():
  weights = _attention(1, (2, 2), 1)
  with pytest.raises(ValueError, match="tokens"):
    attention.cls_attention_maps(weights, (3, 3), 1)
  with pytest.raises(ValueError, match="one example"):
    attention.cls_attention_maps(weights[None], (2, 2), 1)


def test_plot_attention_writes_a_png(tmp_path):
  grid, patch = (4, 4), 4
  image = np.random.default_rng(0).normal(size=(16, 16, 13))
  fig = attention.plot_attention(image, (3, 2, 1), _attention(3, grid, 2),
                                 grid, 2, patch)
  # The image, three heads (with their share on patches) and their mean.
  titles = [ax.get_title() for ax in fig.axes]
  assert titles[0] == "image (bands 3, 2, 1)"
  assert [t.split(" (")[0] for t in titles[1:]] == [
      "head 0", "head 1", "head 2", "mean of heads"]
  pixels = _png(fig, tmp_path / "sub" / "attn.png")
  assert pixels.shape[1] > pixels.shape[0]  # panels side by side
  assert pixels.std() > 0
  with pytest.raises(ValueError, match="grid"):
    attention.plot_attention(image[:12], (0, 1, 2), _attention(3, grid, 2),
                             grid, 2, patch)


# --- PCA --------------------------------------------------------------------


def _tokens(n=3, grid=(5, 6), dim=16, seed=0):
  rng = np.random.default_rng(seed)
  # Three directions with clearly different variances, plus a little noise.
  basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  scores = rng.normal(size=(n * grid[0] * grid[1], 3)) * [8.0, 4.0, 2.0]
  flat = scores @ basis[:, :3].T + 0.1 * rng.normal(size=(len(scores), dim))
  return flat.reshape(n, *grid, dim) + 4.0, basis[:, :3]


def _eigh_components(flat, k=3):
  centred = flat - flat.mean(0)
  values, vectors = np.linalg.eigh(centred.T @ centred)
  return vectors[:, ::-1][:, :k].T  # decreasing variance


def test_fit_pca_matches_the_covariance_eigenvectors_up_to_sign():
  tokens, planted = _tokens()
  flat = tokens.reshape(-1, tokens.shape[-1])
  mean, components = pca.fit_pca(flat, 3)
  np.testing.assert_allclose(mean, flat.mean(0), atol=1e-12)
  reference = _eigh_components(flat)
  svd_reference = np.linalg.svd(flat - flat.mean(0))[2][:3]
  for k in range(3):
    for ref in (reference[k], svd_reference[k]):
      assert abs(abs(components[k] @ ref) - 1.0) < 1e-8
    # ... and close to the planted direction.
    assert abs(components[k] @ planted[:, k]) > 0.99
  np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-10)


def test_fit_pca_sign_puts_the_long_tail_positive():
  rng = np.random.default_rng(1)
  # A small far-away group along +x (or -x): it must end up positive.
  for direction in (1.0, -1.0):
    x = rng.normal(size=(200, 4))
    x[:10, 0] += 8 * direction
    _, components = pca.fit_pca(x, 1)
    scores = (x - x.mean(0)) @ components[0]
    assert scores[:10].mean() > 3


def test_pca_rgb_is_the_min_max_scaled_joint_projection():
  tokens, _ = _tokens()
  rgb = pca.pca_rgb(tokens)
  assert rgb.shape == (3, 5, 6, 3) and rgb.dtype == np.float32
  flat = tokens.reshape(-1, tokens.shape[-1])
  scores = (flat - flat.mean(0)) @ _eigh_components(flat).T
  got = rgb.reshape(-1, 3)
  for k in range(3):
    want = (scores[:, k] - scores[:, k].min()) / np.ptp(scores[:, k])
    # Up to the sign of the component: s or 1 - s.
    assert min(np.abs(got[:, k] - want).max(),
               np.abs(got[:, k] - (1 - want)).max()) < 1e-5
    assert got[:, k].min() == 0.0 and got[:, k].max() == 1.0
  # Fitted jointly: one image alone gets other colours.
  alone = pca.pca_rgb(tokens[0])
  assert alone.shape == (5, 6, 3)
  assert not np.allclose(alone, rgb[0], atol=1e-3)


def test_pca_rgb_background_threshold_blacks_out_low_first_component():
  tokens, _ = _tokens(n=2)
  plain = pca.pca_rgb(tokens)
  masked = pca.pca_rgb(tokens, background_threshold=0.5)
  background = plain[..., 0] < 0.5
  assert background.any() and (~background).any()
  assert np.all(masked[background] == 0)
  foreground = masked[~background]
  assert foreground.min() >= 0 and foreground.max() <= 1
  # Refitted on the foreground only: its own components span [0, 1].
  np.testing.assert_allclose(foreground.min(0), 0, atol=1e-6)
  np.testing.assert_allclose(foreground.max(0), 1, atol=1e-6)


def test_plot_patch_pca_writes_a_png(tmp_path):
  tokens, _ = _tokens(n=2, grid=(4, 4))
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 4))
  pixels = _png(pca.plot_patch_pca(images, (2, 1, 0), pca.pca_rgb(tokens)),
                tmp_path / "pca.png")
  assert pixels.shape[0] > pixels.shape[1]  # one row per image
  with pytest.raises(ValueError, match="PCA maps"):
    pca.plot_patch_pca(images, (2, 1, 0), pca.pca_rgb(tokens)[:1])


def test_with_a_tiny_vit_s_features(tmp_path):
  """The feature names and token layout of models.vit fit these functions."""
  import jax
  from eo_jax.data.bands import Band
  from eo_jax.models.vit import ViT
  bands = tuple(Band(f"b{k}", 400.0 + 50 * k) for k in range(5))
  model = ViT(bands=bands, patch_size=4, width=16, depth=2, num_heads=2,
              mlp_dim=32, num_registers=2)
  images = np.random.default_rng(0).normal(size=(2, 16, 12, 5)).astype(
      np.float32)
  # Jitted: one compilation beats dispatching every small op eagerly.
  variables = jax.jit(model.init)(jax.random.key(0), images)
  _, features = jax.jit(lambda v, x: model.apply(v, x, return_attention=True))(
      variables, images)
  weights = np.asarray(features["attention_1"][0])
  maps = attention.cls_attention_maps(weights, (4, 3), 1 + 2)
  np.testing.assert_allclose(maps.reshape(2, -1), weights[:, 0, 3:])
  assert np.all(maps.sum((1, 2)) < 1.0)  # some attention goes to prefixes
  _png(attention.plot_attention(images[0], (0, 1, 2), weights, (4, 3), 3, 4),
       tmp_path / "a.png")
  colours = pca.pca_rgb(np.asarray(features["patch_tokens"]))
  assert colours.shape == (2, 4, 3, 3)
  _png(pca.plot_patch_pca(images, (0, 1, 2), colours), tmp_path / "p.png")
