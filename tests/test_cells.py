"""Cells against independent references: hand-written float64 BPTT, numpy loops, flax.linen, finite differences."""

import pydoc

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import rnn_jax as R
from tests import reference as ref

B, T, I, H, O = 3, 7, 4, 5, 6  # odd, distinct sizes so a wrong transpose cannot hide


def _vanilla_loss(params, h0, xs, targets):
    """The lecture's loss: softmax cross-entropy of y_t against the target, summed over every step."""
    _, ys = R.run(R.vanilla_cell, params, h0, xs)
    logp = jax.nn.log_softmax(ys)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).sum()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vanilla_bptt_matches_handwritten_numpy(x64, jit):
    k = jax.random.split(jax.random.key(42), 4)
    params = R.vanilla_init(k[0], I, H, O, dtype=jnp.float64)
    # Non-zero biases so that their gradients are not trivially checked against zero-input paths.
    params = params._replace(b_h=jax.random.normal(k[3], (H,), jnp.float64) * 0.1, b_y=jnp.arange(O) * 0.05)
    h0 = jax.random.normal(k[1], (B, H), jnp.float64) * 0.5
    xs = jax.random.normal(k[2], (B, T, I), jnp.float64)
    targets = jax.random.randint(k[3], (B, T), 0, O)

    grad_fn = jax.value_and_grad(_vanilla_loss, argnums=(0, 1, 2))
    if jit:
        grad_fn = jax.jit(grad_fn)
    loss, (g_params, g_h0, g_xs) = grad_fn(params, h0, xs, targets)

    ref_loss, ref_grads = ref.vanilla_forward_backward(params._asdict(), h0, xs, np.asarray(targets))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for name, g in g_params._asdict().items():
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(g_h0, ref_grads["h0"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_xs, ref_grads["xs"], rtol=1e-9, atol=1e-12)


def test_vanilla_cell_is_the_lecture_equation(key):
    params = R.vanilla_init(key, I, H, O)
    h, x = jnp.linspace(-1, 1, H), jnp.linspace(-2, 2, I)
    h_new, y = R.vanilla_cell(params, h, x)
    np.testing.assert_allclose(h_new, np.tanh(params.W_hh.T @ h + params.W_xh.T @ x + params.b_h), rtol=1e-6)
    np.testing.assert_allclose(y, params.W_hy.T @ h_new + params.b_y, rtol=1e-5, atol=1e-6)


def test_lstm_and_gru_match_numpy_loops(x64):
    k = jax.random.split(jax.random.key(1), 4)
    xs = jax.random.normal(k[0], (B, T, I), jnp.float64)
    h0 = jax.random.normal(k[1], (B, H), jnp.float64)
    c0 = jax.random.normal(k[2], (B, H), jnp.float64)

    lp = R.lstm_init(k[3], I, H, dtype=jnp.float64)
    carry, ys = R.run(R.lstm_cell, lp, R.LSTMState(h0, c0), xs)
    h_ref, c_ref, ys_ref = ref.lstm_loop(lp, h0, c0, np.asarray(xs))
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12)
    np.testing.assert_allclose(carry.h, h_ref, rtol=1e-12)
    np.testing.assert_allclose(carry.c, c_ref, rtol=1e-12)

    gp = R.gru_init(k[3], I, H, dtype=jnp.float64)
    gp = gp._replace(b=jnp.linspace(-0.3, 0.3, 3 * H), b_hn=jnp.linspace(0.2, -0.2, H))
    h, ys = R.run(R.gru_cell, gp, h0, xs)
    h_ref, ys_ref = ref.gru_loop(gp, h0, np.asarray(xs))
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12)
    np.testing.assert_allclose(h, h_ref, rtol=1e-12)


@pytest.mark.parametrize("name", ["lstm", "gru", "vanilla"])
def test_check_grads_through_time(x64, name):
    k = jax.random.split(jax.random.key(3), 3)
    params = R.CELLS[name].init(k[0], I, H, dtype=jnp.float64)
    xs = jax.random.normal(k[1], (B, T, I), jnp.float64)
    carry = R.zeros_carry(R.CELLS[name], params, (B,))
    carry = jax.tree.map(lambda c: c + 0.3, carry)

    def f(params, carry, xs):
        return R.run(R.CELLS[name], params, carry, xs)

    check_grads(f, (params, carry, xs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def _flax_lstm_params(p: R.LSTMParams):
    """Map our fused [I, 4H] / [H, 4H] layout (gates i, f, g, o) to flax's per-gate Dense layers.

    flax.linen.LSTMCell: input kernels ``ii, if, ig, io`` without bias, hidden kernels ``hi, hf, hg, ho``
    with bias; carry is ``(c, h)``.
    """
    Wx, Wh, b = (jnp.split(a, 4, axis=-1) for a in p)
    out = {}
    for gate, wx, wh, bb in zip("ifgo", Wx, Wh, b):
        out["i" + gate] = {"kernel": wx}
        out["h" + gate] = {"kernel": wh, "bias": bb}
    return {"params": {"cell": out}}  # nn.RNN names its cell "cell"


def _flax_gru_params(p: R.GRUParams):
    """Map our fused layout (gates r, z, n) to flax.linen.GRUCell.

    flax: input Dense ``ir, iz, in`` with bias, hidden Dense ``hr, hz`` without bias and ``hn`` with
    bias (inside the reset product), which is exactly our ``b`` and ``b_hn``.
    """
    Wx, Wh, b = (jnp.split(a, 3, axis=-1) for a in (p.W_x, p.W_h, p.b))
    out = {}
    for gate, wx, wh, bb in zip("rzn", Wx, Wh, b):
        out["i" + gate] = {"kernel": wx, "bias": bb}
        out["h" + gate] = {"kernel": wh}
    out["hn"]["bias"] = p.b_hn
    return {"params": {"cell": out}}  # nn.RNN names its cell "cell"


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_lstm_and_gru_equal_flax_linen_with_same_weights(jit):
    k = jax.random.split(jax.random.key(5), 5)
    xs = jax.random.normal(k[0], (B, T, I))
    wrap = jax.jit if jit else (lambda f: f)

    lp = R.lstm_init(k[1], I, H)
    lp = lp._replace(b=jax.random.normal(k[2], (4 * H,)) * 0.1)
    flax_lstm = nn.RNN(nn.LSTMCell(features=H), return_carry=True)
    (c_f, h_f), ys_f = wrap(flax_lstm.apply)(_flax_lstm_params(lp), xs)
    carry, ys = wrap(lambda p, x: R.run(R.lstm_cell, p, None, x))(lp, xs)
    np.testing.assert_allclose(ys, ys_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, h_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.c, c_f, rtol=1e-5, atol=1e-6)

    gp = R.gru_init(k[3], I, H)
    gp = gp._replace(b=jax.random.normal(k[4], (3 * H,)) * 0.1, b_hn=jnp.linspace(-0.2, 0.2, H))
    flax_gru = nn.RNN(nn.GRUCell(features=H), return_carry=True)
    h_f, ys_f = wrap(flax_gru.apply)(_flax_gru_params(gp), xs)
    h, ys = wrap(lambda p, x: R.run(R.gru_cell, p, None, x))(gp, xs)
    np.testing.assert_allclose(ys, ys_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, h_f, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru"])
def test_dtype_is_kept(name, dtype, key):
    params = R.CELLS[name].init(key, I, H, dtype=dtype)
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    carry, ys = R.run(R.CELLS[name], params, None, jnp.ones((B, T, I), dtype))
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(carry))
    assert ys.dtype == dtype
    assert ys.shape == (B, T, H)


def test_initialisers(key):
    lp = R.lstm_init(key, I, H)
    np.testing.assert_array_equal(lp.b[H : 2 * H], 1.0)  # forget gate starts open
    np.testing.assert_array_equal(lp.b[:H], 0.0)
    for block in jnp.split(lp.W_h, 4, axis=1):  # each recurrent block is orthogonal
        np.testing.assert_allclose(block.T @ block, jnp.eye(H), atol=1e-5)
    vp = R.vanilla_init(key, I, H, O)
    np.testing.assert_allclose(vp.W_hh.T @ vp.W_hh, jnp.eye(H), atol=1e-5)
    assert vp.W_xh.shape == (I, H) and vp.W_hy.shape == (H, O)
    gp = R.gru_init(key, I, H)
    assert gp.W_x.shape == (I, 3 * H) and gp.W_h.shape == (H, 3 * H) and gp.b_hn.shape == (H,)


@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru"])
def test_cell_init_is_the_named_init(name, key):
    """``cell.init`` draws what the named init draws from the same key; the vanilla head maps H -> H."""
    named = {
        "vanilla": lambda k, i, h, dtype: R.vanilla_init(k, i, h, h, dtype),
        "lstm": R.lstm_init,
        "gru": R.gru_init,
    }[name]
    for dtype in (jnp.float32, jnp.bfloat16):
        got, want = R.CELLS[name].init(key, I, H, dtype), named(key, I, H, dtype=dtype)
        assert type(got) is type(want)
        jax.tree.map(np.testing.assert_array_equal, got, want)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(R.CELLS[name].init(key, I, H)))


def test_user_cell_has_no_init_by_default():
    cell = R.Cell(
        "mine",
        project=lambda p, x: x,
        step=lambda p, h, u: (h + u, h + u),
        readout=lambda p, z: z,
        init_carry=lambda p: jnp.zeros(I),
        input_size=lambda p: I,
    )
    assert cell.init is None


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_init_rejects_bad_sizes(key, bad):
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        R.lstm_init(key, I, bad)


@pytest.mark.parametrize(
    ("cell", "equation"),
    [
        (R.vanilla_cell, "h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)"),
        (R.lstm_cell, "c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)"),
        (R.gru_cell, "h_t = (1 - z) * n + z * h_{t-1}"),
    ],
)
def test_help_of_each_cell_shows_its_equations(cell, equation):
    text = pydoc.render_doc(cell, renderer=pydoc.plaintext)
    assert equation in text and f"<Cell {cell.name!r}>" in text
    assert "class Cell" not in text  # not the generic class's page
    others = {c.doc for c in R.CELLS.values()} - {cell.doc}
    assert not any(doc.splitlines()[0] in text for doc in others)
    # A cell built without equations falls back to the Cell class's documentation.
    bare = R.Cell("mine", cell.project, cell.step, cell.readout, cell.init_carry, cell.input_size)
    assert "class Cell" in pydoc.render_doc(bare, renderer=pydoc.plaintext)


@pytest.mark.parametrize(
    ("cell", "params", "message"),
    [
        ("gru", R.LSTMParams, "gru_cell expects GRUParams (W_x, W_h, b, b_hn), got LSTMParams (W_x, W_h, b); "),
        ("lstm", R.GRUParams, "lstm_cell expects LSTMParams (W_x, W_h, b), got GRUParams (W_x, W_h, b, b_hn); "),
        ("vanilla", dict, "vanilla_cell expects VanillaParams (W_xh, W_hh, b_h, W_hy, b_y), got dict; "),
    ],
)
def test_params_of_another_cell_are_one_line_naming_both(cell, params, message, key):
    """Checked once where run validates its inputs, before any step (was: 'array split does not result in an
    equal division' from inside the GRU step)."""
    wrong = {"gru": R.lstm_init, "lstm": R.gru_init}.get(cell, lambda *a: {"W": jnp.ones((I, H))})(key, I, H)
    assert isinstance(wrong, params)
    with pytest.raises(R.UserError) as err:
        R.run(R.CELLS[cell], wrong, None, jnp.ones((B, T, I)))
    assert str(err.value) == message + f"make them with {cell}_init"
