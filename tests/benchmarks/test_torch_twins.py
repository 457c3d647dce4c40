"""The PyTorch twins in benchmarks/ compute what eo_jax's models compute.

The throughput figures compare eo_jax with a PyTorch network written in the
benchmark; they mean something only if the two are the same network. These
runs are tiny (a few images, one timed step); they check the twin, not speed.
"""
import pytest

pytest.importorskip("torch")

from benchmarks import vit_throughput  # pylint: disable=g-import-not-at-top


def test_vit_twin_gives_the_same_logits_as_eo_jax_vit():
  # run() copies the JAX initial weights into the torch ViT and raises when
  # the logits differ by more than 1e-3; the parameter counts must match.
  r = vit_throughput.run(variant="Ti/8", image_size=16, bands=4, batch=2,
                         steps=1, warmup=0, baseline="erfc_gelu")
  assert r["logit_max_abs_diff"] < 1e-4
  assert r["baseline_ms_step"] > 0                 # the A/B path runs too
  assert r["params"] == 12 * (4 * (192 * 192 + 192) + 2 * 2 * 192
                             + 192 * 768 + 768 + 768 * 192 + 192) + (
      8 * 8 * 4 * 192 + 192          # patch embedding
      + 192 + 5 * 192                # cls token, position embedding (4 + 1)
      + 2 * 192                      # final LayerNorm
      + 192 * 10 + 10)               # head


@pytest.mark.parametrize("model_name, expected", [
    ("resnet18_truncated", 856_778), ("resnet18", 11_213_002)])
def test_resnet_twins_have_the_same_parameter_count(model_name, expected):
  from benchmarks import resnet_throughput  # pylint: disable=g-import-not-at-top
  _, _, jax_params = resnet_throughput.make_jax_step(model_name, 2, 32, {})
  _, torch_params = resnet_throughput.make_torch_step(model_name, 2, 32)
  # 13 bands, 10 classes. Full ResNet-18: torchvision's 11,689,512 for 3
  # bands / 1000 classes, + 7*7*10*64 stem weights, - 512*990 + 990 head
  # weights = 11,213,002. Both twins must be exactly that network.
  assert jax_params == torch_params == expected


def test_cpu_matmul_products_are_the_vit_steps_and_agree_with_torch():
  from benchmarks import cpu_matmul  # pylint: disable=g-import-not-at-top
  rows = cpu_matmul.measure(batch=1, rounds=1)
  by_name = {row["name"]: row for row in rows}
  # 65 rows (one image's tokens): the FLOPs of each product by hand.
  assert by_name["fc1 forward"]["flop"] == 2 * 65 * 384 * 1536
  assert by_name["fc1 kernel grad"]["flop"] == 2 * 65 * 384 * 1536
  assert by_name["fc1 input grad"]["flop"] == 2 * 65 * 1536 * 384
  assert by_name["q/k/v/out kernel grad"]["flop"] == 2 * 65 * 384 * 384
  for row in rows:  # XLA and torch computed the same product
    assert row["rel_diff"] < 1e-5, row
