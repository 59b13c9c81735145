"""The scan wrapper against a Python loop; options that must not change results; masking; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_jax as R

B, T, I, H, O = 3, 7, 4, 5, 6


def _params(name, key, dtype=jnp.float32):
    if name == "vanilla":
        return R.vanilla_init(key, I, H, O, dtype)
    return {"lstm": R.lstm_init, "gru": R.gru_init}[name](key, I, H, dtype)


def _python_loop(cell, params, carry, xs_BTI, reverse=False):
    """The reference: call the cell once per step, batch by batch, in plain Python."""
    ys = [None] * xs_BTI.shape[1]
    finals = []
    for b in range(xs_BTI.shape[0]):
        c = jax.tree.map(lambda a, b=b: a[b], carry)
        order = range(xs_BTI.shape[1])
        for t in reversed(order) if reverse else order:
            c, y = cell(params, c, xs_BTI[b, t])
            ys[t] = (ys[t] or []) + [y]
        finals.append(c)
    return jax.tree.map(lambda *a: jnp.stack(a), *finals), jnp.stack([jnp.stack(y) for y in ys], axis=1)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["vanilla", "lstm", "gru"])
def test_run_equals_python_loop(name, reverse):
    k = jax.random.split(jax.random.key(0), 3)
    params = _params(name, k[0])
    cell = R.CELLS[name]
    xs = jax.random.normal(k[1], (B, T, I))
    carry = jax.tree.map(lambda z: z + 0.1, R.zeros_carry(cell, params, (B,)))
    final, ys = R.run(cell, params, carry, xs, reverse=reverse)
    final_ref, ys_ref = _python_loop(cell, params, carry, xs, reverse=reverse)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), final, final_ref)


def test_plain_function_cell_runs_unhoisted():
    """Any pure function (params, carry, x) -> (carry, y) works; it must equal the hoisted Cell."""
    params = _params("lstm", jax.random.key(1))
    xs = jax.random.normal(jax.random.key(2), (B, T, I))
    carry = R.zeros_carry(R.lstm_cell, params, (B,))
    plain = lambda p, c, x: R.lstm_cell(p, c, x)  # noqa: E731
    a = R.run(plain, params, carry, xs)
    b = R.run(R.lstm_cell, params, carry, xs)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


def test_time_major_and_batch_ranks_agree():
    params = _params("gru", jax.random.key(3))
    xs = jax.random.normal(jax.random.key(4), (2, B, T, I))  # two batch dims
    h, ys = R.run(R.gru_cell, params, None, xs)
    assert h.shape == (2, B, H) and ys.shape == (2, B, T, H)
    h_tm, ys_tm = R.run(R.gru_cell, params, None, jnp.moveaxis(xs, 2, 0), time_major=True)
    # float32 tolerances: a different batch shape is a different matmul shape (vector-matrix vs
    # matrix-matrix kernels), which rounds differently (measured up to 1.4e-6 relative).
    np.testing.assert_allclose(h_tm, h, rtol=1e-5)
    np.testing.assert_allclose(jnp.moveaxis(ys_tm, 0, 2), ys, rtol=1e-5)
    h1, ys1 = R.run(R.gru_cell, params, None, xs[1, 2])  # no batch dims at all
    np.testing.assert_allclose(h1, h[1, 2], rtol=1e-5)
    np.testing.assert_allclose(ys1, ys[1, 2], rtol=1e-5)


def _loss(cell, params, carry, xs, **kw):
    final, ys = R.run(cell, params, carry, xs, **kw)
    return jnp.sum(ys**2) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vanilla", "lstm"])
def test_unroll_remat_and_jit_do_not_change_results(name):
    k = jax.random.split(jax.random.key(5), 2)
    params = _params(name, k[0])
    cell = R.CELLS[name]
    xs = jax.random.normal(k[1], (B, T, I))
    lengths = jnp.array([7, 2, 5])
    base_val, base_grad = jax.value_and_grad(_loss, argnums=(1, 3))(cell, params, None, xs, lengths=lengths)
    # Every unroll without remat, every remat with an unroll that does not divide T (7), the input
    # projection hoisted and inside the step (sqrt: per chunk): 6 compiles, not 18.
    static = ("unroll", "remat", "hoist")
    for unroll, remat, hoist in ((1, False, True), (2, False, False), (8, False, None), (2, True, None),
                                 (2, "sqrt", True), (2, "sqrt", False)):  # fmt: skip
        f = jax.jit(jax.value_and_grad(_loss, argnums=(1, 3)), static_argnums=0, static_argnames=static)
        val, grad = f(cell, params, None, xs, lengths=lengths, unroll=unroll, remat=remat, hoist=hoist)
        np.testing.assert_allclose(val, base_val, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad, base_grad)


@pytest.mark.slow
def test_sqrt_remat_gradients_equal_plain_in_float64(x64):
    params = _params("vanilla", jax.random.key(6), jnp.float64)
    xs = jax.random.normal(jax.random.key(7), (2, 50, I), jnp.float64)
    grads = [
        jax.grad(_loss, argnums=(1, 3))(R.vanilla_cell, params, None, xs, remat=remat, reverse=rev)
        for rev in (False, True)
        for remat in (False, "sqrt")
    ]
    # atol: the plain forward run takes the vanilla fast path on CPU, whose weight gradient sums the steps
    # in one matmul rather than one by one (float64 rounding of gradients of size ~1).
    for a, b in ((grads[0], grads[1]), (grads[2], grads[3])):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14), a, b)


def test_return_carries_gives_every_step():
    params = _params("lstm", jax.random.key(8))
    xs = jax.random.normal(jax.random.key(9), (B, T, I))
    final, ys, carries = R.run(R.lstm_cell, params, None, xs, return_carries=True)
    assert carries.h.shape == (B, T, H) and carries.c.shape == (B, T, H)
    np.testing.assert_allclose(carries.h, ys, rtol=1e-6)
    np.testing.assert_allclose(carries.c[:, -1], final.c, rtol=1e-6)
    sqrt = R.run(R.lstm_cell, params, None, xs, return_carries=True, remat="sqrt")  # chunked: same values
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sqrt, (final, ys, carries))


@st.composite
def _masking_case(draw):
    batch_shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    steps = draw(st.integers(1, 6))
    lengths = draw(
        st.lists(st.integers(0, steps), min_size=int(np.prod(batch_shape)), max_size=int(np.prod(batch_shape)))
    )
    return (
        batch_shape,
        steps,
        np.array(lengths, np.int32).reshape(batch_shape),
        draw(st.booleans()),
        draw(st.sampled_from(["vanilla", "lstm", "gru"])),
    )


_jit_run = jax.jit(R.run, static_argnums=0, static_argnames="reverse")


@pytest.mark.slow
@settings(max_examples=30)  # every example compiles a new shape; 30 cover batch ranks, both directions, 3 cells
@given(_masking_case())
def test_masking_matches_each_sequence_run_alone(case):
    """Past each length outputs are zero; the final carry is the carry of the unpadded sequence alone,
    computed by calling the cell step by step in Python (forward, or from its last real step back)."""
    batch_shape, steps, lengths, reverse, name = case
    params = _params(name, jax.random.key(10))
    cell = R.CELLS[name]
    xs = np.asarray(jax.random.normal(jax.random.key(11), batch_shape + (steps, I)))
    final, ys = _jit_run(cell, params, None, xs, lengths=jnp.asarray(lengths), reverse=reverse)
    final, ys = jax.tree.map(np.asarray, final), np.asarray(ys)
    for idx in np.ndindex(*batch_shape):
        n = int(lengths[idx])
        np.testing.assert_array_equal(ys[idx][n:], 0.0)
        alone = R.zeros_carry(cell, params)
        order = range(n - 1, -1, -1) if reverse else range(n)
        for t in order:
            alone, y = cell(params, alone, xs[idx][t])
            np.testing.assert_allclose(ys[idx][t], y, rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b, i=idx: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), final, alone)


def test_learnable_initial_carry_gets_the_batch_sum_of_gradients():
    params = _params("vanilla", jax.random.key(12))
    xs = jax.random.normal(jax.random.key(13), (B, T, I))
    h0 = jnp.linspace(-0.5, 0.5, H)

    def loss(h0):
        return _loss(R.vanilla_cell, params, R.broadcast_carry(h0, (B,)), xs)

    def loss_per_example(h0_BH):
        return _loss(R.vanilla_cell, params, h0_BH, xs)

    g = jax.grad(loss)(h0)
    g_each = jax.grad(loss_per_example)(jnp.broadcast_to(h0, (B, H)))
    np.testing.assert_allclose(g, g_each.sum(0), rtol=1e-5)


@pytest.mark.slow
def test_stack_equals_manual_composition_and_dropout_needs_a_key():
    k = jax.random.split(jax.random.key(14), 4)
    layers = [R.lstm_init(k[0], I, H), R.lstm_init(k[1], H, H), R.lstm_init(k[2], H, H)]
    xs = jax.random.normal(k[3], (B, T, I))
    finals, ys = R.run_stack(R.lstm_cell, layers, None, xs)
    h = xs
    for layer, p in enumerate(layers):
        c, h = R.run(R.lstm_cell, p, None, h)
        np.testing.assert_allclose(finals[layer].h, c.h, rtol=1e-6)
    np.testing.assert_allclose(ys, h, rtol=1e-6)

    _, no_key = R.run_stack(R.lstm_cell, layers, None, xs, dropout_rate=0.5)
    np.testing.assert_allclose(no_key, ys, rtol=1e-6)  # no key: evaluation, no dropout
    _, d1 = R.run_stack(R.lstm_cell, layers, None, xs, dropout_rate=0.5, key=jax.random.key(1))
    _, d1b = R.run_stack(R.lstm_cell, layers, None, xs, dropout_rate=0.5, key=jax.random.key(1))
    _, d2 = R.run_stack(R.lstm_cell, layers, None, xs, dropout_rate=0.5, key=jax.random.key(2))
    np.testing.assert_array_equal(d1, d1b)
    assert not np.allclose(d1, ys) and not np.allclose(d1, d2)


def test_bidirectional_backward_direction_respects_lengths():
    k = jax.random.split(jax.random.key(15), 3)
    pf, pb = R.gru_init(k[0], I, H), R.gru_init(k[1], I, H)
    xs = jax.random.normal(k[2], (B, T, I))
    lengths = jnp.array([7, 3, 1])
    (cf, cb), ys = R.bidirectional(R.gru_cell, (pf, pb), None, xs, lengths=lengths)
    assert ys.shape == (B, T, 2 * H)
    for b, n in enumerate(lengths.tolist()):
        hb, ys_b = R.run(R.gru_cell, pb, None, xs[b, :n], reverse=True)
        np.testing.assert_allclose(ys[b, :n, H:], ys_b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cb[b], hb, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def lstm_params():
    return _params("lstm", jax.random.key(16))


def test_error_input_feature_size(lstm_params):
    with pytest.raises(ValueError, match=r"params expect I=4, got inputs of shape \(3, 7, 6\)"):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((B, T, 6)))


def test_error_carry_shape(lstm_params):
    bad = R.LSTMState(jnp.zeros((B, H + 1)), jnp.zeros((B, H + 1)))
    with pytest.raises(ValueError, match=r"carry shape mismatch.*expected \(3, 5\).*got \(3, 6\)"):
        R.run(R.lstm_cell, lstm_params, bad, jnp.ones((B, T, I)))
    with pytest.raises(ValueError, match="carry has the wrong structure"):
        R.run(R.lstm_cell, lstm_params, jnp.zeros((B, H)), jnp.ones((B, T, I)))


@pytest.mark.parametrize(
    "lengths, error, message",
    [
        ([7, 8, 1], ValueError, r"lengths must lie in \[0, T=7\], got values from 1 to 8"),
        ([7, -1, 1], ValueError, r"lengths must lie in \[0, T=7\], got values from -1 to 7"),
        ([7.0, 2.0, 1.0], TypeError, "lengths must be integers, got dtype float32"),
        ([7, 2], ValueError, r"lengths must have the batch shape \(3\), got \(2\)"),
    ],
)
def test_error_lengths(lstm_params, lengths, error, message):
    with pytest.raises(error, match=message):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((B, T, I)), lengths=jnp.array(lengths))


def test_error_mismatched_batches_and_bad_options(lstm_params):
    xs = jnp.ones((B, T, I))
    with pytest.raises(ValueError, match=r"carry shape mismatch.*expected \(3, 5\).*got \(4, 5\)"):
        R.run(R.lstm_cell, lstm_params, R.zeros_carry(R.lstm_cell, lstm_params, (4,)), xs)
    with pytest.raises(ValueError, match="inputs disagree"):
        R.run(lambda p, c, x: (c, x), None, jnp.zeros((B, 1)), (xs, jnp.ones((B + 1, T, I))))
    with pytest.raises(TypeError, match="floating point feature vectors, got dtype int32"):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((B, T, I), jnp.int32))
    with pytest.raises(ValueError, match="time axis and a feature axis"):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((I,)))
    with pytest.raises(ValueError, match="remat must be one of"):
        R.run(R.lstm_cell, lstm_params, None, xs, remat="everything")
    with pytest.raises(ValueError, match="unroll must be a positive integer, got 0"):
        R.run(R.lstm_cell, lstm_params, None, xs, unroll=0)
    with pytest.raises(ValueError, match="needs a Cell"):
        R.run(lambda p, c, x: (c, x), None, None, xs)


def test_error_run_stack_given_one_params_instead_of_a_list(lstm_params):
    with pytest.raises(TypeError, match=r"one params pytree per layer.*got a single LSTMParams; pass \[params\]"):
        R.run_stack(R.lstm_cell, lstm_params, None, jnp.ones((B, T, I)))


def test_error_run_stack_plain_function_layer_needs_a_carry(lstm_params):
    plain = lambda p, c, x: R.lstm_cell(p, c, x)  # noqa: E731
    with pytest.raises(ValueError, match=r"layer 0 of run_stack is a plain function.*pass carries=\[carry_0"):
        R.run_stack(plain, [lstm_params], None, jnp.ones((B, T, I)))


def test_error_cell_that_does_not_return_a_pair():
    def three_outputs(p, h, x):
        return h, x, x

    with pytest.raises(TypeError, match=r"three_outputs must return a pair \(new_carry, y\), got a tuple of 3.*"
                                        r"return \(carry, y\)"):  # fmt: skip
        R.run(three_outputs, None, jnp.zeros((B, H)), jnp.ones((B, T, I)))


def test_error_cell_whose_carry_changes_names_both_structures():
    def grows(p, h, x):
        return (h, h), x

    def resizes(p, h, x):
        return x, x

    both = r"takes float32\[5\] and returns \('float32\[5\]', 'float32\[5\]'\); return a carry with the same"
    with pytest.raises(TypeError, match=r"grows changes its carry.*" + both):
        R.run(grows, None, jnp.zeros((B, H)), jnp.ones((B, T, I)))
    with pytest.raises(TypeError, match=r"resizes changes its carry.*takes float32\[5\] and returns float32\[4\]"):
        R.run(resizes, None, jnp.zeros((B, H)), jnp.ones((B, T, I)))


def test_error_lengths_along_the_time_axis_hints_at_time_major(lstm_params):
    with pytest.raises(ValueError, match=r"shape \(3\), got \(7\); .*time_major=True .*is time_major=False wrong"):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((B, T, I)), lengths=jnp.full((T,), T))
    with pytest.raises(ValueError, match=r"batch shape \(7\), got \(3\); .*is time_major=True wrong"):
        R.run(R.lstm_cell, lstm_params, None, jnp.ones((B, T, I)), lengths=jnp.full((B,), 2), time_major=True)


def test_lengths_above_T_under_jit_act_as_T(lstm_params):
    """Documented: under jit the values cannot be checked; a length above T reads the whole sequence."""
    xs = jax.random.normal(jax.random.key(17), (B, T, I))
    run = jax.jit(lambda n: R.run(R.lstm_cell, lstm_params, None, xs, lengths=n))
    over, exact = run(jnp.array([T + 5, 3, T])), run(jnp.array([T, 3, T]))
    jax.tree.map(np.testing.assert_array_equal, over, exact)


@pytest.mark.slow
def test_pallas_impl_restores_batch_shape_and_layout():
    """run flattens every batch dimension into the kernel's N and puts the outputs back where xs has time."""
    params = _params("vanilla", jax.random.key(18))
    xs = jax.random.normal(jax.random.key(19), (2, B, 5, I))  # two batch dimensions, batch-major
    h0 = jax.random.normal(jax.random.key(20), (2, B, H))
    lengths = jnp.array([[5, 1, 3], [0, 4, 5]])
    for reverse in (False, True):
        want = R.run(R.vanilla_cell, params, h0, xs, lengths=lengths, reverse=reverse, impl="scan")
        got = R.run(R.vanilla_cell, params, h0, xs, lengths=lengths, reverse=reverse, impl="pallas")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_pallas_impl_refuses_what_the_kernel_cannot_run():
    with pytest.raises(ValueError, match=r"impl='pallas' cannot run this call: .*; use impl='scan'"):
        R.run(lambda p, c, x: (c, x), None, jnp.zeros((B, H)), jnp.ones((B, T, I)), impl="pallas")
