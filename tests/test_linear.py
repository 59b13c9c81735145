"""Linear cells: the associative scan equals the sequential one (values and gradients) and a numpy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R
from rnn_jax import linear

B, T, I, H = 3, 7, 4, 5


def _numpy_loop(a_TH, b_TH, h0_H, reverse=False):
    h, hs = np.asarray(h0_H, np.float64), [None] * len(a_TH)
    for t in reversed(range(len(a_TH))) if reverse else range(len(a_TH)):
        h = a_TH[t] * h + b_TH[t]
        hs[t] = h
    return np.stack(hs)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_equals_numpy_loop(reverse):
    k = jax.random.split(jax.random.key(0), 3)
    a = jax.random.uniform(k[0], (T, H), minval=0.2, maxval=1.0)
    b = jax.random.normal(k[1], (T, H))
    h0 = jax.random.normal(k[2], (H,))
    np.testing.assert_allclose(linear.linear_scan(a, b, h0, reverse=reverse), _numpy_loop(a, b, h0, reverse), rtol=1e-5)


def test_mingru_is_its_equation(key):
    p = linear.mingru_init(key, I, H)
    h, x = jnp.linspace(-1, 1, H), jnp.linspace(-2, 2, I)
    z = jax.nn.sigmoid(x @ p.W_z + p.b_z)
    np.testing.assert_allclose(linear.mingru_cell(p, h, x)[0], (1 - z) * h + z * (x @ p.W_h + p.b_h), rtol=1e-6)
    assert set(linear.LINEAR_CELLS) == {"mingru", "diag"}


def _loss(cell, params, carry, xs, **kw):
    final, ys = linear.run_linear(cell, params, carry, xs, **kw)
    return jnp.sum(jnp.sin(ys)) + jnp.sum(final**2)


@pytest.mark.parametrize("name, reverse", [("mingru", False), ("diag", True)])
def test_associative_equals_sequential_values_and_gradients(name, reverse):
    """Two batch dims, lengths (including 0 and T), a non-zero initial carry; forward and reverse."""
    k = jax.random.split(jax.random.key(1), 3)
    cell = linear.LINEAR_CELLS[name]
    params = {"mingru": linear.mingru_init, "diag": linear.diag_init}[name](k[0], I, H)
    xs = jax.random.normal(k[1], (2, B, T, I))
    h0 = jax.random.normal(k[2], (2, B, H))
    lengths = jnp.array([[7, 0, 3], [1, 5, 7]])

    @jax.jit  # one compile for every case below
    def both(params, h0, xs):
        out = {}
        for method in linear.METHODS:
            kw = dict(lengths=lengths, reverse=reverse, method=method)
            out[method] = (
                linear.run_linear(cell, params, h0, xs, **kw),
                jax.value_and_grad(_loss, argnums=(1, 2, 3))(cell, params, h0, xs, **kw),
            )
        return out

    out = both(params, h0, xs)
    close = lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)  # noqa: E731
    jax.tree.map(close, out["sequential"], out["associative"])
    (final, ys), _ = out["associative"]
    np.testing.assert_array_equal(ys[0, 1], 0.0)  # length 0: every output zero
    np.testing.assert_allclose(final[0, 1], h0[0, 1], rtol=1e-6)  # ... and the carry untouched


def test_sequential_is_run_and_time_major_agrees():
    params = linear.diag_init(jax.random.key(3), I, H)
    xs = jax.random.normal(jax.random.key(4), (B, T, I))
    ref = R.run(linear.diag_cell, params, None, xs)
    tm = linear.run_linear(linear.diag_cell, params, None, jnp.swapaxes(xs, 0, 1), time_major=True)
    np.testing.assert_allclose(tm[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(jnp.swapaxes(tm[1], 0, 1), ref[1], rtol=1e-5, atol=1e-6)


def test_bad_input():
    params = linear.mingru_init(jax.random.key(5), I, H)
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match="method must be one of"):
        linear.run_linear(linear.mingru_cell, params, None, xs, method="parallel")
    with pytest.raises(ValueError, match="needs a linear cell"):
        linear.run_linear(R.lstm_cell, R.lstm_init(jax.random.key(6), I, H), None, xs)
    with pytest.raises(ValueError, match="params expect I=4"):
        linear.run_linear(linear.mingru_cell, params, None, jnp.ones((B, T, I + 1)))
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        linear.mingru_init(jax.random.key(7), I, 0)
