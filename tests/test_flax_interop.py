"""flax.nnx modules over rnn_jax: same results as the functional API, params both ways, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rnn_jax as R
from rnn_jax.flax_interop import RNN, RNNCell, from_flax_cell, to_flax_cell

B, T, I, H = 3, 7, 4, 5
LENGTHS = jnp.array([7, 2, 5])


def _xs(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I), np.float32)  # numpy: no eager jax.random compile


def _valid(a):
    """Zero the steps past each sequence's length (where nnx.RNN computes from padding)."""
    return jnp.where((jnp.arange(T)[None, :] < LENGTHS[:, None])[..., None], a, 0)


@nnx.jit(static_argnames=("reverse", "keep_order"))
def _module_run(cell, xs, lengths, reverse=False, keep_order=False):
    return RNN(cell, return_carry=True, reverse=reverse, keep_order=keep_order)(xs, seq_lengths=lengths)


@nnx.jit(static_argnames=("reverse", "keep_order"))
def _nnx_rnn(cell, xs, lengths, reverse=False, keep_order=False):
    return nnx.RNN(cell, return_carry=True, reverse=reverse, keep_order=keep_order)(xs, seq_lengths=lengths)


@jax.jit(static_argnums=0)
def _functional_run(name, params, xs, lengths):
    return R.run(R.CELLS[name], params, None, xs, lengths=lengths)


def _init(name, key):
    if name == "vanilla":
        return R.vanilla_init(key, I, H, 6)
    return {"lstm": R.lstm_init, "gru": R.gru_init}[name](key, I, H)


@pytest.mark.parametrize("name", ["vanilla", "lstm"])  # the GRU: in the two tests below
def test_module_equals_functional_both_directions(name):
    xs = _xs()
    # flax -> functional: a module built by flax, its params read back, run through the functional API.
    module = RNNCell(name, I, H, 6 if name == "vanilla" else None, rngs=nnx.Rngs(0))
    carry_m, ys_m = _module_run(module, xs, LENGTHS)
    carry_f, ys_f = _functional_run(name, module.params, xs, LENGTHS)
    np.testing.assert_array_equal(ys_m, ys_f)
    jax.tree.map(np.testing.assert_array_equal, carry_m, carry_f)
    # functional -> flax: params from the library's init, wrapped in a module.
    params = _init(name, jax.random.key(2))
    wrapped = RNNCell.from_params(name, params)
    jax.tree.map(np.testing.assert_array_equal, wrapped.params, params)
    jax.tree.map(
        np.testing.assert_array_equal, _module_run(wrapped, xs, LENGTHS), _functional_run(name, params, xs, LENGTHS)
    )
    # The module also follows flax's cell protocol: flax's own nnx.RNN runs it to the same outputs.
    np.testing.assert_allclose(_valid(_nnx_rnn(module, xs, LENGTHS)[1]), ys_f, atol=1e-6)


def test_reverse_and_keep_order_follow_nnx_rnn():
    module = RNNCell("gru", I, H, rngs=nnx.Rngs(3))
    xs = _xs(4)
    for keep_order in (False, True):
        _, ours = _module_run(module, xs, LENGTHS, reverse=True, keep_order=keep_order)
        _, theirs = _nnx_rnn(module, xs, LENGTHS, reverse=True, keep_order=keep_order)
        np.testing.assert_allclose(_valid(ours), _valid(theirs), atol=1e-6)
        np.testing.assert_array_equal(ours, _valid(ours))  # past each length: exactly zero


@pytest.mark.parametrize("kind", ["simple", "lstm", "gru"])
def test_flax_cells_convert_both_ways(kind):
    make = {"simple": nnx.SimpleCell, "lstm": nnx.LSTMCell, "gru": nnx.GRUCell}[kind]
    flax_cell = make(I, H, rngs=nnx.Rngs(5))
    xs = _xs(6)
    ours = from_flax_cell(flax_cell)
    ys_ours, ys_flax = _module_run(ours, xs, LENGTHS)[1], _nnx_rnn(flax_cell, xs, LENGTHS)[1]
    np.testing.assert_allclose(ys_ours, _valid(ys_flax), rtol=1e-5, atol=1e-6)
    back = from_flax_cell(to_flax_cell(ours))
    jax.tree.map(np.testing.assert_array_equal, back.params, ours.params)


def test_conversions_refuse_what_would_change_the_function():
    with pytest.raises(ValueError, match="b_hn"):
        to_flax_cell(RNNCell.from_params("gru", R.gru_init(jax.random.key(0), I, H)._replace(b_hn=jnp.ones(H))))
    with pytest.raises(ValueError, match="output head"):
        to_flax_cell(RNNCell("vanilla", I, H, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="residual"):
        from_flax_cell(nnx.SimpleCell(I, H, residual=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="unknown cell"):
        RNNCell("elman", I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="out_features"):
        RNNCell("lstm", I, H, 6, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------------
# A Flax model built from the modules trains, and step for step matches its functional twin.
# ---------------------------------------------------------------------------------------------------

TEXT = "hello hello"
VOCAB = sorted(set(TEXT))
V = len(VOCAB)


class CharLSTM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.rnn = RNN(RNNCell("lstm", V, H, rngs=rngs))
        self.head = nnx.Linear(H, V, rngs=rngs)

    def __call__(self, xs_BTV):
        return self.head(self.rnn(xs_BTV))


def _functional_logits(params, xs_BTV):
    cell_params, (kernel, bias) = params
    _, hs = R.run(R.lstm_cell, cell_params, None, xs_BTV)
    return jax.vmap(jax.vmap(lambda h: h @ kernel + bias))(hs)


def _xent(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def test_flax_model_trains_and_matches_functional_training():
    ids = jnp.array([[VOCAB.index(c) for c in TEXT]])
    xs, targets = jax.nn.one_hot(ids[:, :-1], V), ids[:, 1:]
    model = CharLSTM(nnx.Rngs(7))
    params = (model.rnn.cell.params, (model.head.kernel.get_value(), model.head.bias.get_value()))
    module_logits, functional_logits = nnx.jit(lambda m: m(xs)), jax.jit(_functional_logits)
    np.testing.assert_array_equal(module_logits(model), functional_logits(params, xs))

    tx = optax.adam(0.05)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def flax_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: _xent(m(xs), targets))(model)
        optimizer.update(model, grads)
        return loss

    @jax.jit
    def functional_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: _xent(_functional_logits(p, xs), targets))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    flax_losses, functional_losses = [], []
    for _ in range(8):
        flax_losses.append(float(flax_step(model, optimizer)))
        params, opt_state, loss = functional_step(params, opt_state)
        functional_losses.append(float(loss))
    assert flax_losses[-1] < 0.85 * flax_losses[0], flax_losses  # it learns (0.75 after 8 steps)
    np.testing.assert_allclose(flax_losses, functional_losses, rtol=1e-5)
    trained = (model.rnn.cell.params, (model.head.kernel.get_value(), model.head.bias.get_value()))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), trained, params)
    # And back: the functionally trained params, loaded into a fresh module, give its exact outputs.
    fresh = CharLSTM(nnx.Rngs(8))
    fresh.rnn.cell = RNNCell.from_params("lstm", params[0])
    fresh.head.kernel.set_value(params[1][0])
    fresh.head.bias.set_value(params[1][1])
    np.testing.assert_array_equal(module_logits(fresh), functional_logits(params, xs))
