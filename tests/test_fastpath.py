"""The default (fast) path against the plain one: same values and gradients; the unroll heuristic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R
from rnn_jax import bench
from rnn_jax.scan import CPU_SMALL_STATE, auto_hoist, auto_saved, auto_unroll

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


@pytest.mark.parametrize("name", ["vanilla", "lstm"])
def test_bench_variants_equal_the_library(name):
    """Every JAX variant the harness times computes the same loss and gradient as the default path."""
    s = bench.Shape(B, 5, I, H)
    key = jax.random.key(1)
    xs = jax.random.normal(key, (B, 5, I))
    ref_loss, ref_params = bench._run_impl(name, s, jnp.float32, key)
    ref = jax.jit(jax.value_and_grad(ref_loss))(ref_params, xs)
    for impl in ("scan inside", "scan hoisted", "custom_vjp", "python loop"):
        loss, params = bench.JAX_IMPLS[impl](name, s, jnp.float32, key)
        val, grad = jax.jit(jax.value_and_grad(loss))(params, xs)
        np.testing.assert_allclose(val, ref[0], rtol=1e-5, err_msg=impl)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref[1])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=impl)


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
