"""Band adaptation of input kernels (eo_jax/interop/band_adaptation.py).

Hand-computed kernels for each rule; the scale invariant (an image with the
same normalised value in every band gives the same first-layer output, and
so the same model output, before and after adaptation) through a real
ResNet and ViT; the 'copy' rule (new bands zero: outputs of the checkpoint's
bands unchanged); band specs; errors.
"""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from eo_jax.data import bands as bands_lib
from eo_jax.data.bands import Band
from eo_jax.errors import ConfigValueError, InputShapeError
from eo_jax.interop import band_adaptation as ba
from eo_jax.models import layers, resnet, vit as vit_lib
import parity

RGB = bands_lib.RGB  # R 610, G 550, B 465 nm
S2 = bands_lib.SENTINEL2


def _by_name(bands, *names):
  return tuple(bands_lib.by_name(bands, n) for n in names)


def _kernel(bands: int, out: int = 2, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(3, 3, bands, out)).astype(np.float32)


def test_nearest_by_hand():
  # B03 (559.8) is G (550) within 15 nm: copied. B02 (492.4) -> nearest B
  # (465); B04 (664.6) and B08 (832.8) -> nearest R (610), which then serves
  # two bands: each gets R / 2.
  target = _by_name(S2, "B02", "B03", "B04", "B08")
  kernel = _kernel(3)
  r, g, b = (kernel[:, :, i] for i in range(3))
  got, report = ba.adapt_band_kernel(kernel, RGB, target, "nearest")
  np.testing.assert_allclose(got[:, :, 0], b, rtol=1e-6)
  np.testing.assert_allclose(got[:, :, 1], g, rtol=1e-6)
  np.testing.assert_allclose(got[:, :, 2], r / 2, rtol=1e-6)
  np.testing.assert_allclose(got[:, :, 3], r / 2, rtol=1e-6)
  assert [c.how for c in report.choices] == ["nearest", "copied", "nearest",
                                             "nearest"]
  lines = report.lines()
  assert lines[1] == "B03: copied from G at 9.8 nm"
  assert lines[2] == "B04: nearest R at 54.6 nm, x0.5"
  assert report.dropped == ()


def test_mean_and_copy_by_hand():
  # Checkpoint B04, B03, B02; data B03 (shared) and two new bands.
  source = _by_name(S2, "B04", "B03", "B02")
  target = _by_name(S2, "B03", "B05", "B8A")
  kernel = _kernel(3, seed=1)
  k4, k3, k2 = (kernel[:, :, i] for i in range(3))
  got, report = ba.adapt_band_kernel(kernel, source, target, "mean")
  # Use of each source filter: B04 2/3, B03 1 + 2/3, B02 2/3.
  np.testing.assert_allclose(got[:, :, 0], k3 / (5 / 3), rtol=1e-6)
  new = (k4 / 3) / (2 / 3) + (k3 / 3) / (5 / 3) + (k2 / 3) / (2 / 3)
  np.testing.assert_allclose(got[:, :, 1], new, rtol=1e-5)
  np.testing.assert_allclose(got[:, :, 2], new, rtol=1e-5)
  got, report = ba.adapt_band_kernel(kernel, source, target, "copy")
  np.testing.assert_array_equal(got[:, :, 0], k3)
  assert not got[:, :, 1:].any()
  assert report.dropped == ("B04", "B02")
  assert "B04: dropped (no data band takes it)" in report.lines()
  assert report.lines()[1] == "B05: zero filter (ignored until training moves it)"


def test_mean_with_no_shared_band_is_timms_factor():
  source = _by_name(S2, "B04", "B03", "B02")
  target = _by_name(S2, "B05", "B06", "B07", "B08", "B8A")
  kernel = _kernel(3, seed=2)
  got, report = ba.adapt_band_kernel(kernel, source, target, "mean")
  want = kernel.mean(axis=2) * 3 / 5
  for t in range(5):
    np.testing.assert_allclose(got[:, :, t], want, rtol=1e-5)
  assert math.isclose(report.choices[0].scale, 3 / 5)


@pytest.mark.parametrize("rule", ["nearest", "mean"])
def test_kernel_sum_over_bands_is_kept(rule):
  kernel = _kernel(3, out=4, seed=3)
  got, report = ba.adapt_band_kernel(kernel, RGB, S2, rule)
  assert not report.dropped  # every RGB filter serves some Sentinel-2 band
  np.testing.assert_allclose(got.sum(axis=2), kernel.sum(axis=2), rtol=1e-5,
                             atol=1e-6)


def _flat_image(value: np.ndarray, bands: int) -> np.ndarray:
  return np.repeat(value[..., None], bands, axis=-1).astype(np.float32)


@pytest.mark.parametrize("rule", ["nearest", "mean"])
def test_resnet_and_vit_outputs_are_unchanged_for_a_spectrally_flat_image(rule):
  """Same normalised image in every band: the adapted 13-band model gives
  the 3-band model's output (its stem / patch embedding output is equal)."""
  value = np.random.default_rng(4).normal(size=(2, 16, 16))
  models = {
      "resnet": lambda bands: resnet.resnet(bands=bands, num_classes=5, width=4,
                                            stage_sizes=(1, 1)),
      "vit": lambda bands: vit_lib.vit(bands=bands, num_classes=5, patch_size=4,
                                       width=16, depth=1, num_heads=2,
                                       head_zeroinit=False),
  }
  kernels = {"resnet": ("stem_conv", "kernel"), "vit": ("embedding", "kernel")}
  # XLA's own convolutions: eo_jax's CPU formulations (same values) cost
  # seconds when run op by op.
  plain = layers.override_formulations(im2col_max_size=0,
                                       matmul_kernel_grad=False,
                                       max_pool_views_grad=False)
  with plain:
    _check_flat_image_outputs(value, models, kernels, rule)


def _check_flat_image_outputs(value, models, kernels, rule):
  for name, build in models.items():
    small, big = build(RGB), build(S2)
    variables = parity.random_variables(small, _flat_image(value, 3))
    assert small.input_kernels() == ("/".join(kernels[name]),)
    module, leaf = kernels[name]
    adapted, _ = ba.adapt_band_kernel(
        np.asarray(variables["params"][module][leaf]), RGB, S2, rule)
    params = dict(variables["params"])
    params[module] = dict(params[module], **{leaf: jnp.asarray(adapted)})
    big_vars = dict(variables, params=params)
    want, _ = small.apply(variables, jnp.asarray(_flat_image(value, 3)))
    got, _ = big.apply(big_vars, jnp.asarray(_flat_image(value, 13)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_shared_bands_match_one_to_one_and_by_wavelength():
  hyper = bands_lib.bands_from_wavelengths([550, 556, 600])
  matched = ba.shared_bands(RGB, hyper)  # G 550: the 550 band only
  assert matched == {0: 1, 2: 0}  # 550 <- G, 600 <- R (10 nm)
  # Same name, different spectra: not the same band.
  other = (Band("B01", 466.0),)
  assert ba.shared_bands(_by_name(S2, "B01"), other) == {}
  # Without wavelengths names decide.
  nameless = (Band("X", float("nan")),)
  assert ba.shared_bands(nameless, (Band("X", 700.0),)) == {0: 0}


def test_nearest_needs_wavelengths():
  source = (Band("X", float("nan")), Band("Y", float("nan")))
  with pytest.raises(ConfigValueError, match="No checkpoint band has a centre "
                     "wavelength.*band_rule='mean' or 'copy'"):
    ba.adapt_band_kernel(_kernel(2), source, _by_name(S2, "B04"), "nearest")
  with pytest.raises(ConfigValueError, match="'Z' has no centre wavelength"):
    ba.adapt_band_kernel(_kernel(3), RGB, (Band("Z", float("nan")),), "nearest")
  got, _ = ba.adapt_band_kernel(_kernel(2), source, _by_name(S2, "B04"), "mean")
  assert got.shape == (3, 3, 1, 2)


def test_kernel_and_bands_must_agree_and_rules_are_checked():
  with pytest.raises(InputShapeError, match="has 4 bands.*checkpoint_bands"):
    ba.adapt_band_kernel(_kernel(4), RGB, S2)
  with pytest.raises(ConfigValueError, match="band_rule='near'"):
    ba.adapt_band_kernel(_kernel(3), RGB, S2, "near")


def test_band_specs():
  assert ba.bands_from_spec("rgb") == RGB
  assert ba.bands_from_spec("Sentinel2") == S2
  assert ba.bands_from_spec("B04,B03,B02") == _by_name(S2, "B04", "B03", "B02")
  landsat = ba.bands_from_spec("B4, B3, B2")
  assert [b.wavelength_nm for b in landsat] == [654.5, 561.5, 482.0]
  mixed = ba.bands_from_spec("pan@600,R,thermal")
  assert mixed[0] == Band("pan", 600.0) and mixed[1] == RGB[0]
  assert mixed[2].name == "thermal" and math.isnan(mixed[2].wavelength_nm)
  for bad, match in (("", "empty"), ("a@-3", "positive"), ("a@x", "positive"),
                     ("R,R", "more than once")):
    with pytest.raises(ConfigValueError, match=match):
      ba.bands_from_spec(bad)
