"""Evidence heatmaps: hand-computed maps, brute-force references, and a BagNet
whose local logits must equal its logits on each patch seen alone. (The RGB
composite under the heatmaps is tested in test_figures.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from eo_jax.data import bands
from eo_jax.models import bagnet as bagnet_lib
from eo_jax.visualize import heatmaps
from eo_jax.visualize.figures import save_figure


def _brute_force_evidence(local, class_index, hw, jump, offset, q, reduce):
  """Loops over locations and pixels: the definition, spelled out."""
  total = np.zeros(hw)
  count = np.zeros(hw)
  for i in range(local.shape[0]):
    for j in range(local.shape[1]):
      top, left = offset + i * jump, offset + j * jump
      total[top:top + q, left:left + q] += local[i, j, class_index]
      count[top:top + q, left:left + q] += 1
  if reduce == "mean":
    total = np.divide(total, count, out=np.zeros(hw), where=count > 0)
  return np.where(count > 0, total, np.nan)


def test_evidence_map_hand_computed():
  # Two locations per axis, q=3, jump=2: they overlap on row/column 2.
  local = np.array([[1.0, 2.0], [3.0, 4.0]])[..., None]
  mean = heatmaps.evidence_map(local, 0, (6, 5), jump=2, offset=0, q=3)
  assert mean[0, 0] == 1.0
  assert mean[0, 2] == 1.5            # locations (0, 0) and (0, 1)
  assert mean[2, 2] == 2.5            # all four
  assert mean[4, 4] == 4.0
  assert mean[2, 0] == 2.0            # (0, 0) and (1, 0)
  assert np.isnan(mean[5]).all()      # row 5 is in no patch
  total = heatmaps.evidence_map(local, 0, (6, 5), 2, 0, 3, reduce="sum")
  assert total[2, 2] == 10.0 and total[0, 2] == 3.0
  shifted = heatmaps.evidence_map(local, 0, (6, 6), 2, 1, 3, fill_value=0.0)
  assert shifted[0].sum() == 0 and shifted[:, 0].sum() == 0
  assert shifted[1, 1] == 1.0 and shifted[5, 5] == 4.0


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_evidence_map_matches_brute_force_with_batch(reduce):
  rng = np.random.default_rng(0)
  local = rng.normal(size=(2, 4, 5, 3))
  got = heatmaps.evidence_map(local, 2, (20, 23), jump=3, offset=1, q=7,
                              reduce=reduce)
  assert got.shape == (2, 20, 23) and got.dtype == np.float32
  for b in range(2):
    want = _brute_force_evidence(local[b], 2, (20, 23), 3, 1, 7, reduce)
    np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


def test_evidence_map_rejects_inconsistent_geometry():
  local = np.zeros((4, 4, 2))
  with pytest.raises(ValueError, match="outside an image"):
    heatmaps.evidence_map(local, 0, (32, 48), jump=8, offset=0, q=17)
  with pytest.raises(IndexError, match="class_index 2"):
    heatmaps.evidence_map(local, 2, (64, 64), 8, 0, 17)
  with pytest.raises(ValueError, match=r"\(h, w, K\)"):
    heatmaps.evidence_map(np.zeros((4, 4)), 0, (64, 64), 8, 0, 17)


def _patch_means(x):
  """A stand-in network: per-channel mean and max of each patch."""
  x = np.asarray(x)
  return np.concatenate([x.mean((1, 2)), x.max((1, 2))], -1)


@pytest.mark.parametrize("stride,pad", [(1, False), (3, False), (2, True)])
def test_sliding_patch_logits_matches_loop(stride, pad):
  rng = np.random.default_rng(1)
  image = rng.normal(size=(11, 13, 2)).astype(np.float32)
  q = 5
  calls = []

  def apply_fn(x):
    calls.append(x.shape)
    return _patch_means(x)

  got = heatmaps.sliding_patch_logits(apply_fn, image, q, stride, pad=pad,
                                      batch_size=7)
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0))) if pad else image
  rows = range(0, padded.shape[0] - q + 1, stride)
  cols = range(0, padded.shape[1] - q + 1, stride)
  want = np.array([[_patch_means(padded[None, r:r + q, c:c + q])[0]
                    for c in cols] for r in rows])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  if pad and stride == 1:
    assert got.shape[:2] == image.shape[:2]
  # Every call sees the same batch shape, so a jitted apply compiles once.
  assert set(calls) == {(7, q, q, 2)}


def test_sliding_patch_logits_accepts_model_output_pairs_and_checks_shape():
  image = np.ones((6, 6, 1), np.float32)
  got = heatmaps.sliding_patch_logits(lambda x: (x.sum((1, 2)), {}), image, 3)
  np.testing.assert_allclose(got, np.full((4, 4, 1), 9.0))
  with pytest.raises(ValueError, match=r"\(N, K\) logits"):
    heatmaps.sliding_patch_logits(lambda x: x.sum((1, 2, 3)), image, 3)
  with pytest.raises(ValueError, match="smaller than"):
    heatmaps.sliding_patch_logits(_patch_means, image, 7)


def _random_variables(model, image_shape, seed=0):
  """Random weights and BatchNorm statistics (eval mode is not identity)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros(image_shape, jnp.float32))

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      scale = np.sqrt(2 / np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, scale, leaf.shape), leaf.dtype)
    if name in ("scale", "var"):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.2, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name", ["bagnet9", "bagnet17", "bagnet33"])
def test_bagnet_local_logits_equal_logits_of_each_patch_alone(name):
  # One block per stage keeps the receptive field and compiles faster; the
  # full-depth networks are checked by gradients in tests/models.
  model = bagnet_lib.bagnet(bands=bands.RGB, num_classes=3, width=4,
                            kernel3=bagnet_lib.VARIANTS[name],
                            blocks=(1, 1, 1, 1))
  q, jump, offset = model.rf
  image = jax.random.normal(jax.random.key(0), (1, 49, 57, 3))
  variables = _random_variables(model, image.shape)
  _, features = jax.jit(model.apply)(variables, image)
  local = np.asarray(features["local_logits"][0])
  assert local.shape[0] >= 2 and local.shape[1] >= 2

  apply = jax.jit(lambda x: model.apply(variables, x)[0])
  patches = heatmaps.sliding_patch_logits(apply, image[0], q, stride=jump,
                                          batch_size=16)
  assert offset == 0  # the patch grid starts where the location grid does
  # Deep random nets have large logits; float32 round-off scales with them.
  tol = 1e-5 * np.abs(local).max()
  np.testing.assert_allclose(patches, local, rtol=1e-5, atol=tol)

  # A patch one pixel off the grid is a different input: the check has teeth.
  shifted = heatmaps.sliding_patch_logits(apply, image[0, 1:], q, stride=jump,
                                          batch_size=16)
  n = shifted.shape[0]
  assert not np.allclose(shifted, local[:n], rtol=1e-2, atol=100 * tol)


def test_plot_evidence_writes_a_png(tmp_path):
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 3000, (40, 40, 13))
  local = rng.normal(size=(3, 3, 4))
  heat = heatmaps.evidence_map(local, 1, (40, 40), jump=8, offset=0, q=17)
  assert np.isnan(heat).any()  # a bottom/right margin no patch covers
  fig = heatmaps.plot_evidence(image, ("B04", "B03", "B02"), heat,
                               class_name="Forest", bands=bands.SENTINEL2)
  assert [ax.get_title() for ax in fig.axes[:3]] == [
      "image (B04, B03, B02)", "evidence for Forest", "overlay: Forest"]
  path = save_figure(fig, tmp_path / "out" / "evidence.png")
  with Image.open(path) as png:
    assert png.format == "PNG"
    assert png.size[0] > 600 and png.size[1] > 200
  with pytest.raises(ValueError, match="heatmap shape"):
    heatmaps.plot_evidence(image, (3, 2, 1), heat[:30])
  with pytest.raises(ValueError, match="one image of the batch"):
    heatmaps.plot_evidence(image[None], (3, 2, 1), heat)
