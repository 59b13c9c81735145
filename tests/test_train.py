"""The training core: schedule, optimiser, train step (carry, NaN guard, bf16). The fit loop: test_harness.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import train as training
from rnn_jax.errors import UserError

B, I = 6, 3


def _linear_loss(params, batch, key):
    del key
    x_BI, y_B = batch
    pred_B = x_BI @ params["w"] + params["b"]
    mse = jnp.mean((pred_B - y_B) ** 2)
    return mse, {"mse": mse}


def _data(seed=0, n=B):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (n, I))
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.3 + 0.01 * jax.random.normal(k2, (n,))
    return x, y


def _state(lr=0.05, total=200, warmup=5):
    params = {"w": jnp.zeros((I,)), "b": jnp.zeros(())}
    opt = training.make_optimizer(lr, total_steps=total, warmup_steps=warmup)
    return training.init_state(params, opt, jax.random.key(1)), opt


def test_warmup_cosine_schedule():
    f = lambda s, total=110: float(training.warmup_cosine(s, total, 1.0, 10, 0.1))  # noqa: E731
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10 of the peak
    assert f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)  # half way down the cosine: f + (1 - f) / 2
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedule_end_lives_in_the_state():
    state, _ = _state(lr=1.0, total=100, warmup=0)
    assert training.current_learning_rate(state.opt_state, 1.0, 0) == pytest.approx(1.0)
    moved = training.set_total_steps(state.opt_state, 4)
    is_schedule = lambda s: isinstance(s, training.WarmupCosineState)  # noqa: E731
    moved = jax.tree.map(lambda s: s._replace(count=jnp.int32(4)) if is_schedule(s) else s, moved, is_leaf=is_schedule)
    assert training.current_learning_rate(moved, 1.0, 0, final_fraction=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [dict(learning_rate=0.0), dict(learning_rate=float("nan")), dict(total_steps=0)])
def test_make_optimizer_rejects_bad_values(bad):
    kwargs = dict(learning_rate=1e-3, total_steps=10) | bad
    with pytest.raises(UserError):
        training.make_optimizer(**kwargs)


def test_train_step_learns_and_reports_metrics():
    state, opt = _state()
    step = training.make_train_step(_linear_loss, opt)
    batch = _data()
    losses = []
    for _ in range(60):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert set(metrics) >= {"loss", "grad_norm", "finite", "mse"}
    assert int(state.step) == 60 and bool(metrics["finite"])
    assert losses[-1] < 0.05 * losses[0]
    assert state.params["w"].dtype == jnp.float32 and metrics["loss"].dtype == jnp.float32


def test_nonfinite_loss_leaves_state_unchanged():
    state, opt = _state()
    step = training.make_train_step(_linear_loss, opt)
    x, y = _data()
    new, metrics = step(state, (x, y.at[0].set(jnp.nan)))
    assert not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, (new.params, new.opt_state), (state.params, state.opt_state))
    assert int(new.step) == 0


def _carry_loss(params, carry_B, batch, key):
    """A toy recurrence across batches: h <- 0.5 h + x w; the loss reads h."""
    del key
    x_B, y_B = batch
    h_B = 0.5 * carry_B + x_B * params["w"]
    loss = jnp.mean((h_B - y_B) ** 2)
    return loss, ({}, h_B)


def test_carry_is_passed_on_without_gradient_and_kept_in_float32():
    params = {"w": jnp.ones(())}
    opt = training.make_optimizer(1e-9, total_steps=10, warmup_steps=0)  # params barely move: check the carry only
    state = training.init_state(params, opt, jax.random.key(0), carry=jnp.zeros((B,)))
    step = training.make_train_step(_carry_loss, opt, has_carry=True, compute_dtype=jnp.bfloat16)
    x = jnp.arange(B, dtype=jnp.float32)
    state, _ = step(state, (x, x))
    state, m = step(state, (x, x))
    assert state.carry.dtype == jnp.float32 and m["loss"].dtype == jnp.float32
    np.testing.assert_allclose(state.carry, 1.5 * x, rtol=1e-2)
    # The gradient of the second loss only sees this batch's term (the carry is a constant): dL/dw = mean(2 (h - y) x)
    grad = jax.grad(lambda p: _carry_loss(p, x, (x, x), None)[0])(params)
    np.testing.assert_allclose(m["grad_norm"], jnp.abs(grad["w"]), rtol=2e-2)


def test_bfloat16_compute_matches_float32_loosely():
    state, opt = _state()
    batch = _data()
    s32, m32 = training.make_train_step(_linear_loss, opt)(state, batch)
    s16, m16 = training.make_train_step(_linear_loss, opt, compute_dtype=jnp.bfloat16)(state, batch)
    assert s16.params["w"].dtype == jnp.float32  # master params stay float32
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
    np.testing.assert_allclose(s16.params["w"], s32.params["w"], rtol=5e-2, atol=1e-3)
