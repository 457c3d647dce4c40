"""DINOv2's schedules (momentum, teacher temperature, weight decay)."""
import jax
import jax.numpy as jnp
import numpy as np

from eo_jax import config as config_lib
from eo_jax import schedules
from eo_jax.train import optim


def test_cosine_matches_dinov2_cosine_scheduler():
  total = 50
  steps = np.arange(total)
  # DINOv2's CosineScheduler without warmup, written out.
  want = 1.0 + 0.5 * (0.992 - 1.0) * (1 + np.cos(np.pi * steps / total))
  got = jax.jit(schedules.cosine(0.992, 1.0, total))(jnp.asarray(steps))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(schedules.cosine(0.04, 0.4, total)(total + 7), 0.4)


def test_linear_warmup_then_constant():
  f = schedules.linear_warmup(0.04, 0.07, 30)
  np.testing.assert_allclose(f(0), 0.04)
  np.testing.assert_allclose(f(15), 0.055, rtol=1e-6)
  np.testing.assert_allclose(f(30), 0.07, rtol=1e-6)
  np.testing.assert_allclose(f(1000), 0.07, rtol=1e-6)
  np.testing.assert_allclose(schedules.linear_warmup(0.04, 0.07, 0)(0), 0.07)


def test_weight_decay_end_gives_a_cosine_decay_schedule():
  c = config_lib.base_config().optim
  c.name, c.lr, c.schedule = "adamw", 1.0, "constant"
  c.weight_decay, c.weight_decay_end = 0.04, 0.4
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  total = 10
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=5, total_steps=total)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  update = jax.jit(tx.update)
  for step in range(total):
    # Zero gradients: Adam's part is 0, the update is -lr * wd(step) * param.
    updates, state = update(zeros, state, params)
    wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + np.cos(np.pi * step / total))
    np.testing.assert_allclose(updates["w"], -wd * 2.0, rtol=1e-5)
    np.testing.assert_array_equal(updates["b"], 0.0)  # biases never decay
  # Without the key the decay stays constant.
  c.weight_decay_end = None
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=5, total_steps=total)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(zeros, state, params)
  np.testing.assert_allclose(updates["w"], -0.04 * 2.0, rtol=1e-6)
