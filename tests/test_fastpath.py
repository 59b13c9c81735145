"""The default (fast) path against the plain one: same values and gradients; the plan's heuristics."""

import dataclasses
import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R
from rnn_jax.kernels import IMPLS
from rnn_jax.plan import CPU_SMALL_STATE, auto_hoist, auto_plan, auto_saved, auto_unroll

B, T, I, H = 3, 9, 4, 5


def test_auto_unroll_by_backend_and_size():
    assert auto_unroll(100, 64, backend="gpu") == 8 and auto_unroll(3, 64, backend="tpu") == 3
    assert auto_unroll(100, CPU_SMALL_STATE, backend="cpu") == 4
    assert auto_unroll(100, CPU_SMALL_STATE + 1, backend="cpu") == 1
    assert auto_unroll(2, 8, backend="cpu") == 2  # never more than T


def test_auto_hoist_by_cell_and_backend():
    # CPU: LSTM and GRU project inside the step (measured faster), the vanilla RNN only with a large
    # carry; GPU: all hoist.
    small, large = CPU_SMALL_STATE, CPU_SMALL_STATE + 1
    assert [auto_hoist(R.CELLS[n], small, backend="cpu") for n in ("vanilla", "lstm", "gru")] == [True, False, False]
    assert [auto_hoist(R.CELLS[n], large, backend="cpu") for n in ("vanilla", "lstm", "gru")] == [False] * 3
    assert all(auto_hoist(R.CELLS[n], large, backend="gpu") for n in ("vanilla", "lstm", "gru"))
    assert not auto_hoist(lambda p, c, x: (c, x), large, backend="gpu")  # a plain function has nothing to hoist
    # CPU with a large carry: store only the pre-activations; small carries and GPU keep everything.
    assert auto_saved(R.lstm_cell, CPU_SMALL_STATE + 1, backend="cpu") == R.lstm_cell.saved != ()
    assert auto_saved(R.lstm_cell, CPU_SMALL_STATE, backend="cpu") == ()
    assert auto_saved(R.gru_cell, 10**6, backend="gpu") == ()


def _loss(cell, unroll, params, xs, lengths):
    final, ys = R.run(cell, params, None, xs, lengths=lengths, unroll=unroll)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm"])
def test_default_unroll_equals_unroll_one(name):
    """The default unroll (4 here: a small carry on CPU) changes neither values nor gradients."""
    k = jax.random.split(jax.random.key(0), 2)
    params = {"lstm": R.lstm_init, "gru": R.gru_init}[name](k[0], I, H)
    xs = jax.random.normal(k[1], (B, T, I))
    lengths = jnp.array([9, 4, 1])
    cell = R.CELLS[name]
    f = jax.jit(jax.value_and_grad(_loss, argnums=(2, 3)), static_argnums=(0, 1))
    (v_default, g_default), (v_one, g_one) = f(cell, None, params, xs, lengths), f(cell, 1, params, xs, lengths)
    np.testing.assert_allclose(v_default, v_one, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g_default, g_one)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "lstm"])
def test_every_impl_and_knob_equals_the_default(name):
    """Every implementation that accepts the call, and the knobs hoist/unroll, give the default's loss and
    gradient (through run(impl=...) alone)."""
    k = jax.random.split(jax.random.key(1), 2)
    params = R.vanilla_init(k[0], I, H, 6) if name == "vanilla" else R.lstm_init(k[0], I, H)
    xs = jax.random.normal(k[1], (B, 5, I))

    def loss(params, xs, **kw):
        return jnp.mean(jnp.square(R.run(R.CELLS[name], params, None, xs, **kw)[1]))

    ref = jax.jit(jax.value_and_grad(loss))(params, xs)
    here = [i for i, why in R.available_impls().items() if why is None and i != "pallas"]  # pallas: test_kernels
    variants = [dict(impl=i) for i in here]
    variants += [dict(impl="scan", hoist=True), dict(impl="scan", hoist=False), dict(impl="scan", unroll=3)]
    for kw in variants:
        if name == "lstm" and kw["impl"] == "custom_jvp":
            continue
        val, grad = jax.jit(jax.value_and_grad(partial(loss, **kw)))(params, xs)
        np.testing.assert_allclose(val, ref[0], rtol=1e-5, err_msg=str(kw))
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref[1])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=str(kw))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_saved_pre_activations_do_not_change_gradients(name):
    """On CPU the default stores only the named pre-activations; a plain function stores everything."""
    k = jax.random.split(jax.random.key(2), 2)
    wide = 91  # B * H > CPU_SMALL_STATE: the policy applies on CPU
    params = {"lstm": R.lstm_init, "gru": R.gru_init}[name](k[0], I, wide)
    xs = jax.random.normal(k[1], (B, T, I))
    cell = R.CELLS[name]
    carry = R.zeros_carry(cell, params, (B,))

    def loss(params, fn, hoist=None):
        final, ys = R.run(fn, params, carry, xs, unroll=1, hoist=hoist)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    ref = jax.value_and_grad(loss)(params, lambda p, c, x: cell(p, c, x))
    for hoist in (True, False):
        val, grad = jax.value_and_grad(loss)(params, cell, hoist)
        np.testing.assert_allclose(val, ref[0], rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, ref[1])


def test_auto_plan_takes_the_fast_path_only_where_it_applies():
    def plan(cell, platform="cpu", **kw):
        key = jax.random.key(0)
        params = R.lstm_init(key, I, H) if cell is R.lstm_cell else R.vanilla_init(key, I, H, 6)
        carry_N = jax.ShapeDtypeStruct((B, H), jnp.float32)
        return auto_plan(cell, params, carry_N, jax.ShapeDtypeStruct((T, B, I), jnp.float32), platform=platform, **kw)

    def impl(cell, platform="cpu", **kw):
        return plan(cell, platform, **kw).impl

    built = R.available_impls("cpu")["native"] is None
    native = "native" if built else "scan"  # no compiler: the scan
    vanilla = "native" if built else "custom_jvp"  # no compiler: the fast path
    head_free = dataclasses.replace(R.vanilla_cell, readout=lambda p, h: h)  # another head: still the vanilla step
    assert impl(R.vanilla_cell) == impl(head_free) == vanilla
    assert impl(R.vanilla_cell, impl="custom_jvp") == "custom_jvp"
    assert impl(R.vanilla_cell, "cuda") == impl(R.vanilla_cell, "default") == impl(R.lstm_cell, "cuda") == "scan"
    assert impl(R.lstm_cell) == native
    for kw in (dict(lengths=jnp.ones(B, int)), dict(reverse=True)):  # the custom_jvp path's refusals
        assert impl(R.vanilla_cell, **kw) == native, kw
    for kw in (dict(remat="sqrt"), dict(return_carries=True)):  # and the native kernels' too
        assert impl(R.vanilla_cell, **kw) == impl(R.lstm_cell, **kw) == "scan", kw
    # speed knobs never change the algorithm (and so the gradient rule)
    for kw in (dict(unroll=1), dict(hoist=True), dict(hoist=False), dict(unroll=3, hoist=False)):
        assert impl(R.vanilla_cell, **kw) == vanilla, kw
    assert plan(R.vanilla_cell, unroll=3, impl="custom_jvp") == R.Plan("custom_jvp", True, 3, ())
    assert impl(R.vanilla_cell, impl="scan") == "scan"
    assert plan(R.lstm_cell, "cuda") == R.Plan("scan", True, 8, ())
    assert plan(R.lstm_cell, "cpu", impl="scan") == R.Plan("scan", False, 4, ())


@pytest.mark.slow
@pytest.mark.parametrize("batch, time_major", [((), False), ((B,), False), ((2, B), True)])
def test_vanilla_fast_path_equals_the_scan_in_values_gradients_and_forward_mode(batch, time_major, x64):
    """Float64: impl="custom_jvp" (the default on CPU) against impl="scan", for params, h0 and xs, in
    reverse mode (jit) and forward mode (eager), for 0, 1 and 2 batch dimensions."""
    k = jax.random.split(jax.random.key(11), 4)
    params = R.vanilla_init(k[0], I, H, 6, jnp.float64)
    shape = (T, *batch, I) if time_major else (*batch, T, I)
    xs = jax.random.normal(k[1], shape, jnp.float64)
    h0 = jax.random.normal(k[2], (*batch, H), jnp.float64)

    def loss(p, h0, xs, impl):
        final, ys = R.run(R.vanilla_cell, p, h0, xs, time_major=time_major, impl=impl)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    fast, plain = value_and_grad(params, h0, xs, "custom_jvp"), value_and_grad(params, h0, xs, "scan")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), fast, plain)
    tangents = jax.tree.map(lambda a: jax.random.normal(k[3], a.shape, a.dtype), (params, h0, xs))
    jvp_fast = jax.jvp(lambda *a: loss(*a, "custom_jvp"), (params, h0, xs), tangents)
    jvp_plain = jax.jvp(lambda *a: loss(*a, "scan"), (params, h0, xs), tangents)
    np.testing.assert_allclose(jvp_fast, jvp_plain, rtol=1e-10)


def test_auto_follows_its_plan_whatever_unroll_says():
    """impl="auto" with unroll=1 (a speed knob) is the planned implementation with unroll=1, bit for bit: the
    native kernels where built, else the fast path; the fast path honours unroll (unroll 3 agrees to rounding)."""
    k = jax.random.split(jax.random.key(12), 2)
    params = R.vanilla_init(k[0], I, H, 6)
    xs = jax.random.normal(k[1], (B, T, I))
    planned = R.auto_plan(R.vanilla_cell, params, None, jnp.swapaxes(xs, 0, 1), platform="cpu", unroll=1).impl
    assert planned in ("native", "custom_jvp")

    def loss(p, xs, impl, unroll):
        final, ys = R.run(R.vanilla_cell, p, None, xs, impl=impl, unroll=unroll)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    auto, chosen = value_and_grad(params, xs, "auto", 1), value_and_grad(params, xs, planned, 1)
    jax.tree.map(np.testing.assert_array_equal, auto, chosen)
    fast, unrolled = value_and_grad(params, xs, "custom_jvp", 1), value_and_grad(params, xs, "custom_jvp", 3)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), unrolled, fast)
    assert "custom_jvp_call" in str(jax.make_jaxpr(partial(loss, impl="custom_jvp", unroll=1))(params, xs))


@pytest.mark.parametrize(
    "cell, kw, message",
    [
        (R.lstm_cell, {}, "it runs the vanilla cell only, got the lstm cell"),
        (R.vanilla_cell, dict(lengths=jnp.array([9, 4, 1])), "takes no lengths"),
        (R.vanilla_cell, dict(reverse=True), "takes no reverse"),
        (R.vanilla_cell, dict(remat="sqrt"), "stores its own residuals, so it takes no remat"),
        (R.vanilla_cell, dict(return_carries=True), "takes no return_carries"),
    ],
)
def test_custom_jvp_refuses_what_it_cannot_run_and_names_impl_scan(cell, kw, message):
    params = R.lstm_init(jax.random.key(0), I, H) if cell is R.lstm_cell else R.vanilla_init(jax.random.key(0), I, H, 6)
    with pytest.raises(ValueError, match=f"impl='custom_jvp' cannot run this call: .*{message}.*use impl='scan'"):
        R.run(cell, params, None, jnp.ones((B, T, I)), impl="custom_jvp", **kw)


@pytest.mark.parametrize("bad", ["fast", "Scan", None, 1])
def test_unknown_impl_is_refused(bad):
    params = R.vanilla_init(jax.random.key(0), I, H, 6)
    with pytest.raises(ValueError, match=re.escape(f"impl must be one of {IMPLS}, got {bad!r}")):
        R.run(R.vanilla_cell, params, None, jnp.ones((B, T, I)), impl=bad)
