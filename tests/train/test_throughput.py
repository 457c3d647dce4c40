"""Throughput figures: the peak table, XLA's FLOP count of a train step
against the summary's analytic count, and what the trainer logs."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from eo_jax import summary
from eo_jax.data import bands as bands_lib
from eo_jax.models import build_model
from eo_jax.objectives import losses
from eo_jax.train import checkpoint as checkpoint_lib
from eo_jax.train import throughput, trainer
from tiny import tiny_config


def test_peak_table_by_device_kind_and_dtype():
  assert throughput.device_peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert throughput.device_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  # The longer key wins: a PCIe H100 is not an SXM one.
  assert throughput.device_peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert throughput.device_peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert throughput.device_peak_flops("cpu", "float32") is None
  assert throughput.device_peak_flops("TPU v4", "float32") is None


def test_rates_by_hand():
  # 2 steps/s of 64 images at 1 TFLOP a step on 2 devices of 100 TFLOP/s.
  out = throughput.rates(2.0, 64, 1e12, 100e12, 2)
  assert out == {"train/images_per_second": 128.0, "train/tflops_per_second": 2.0,
                 "train/mfu": pytest.approx(0.01)}
  assert throughput.rates(2.0, 64, 1e12, None, 2) == {
      "train/images_per_second": 128.0, "train/tflops_per_second": 2.0}
  assert set(throughput.rates(2.0, 64, 0.0, 100e12, 2)) == {"train/images_per_second"}
  assert set(throughput.TIMING_METRICS) >= set(out)


def test_train_step_flops_are_three_forward_passes():
  """Forward + backward of a ViT is ~3x the forward's matmul FLOPs (the
  backward computes gradients of activations and of weights); the summary
  counts the forward analytically."""
  model = build_model(ml_collections.ConfigDict(dict(
      name="vit", variant="Ti/4", width=64, depth=2, num_heads=2, mlp_dim=128)),
      bands=bands_lib.SENTINEL2[:4], num_classes=5)
  shape = (8, 16, 16, 4)
  forward = summary.totals(summary.summarize(model, shape))["flops"]
  image = jnp.ones(shape)
  label = jnp.zeros((8,), jnp.int32)
  params = model.init(jax.random.key(0), image)["params"]
  tx = optax.sgd(0.1)

  def step(params, opt_state, image, label):
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, image)
      return losses.cross_entropy(logits, label).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  flops = throughput.step_flops(jax.jit(step), params, tx.init(params), image, label)
  if flops is None:
    pytest.skip("backend has no cost analysis")
  assert 2.5 < flops / forward < 3.6, (flops, forward)


def test_the_trainer_logs_images_per_second_and_tflops(tmp_path):
  trainer.train_and_evaluate(tiny_config(), str(tmp_path))
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / "checkpoints"))
  history = checkpointer.restore_meta(checkpointer.latest_step())["history"]["history"]
  checkpointer.close()
  steps = dict(history["train/steps_per_second"])
  images = dict(history["train/images_per_second"])
  tflops = dict(history["train/tflops_per_second"])
  assert sorted(images) == sorted(steps) == [4, 8, 12]
  for step, rate in steps.items():
    assert images[step] == pytest.approx(8 * rate)  # global batch 8
  # One FLOP count for every log: tflops / steps is constant and positive.
  per_step = np.array([tflops[s] / steps[s] for s in sorted(steps)])
  np.testing.assert_allclose(per_step, per_step[0], rtol=1e-9)
  assert per_step[0] > 0
  assert "train/mfu" not in history  # CPU: no peak in the table


def test_compute_dtype_of_plain_and_nested_models():
  plain = ml_collections.ConfigDict(dict(model=dict(name="vit", dtype="bfloat16")))
  nested = ml_collections.ConfigDict(dict(model=dict(
      name="segmentation", backbone=dict(name="resnet18", dtype="bfloat16"))))
  default = ml_collections.ConfigDict(dict(model=dict(name="resnet18")))
  assert throughput.compute_dtype(plain) == "bfloat16"
  assert throughput.compute_dtype(nested) == "bfloat16"
  assert throughput.compute_dtype(default) == "float32"
