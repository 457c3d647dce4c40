"""Tests for eo_jax.train.optim: schedules, groups, freezing, decay, clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eo_jax import config as config_lib
from eo_jax.train import optim


def _cfg(**overrides):
  c = config_lib.base_config().optim
  c.weight_decay = 0.0
  c.schedule = "constant"
  for k, v in overrides.items():
    c[k] = v
  return c


def _params():
  return {
      "backbone": {"conv": {"kernel": jnp.full((3, 3), 2.0)},
                   "norm": {"scale": jnp.full((3,), 3.0)}},
      "head": {"kernel": jnp.full((3, 2), -1.0), "bias": jnp.full((2,), 4.0)},
  }


def _grads(value=1.0):
  return jax.tree_util.tree_map(lambda p: jnp.full_like(p, value), _params())


def _first_update(c, grads=None, layer_id_fn=None, params=None):
  params = _params() if params is None else params
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=10, total_steps=100,
                               layer_id_fn=layer_id_fn)
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(_grads() if grads is None else grads, state,
                                  params)
  return updates


def _sched(c, spe=10, total=110):
  return optim.make_schedule(c, steps_per_epoch=spe, total_steps=total)


# --- Schedules -------------------------------------------------------------


def test_cosine_with_warmup_hand_values():
  s = _sched(_cfg(schedule="cosine", lr=0.1, warmup_epochs=1.0, end_lr_factor=0.1))
  # Warmup: 10 steps linear from 0.
  np.testing.assert_allclose(s(0), 0.0, atol=1e-8)
  np.testing.assert_allclose(s(5), 0.05, rtol=1e-6)
  np.testing.assert_allclose(s(10), 0.1, rtol=1e-6)  # warmup end = peak
  # Cosine over the remaining 100 steps from 0.1 to 0.01.
  np.testing.assert_allclose(s(60), 0.01 + 0.09 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(
      s(35), 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-6)
  np.testing.assert_allclose(s(110), 0.01, rtol=1e-5)
  np.testing.assert_allclose(s(500), 0.01, rtol=1e-5)  # stays at the end


def test_step_schedule_boundaries_every_seven_epochs():
  s = _sched(_cfg(schedule="step", lr=1.0, step_every_epochs=7.0, step_factor=0.1),
             spe=10, total=300)
  got = [float(s(i)) for i in (0, 69, 70, 139, 140, 209, 210)]
  np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6)
  # A warmup ramps to the step schedule's value and keeps its boundaries.
  s = _sched(_cfg(schedule="step", lr=1.0, step_every_epochs=7.0,
                  step_factor=0.1, warmup_epochs=1.0), spe=10, total=300)
  got = [float(s(i)) for i in (0, 5, 10, 69, 70)]
  np.testing.assert_allclose(got, [0, 0.5, 1, 1, 0.1], rtol=1e-6, atol=1e-8)


def test_step_schedule_fractional_period():
  # 2.5 epochs x 3 steps = 7.5 steps: drops after step 7 and after step 14.
  s = _sched(_cfg(schedule="step", lr=1.0, step_every_epochs=2.5, step_factor=0.5),
             spe=3, total=30)
  got = [float(s(i)) for i in (7, 8, 14, 15)]
  np.testing.assert_allclose(got, [1, 0.5, 0.5, 0.25], rtol=1e-6)


def test_polynomial_and_constant():
  s = _sched(_cfg(schedule="polynomial", lr=1.0, power=2.0, end_lr_factor=0.0),
             total=100)
  np.testing.assert_allclose([s(0), s(50), s(100)], [1.0, 0.25, 0.0], atol=1e-6)
  s = _sched(_cfg(schedule="constant", lr=0.4, warmup_epochs=0.4), spe=10)
  np.testing.assert_allclose([s(2), s(4), s(99)], [0.2, 0.4, 0.4], rtol=1e-6)


def test_schedule_works_under_jit():
  s = _sched(_cfg(schedule="cosine", lr=0.1, warmup_epochs=1.0))
  np.testing.assert_allclose(jax.jit(s)(jnp.int32(10)), 0.1, rtol=1e-6)


def test_bad_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="adadelta"):
    optim.make_optimizer(_cfg(name="lamb"), _params(), steps_per_epoch=1,
                         total_steps=1)
  with pytest.raises(ValueError, match="polynomial"):
    _sched(_cfg(schedule="exp"))
  with pytest.raises(ValueError, match="warmup"):
    _sched(_cfg(schedule="cosine", warmup_epochs=20.0), spe=10, total=100)


# --- Parameter groups, freezing, layer decay -------------------------------


def test_group_multiplier_scales_first_sgd_update_exactly():
  c = _cfg(name="sgd", momentum=0.0, lr=0.1, groups=(("^head/", 10.0),))
  u = _first_update(c)
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -0.1)
  np.testing.assert_allclose(u["backbone"]["norm"]["scale"], -0.1)
  np.testing.assert_allclose(u["head"]["kernel"], -1.0, rtol=1e-6)
  np.testing.assert_allclose(u["head"]["bias"], -1.0, rtol=1e-6)


def test_first_matching_group_wins():
  c = _cfg(name="sgd", momentum=0.0, lr=1.0,
           groups=(("head/bias", 3.0), ("head", 2.0)))
  u = _first_update(c)
  np.testing.assert_allclose(u["head"]["bias"], -3.0)
  np.testing.assert_allclose(u["head"]["kernel"], -2.0)
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -1.0)


def test_frozen_params_do_not_change_and_have_no_state():
  c = _cfg(name="adam", lr=0.1, frozen=("^backbone/conv",),
           groups=(("norm", 0.0),), weight_decay=0.1)
  params = _params()
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=1, total_steps=10)
  state = tx.init(params)
  # Adam keeps two moments per trainable element only (head: 6 + 2).
  state_elems = sum(x.size for x in jax.tree_util.tree_leaves(state)
                    if jnp.ndim(x) > 0)
  assert state_elems == 2 * (6 + 2)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(_grads(), state, params)
    return optax.apply_updates(params, updates), state

  new = params
  for _ in range(3):
    new, state = step(new, state)
  np.testing.assert_array_equal(new["backbone"]["conv"]["kernel"],
                                params["backbone"]["conv"]["kernel"])
  np.testing.assert_array_equal(new["backbone"]["norm"]["scale"],
                                params["backbone"]["norm"]["scale"])
  assert np.all(np.abs(new["head"]["kernel"] - params["head"]["kernel"]) > 0.1)
  assert np.all(np.abs(new["head"]["bias"] - params["head"]["bias"]) > 0.1)


def test_layer_decay_multipliers():
  ids = {"backbone/conv/kernel": 0, "backbone/norm/scale": 1,
         "head/kernel": 2, "head/bias": 2}
  c = _cfg(name="sgd", momentum=0.0, lr=1.0, layer_decay=0.5,
           groups=(("head/bias", 2.0),))
  u = _first_update(c, layer_id_fn=ids.__getitem__)
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -0.25)
  np.testing.assert_allclose(u["backbone"]["norm"]["scale"], -0.5)
  np.testing.assert_allclose(u["head"]["kernel"], -1.0)
  np.testing.assert_allclose(u["head"]["bias"], -2.0)  # group x layer factor
  with pytest.raises(ValueError, match="layer_id_fn"):
    _first_update(c)


def test_group_regex_matching_nothing_fails():
  with pytest.raises(ValueError, match="matches no parameter"):
    _first_update(_cfg(groups=(("^decoder/", 2.0),)))
  with pytest.raises(ValueError, match="matches no parameter"):
    _first_update(_cfg(frozen=("^decoder/",)))
  with pytest.raises(ValueError, match="pairs"):
    _first_update(_cfg(groups=("head", 2.0)))


# --- Weight decay ----------------------------------------------------------


def test_sgd_weight_decay_skips_biases_and_norm_scales():
  c = _cfg(name="sgd", momentum=0.0, lr=0.1, weight_decay=0.5)
  u = _first_update(c, grads=_grads(0.0))
  # L2 gradient = wd * p for matrices only; update = -lr * wd * p.
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -0.1 * 0.5 * 2.0)
  np.testing.assert_allclose(u["head"]["kernel"], -0.1 * 0.5 * -1.0)
  np.testing.assert_array_equal(u["backbone"]["norm"]["scale"], 0.0)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)
  c.decay_norms_and_biases = True
  u = _first_update(c, grads=_grads(0.0))
  np.testing.assert_allclose(u["backbone"]["norm"]["scale"], -0.1 * 0.5 * 3.0)
  np.testing.assert_allclose(u["head"]["bias"], -0.1 * 0.5 * 4.0)


def test_adamw_decay_is_decoupled_and_adam_decay_is_l2():
  # With zero gradients Adam's own step is 0, so AdamW moves by -lr*wd*p...
  u = _first_update(_cfg(name="adamw", lr=0.1, weight_decay=0.5),
                    grads=_grads(0.0))
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(u["head"]["kernel"], 0.05, rtol=1e-6)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)
  # ...while Adam normalises the L2 gradient: the first step is -lr*sign(p).
  u = _first_update(_cfg(name="adam", lr=0.1, weight_decay=0.5),
                    grads=_grads(0.0))
  np.testing.assert_allclose(u["backbone"]["conv"]["kernel"], -0.1, rtol=1e-5)
  np.testing.assert_allclose(u["head"]["kernel"], 0.1, rtol=1e-5)
  np.testing.assert_array_equal(u["head"]["bias"], 0.0)


# --- Optimisers and clipping -----------------------------------------------


def test_sgd_momentum_and_nesterov_by_hand():
  params = _params()
  for nesterov, first, second in ((False, 1.0, 1.9), (True, 1.9, 0.9 * 1.9 + 1)):
    c = _cfg(name="sgd", momentum=0.9, nesterov=nesterov, lr=0.1)
    tx, _ = optim.make_optimizer(c, params, steps_per_epoch=1, total_steps=5)
    state = tx.init(params)
    u1, state = tx.update(_grads(), state, params)
    u2, state = tx.update(_grads(), state, params)
    np.testing.assert_allclose(u1["head"]["bias"], -0.1 * first, rtol=1e-6)
    np.testing.assert_allclose(u2["head"]["bias"], -0.1 * second, rtol=1e-6)


def test_adadelta_decreases_a_quadratic():
  target = jnp.arange(5.0)
  params = {"w": jnp.zeros((5, 1))}
  loss = lambda p: jnp.sum((p["w"][:, 0] - target) ** 2)
  tx, _ = optim.make_optimizer(_cfg(name="adadelta", lr=1.0, eps=1e-6, rho=0.9),
                               params, steps_per_epoch=1, total_steps=10)
  state = tx.init(params)
  start = float(loss(params))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(50):
    params, state = step(params, state)
  assert np.isfinite(float(loss(params)))
  assert float(loss(params)) < start


def _adadelta_by_hand(params, grads_seq, *, lr, rho, eps, wd, decay_all):
  """Updates of Zeiler's (2012) Adadelta, in float64, with coupled L2 decay.

  Per element: g += wd * p (matrices only unless `decay_all`);
  E[g^2] = rho E[g^2] + (1 - rho) g^2; d = sqrt(E[dx^2] + eps) /
  sqrt(E[g^2] + eps) * g; E[dx^2] = rho E[dx^2] + (1 - rho) d^2; the update
  is -lr * d and is applied to the params before the next gradient.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  e_g = {k: np.zeros_like(v) for k, v in p.items()}
  e_x = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for grads in grads_seq:
    updates = {}
    for k in p:
      g = np.asarray(grads[k], np.float64)
      if decay_all or p[k].ndim > 1:
        g = g + wd * p[k]
      e_g[k] = rho * e_g[k] + (1 - rho) * g ** 2
      d = np.sqrt(e_x[k] + eps) / np.sqrt(e_g[k] + eps) * g
      e_x[k] = rho * e_x[k] + (1 - rho) * d ** 2
      updates[k] = -lr * d
      p[k] = p[k] + updates[k]
    out.append(updates)
  return out


@pytest.mark.parametrize("wd,decay_all", [(0.0, False), (0.3, False),
                                          (0.3, True)])
def test_adadelta_first_two_updates_by_hand(wd, decay_all):
  rng = np.random.default_rng(0)
  params = {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  # Gradients of different signs and sizes, so that eps matters for the
  # small ones and E[g^2] for the large ones.
  grads_seq = [
      {"kernel": jnp.asarray([[2.0, -0.5], [1e-3, 0.0], [-4.0, 0.3]]),
       "bias": jnp.asarray([0.7, -2.0])},
      {"kernel": jnp.asarray([[1.0, 0.5], [-1e-3, 3.0], [-4.0, -0.3]]),
       "bias": jnp.asarray([-0.2, -2.0])}]
  lr, rho, eps = 0.5, 0.8, 1e-3
  c = _cfg(name="adadelta", lr=lr, rho=rho, eps=eps, weight_decay=wd,
           decay_norms_and_biases=decay_all)
  tx, _ = optim.make_optimizer(c, params, steps_per_epoch=1, total_steps=5)
  state = tx.init(params)
  got, p = [], params
  for grads in grads_seq:
    updates, state = jax.jit(tx.update)(grads, state, p)
    got.append(updates)
    p = optax.apply_updates(p, updates)
  want = _adadelta_by_hand(params, grads_seq, lr=lr, rho=rho, eps=eps, wd=wd,
                           decay_all=decay_all)
  for step, (g, w) in enumerate(zip(got, want)):
    for k in ("kernel", "bias"):
      np.testing.assert_allclose(g[k], w[k], rtol=2e-5, atol=1e-9,
                                 err_msg=f"step {step + 1} {k}")
  # By hand for one element, without decay: g = 2 on step 1 gives
  # E[g^2] = 0.2 * 4 = 0.8, d = sqrt(1e-3) / sqrt(0.801) * 2 = 0.0706665,
  # update -0.5 d = -0.0353333.
  if wd == 0.0:
    np.testing.assert_allclose(got[0]["kernel"][0, 0], -0.0353333, rtol=1e-5)
  # Decay changes the kernel's update, and the bias's only with decay_all.
  if wd > 0:
    plain = _adadelta_by_hand(params, grads_seq, lr=lr, rho=rho, eps=eps,
                              wd=0.0, decay_all=False)
    assert not np.allclose(got[1]["kernel"], plain[1]["kernel"], rtol=1e-3)
    assert np.allclose(got[1]["bias"], plain[1]["bias"],
                       rtol=1e-5) != decay_all


def test_grad_clipping_bounds_the_update():
  c = _cfg(name="sgd", momentum=0.0, lr=1.0, grad_clip_norm=1.0)
  u = _first_update(c, grads=_grads(10.0))
  norm = float(optax.tree.norm(u))
  np.testing.assert_allclose(norm, 1.0, rtol=1e-5)
  # Below the threshold, gradients pass unchanged.
  u = _first_update(c, grads=_grads(0.01))
  np.testing.assert_allclose(u["head"]["bias"], -0.01, rtol=1e-6)


def test_frozen_gradients_do_not_count_towards_clipping():
  c = _cfg(name="sgd", momentum=0.0, lr=1.0, grad_clip_norm=1.0,
           frozen=("^backbone/",))
  grads = _grads(0.1)
  grads["backbone"]["conv"]["kernel"] = jnp.full((3, 3), 1e6)
  u = _first_update(c, grads=grads)
  np.testing.assert_allclose(u["head"]["kernel"], -0.1, rtol=1e-6)
  np.testing.assert_array_equal(u["backbone"]["conv"]["kernel"], 0.0)


def test_lr_fn_is_the_applied_rate():
  c = _cfg(name="sgd", momentum=0.0, lr=0.1, schedule="cosine")
  params = _params()
  tx, lr_fn = optim.make_optimizer(c, params, steps_per_epoch=2, total_steps=4)
  state = tx.init(params)
  for step in range(4):
    u, state = tx.update(_grads(), state, params)
    np.testing.assert_allclose(u["head"]["bias"], -lr_fn(step), rtol=1e-6)


def test_describe_multipliers():
  c = _cfg(groups=(("^head/", 10.0),), frozen=("conv",))
  got = optim.describe_multipliers(c, _params())
  assert got == {"backbone/conv/kernel": 0.0, "backbone/norm/scale": 1.0,
                 "head/bias": 10.0, "head/kernel": 10.0}
