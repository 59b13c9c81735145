"""flax.nnx modules over rnn_jax: same results as the functional API, params both ways, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rnn_jax as R
from rnn_jax import flax_interop
from rnn_jax.errors import UserError
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
    if name == "vanilla":  # a head to 6 outputs, not the layer's H -> H
        return R.vanilla_init(key, I, H, 6)
    return R.CELLS[name].init(key, I, H)


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
# RNN as a drop-in for nnx.RNN: any cell with flax's protocol, every option, rngs, promotion
# ---------------------------------------------------------------------------------------------------

FLAX_CELLS = {"LSTMCell": nnx.LSTMCell, "OptimizedLSTMCell": nnx.OptimizedLSTMCell, "GRUCell": nnx.GRUCell}
FLAX_CELLS["SimpleCell"] = nnx.SimpleCell


def _close(ours, theirs, atol=1e-7):
    """float32 equality to rounding, leaf by leaf (the issue's bar: rtol 1e-6)."""
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=atol), ours, theirs)


def _per_example(cell, xs, lengths, reverse=False, keep_order=False, unroll=None):  # unroll: speed only
    """The reference with padding: the cell stepped in a Python loop over each example's own steps (read
    backwards within its length for ``reverse``), outputs where ``nnx.RNN`` puts them, zeros past the length."""
    carries, ys = [], []
    for b, n in enumerate(np.asarray(lengths).tolist()):
        carry = cell.initialize_carry((1, xs.shape[-1]), nnx.Rngs(0))
        out = [None] * n
        for j, t in enumerate(range(n - 1, -1, -1) if reverse else range(n)):
            carry, y = cell(carry, xs[b : b + 1, t])
            out[t if keep_order or not reverse else j] = y  # nnx.RNN returns reversed runs in reading order
        carries.append(carry)
        ys.append(jnp.stack(out + [jnp.zeros_like(out[0])] * (xs.shape[1] - n), axis=1))
    return jax.tree.map(lambda *a: jnp.concatenate(a), *carries), jnp.concatenate(ys)


class MinimalCell(nnx.RNNCellBase):
    """A user's cell as in flax's docs: ``h' = relu(W [h, x] + b)``."""

    def __init__(self, in_features, hidden_features, rngs):
        self.linear = nnx.Linear(hidden_features + in_features, hidden_features, rngs=rngs)
        self.hidden_features = hidden_features

    def __call__(self, carry, x):
        h = jax.nn.relu(self.linear(jnp.concatenate([carry, x], axis=-1)))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1] + (self.hidden_features,))

    @property
    def num_feature_axes(self):
        return 1


def _loss(rnn, xs, lengths):
    return _loss_of(rnn(xs, seq_lengths=lengths, return_carry=True))


def _loss_of(carry_and_ys):
    carry, ys = carry_and_ys
    return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(FLAX_CELLS))
def test_flax_cells_run_fused_as_under_nnx_rnn(kind, monkeypatch):
    cell, xs = FLAX_CELLS[kind](I, H, rngs=nnx.Rngs(0)), _xs(2)
    fused = []  # flax's own cells run as the library's fused cells, converted on the fly
    monkeypatch.setattr(flax_interop, "from_flax_cell", lambda c: fused.append(c) or from_flax_cell(c))
    _close(RNN(cell, return_carry=True)(xs), nnx.RNN(cell, return_carry=True)(xs), atol=1e-6)
    assert fused == [cell]
    # With padding: each example equals nnx.RNN on that example alone; past its length, zeros.
    ours = RNN(cell, return_carry=True)(xs, seq_lengths=LENGTHS)
    _close(ours, _per_example(cell, xs, LENGTHS), atol=1e-6)
    # The gradients reach flax's params through the conversion, as nnx.RNN's do.
    full = jnp.full((B,), T)
    grads = [nnx.grad(_loss)(rnn, xs, full)["cell"] for rnn in (RNN(cell), nnx.RNN(cell))]
    # A weight gradient sums B*T products in another order: its rounding follows its largest entry (up to ~10).
    _close(grads[0], grads[1], atol=1e-6 * max(1.0, *(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads[1]))))


OPTIONS = [
    dict(reverse=True),
    dict(reverse=True, keep_order=True),
    dict(time_major=True),
    dict(unroll=3),
    dict(remat="step"),
    dict(remat="sqrt", reverse=True),
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("kind", ["GRUCell", "MinimalCell"])  # fused, and called per example
def test_options_follow_nnx_rnn(options, kind):
    cell, xs = {"GRUCell": nnx.GRUCell, "MinimalCell": MinimalCell}[kind](I, H, rngs=nnx.Rngs(1)), _xs(3)
    ours_options = options
    flax_options = {k: v for k, v in options.items() if k != "remat"}
    if options.get("time_major"):
        xs = np.swapaxes(xs, 0, 1)
    ours = RNN(cell, return_carry=True, **ours_options)(xs)
    _close(ours, nnx.RNN(cell, return_carry=True, **flax_options)(xs), atol=1e-6)
    if not options.get("time_major"):
        ours = RNN(cell, return_carry=True, **ours_options)(xs, seq_lengths=LENGTHS)
        _close(ours, _per_example(cell, xs, LENGTHS, **flax_options), atol=1e-6)


def test_call_time_arguments_and_initial_carry_follow_nnx_rnn():
    cell, xs = nnx.OptimizedLSTMCell(I, H, rngs=nnx.Rngs(2)), _xs(4)
    h0 = tuple(np.random.default_rng(5).standard_normal((2, B, H), np.float32))  # flax's (c, h)
    ours, theirs = RNN(cell), nnx.RNN(cell)
    call = dict(initial_carry=h0, return_carry=True, reverse=True, keep_order=True)
    _close(ours(xs, **call), theirs(xs, **call), atol=1e-6)
    xs_T = np.swapaxes(xs, 0, 1)
    _close(ours(xs_T, time_major=True), theirs(xs_T, time_major=True), atol=1e-6)
    assert not isinstance(ours(xs), tuple) and len(RNN(cell, return_carry=True)(xs)) == 2


def test_bidirectional_takes_our_rnn():
    def layer(make):
        cells = [nnx.GRUCell(I, H, rngs=nnx.Rngs(seed)) for seed in (3, 4)]
        return nnx.Bidirectional(make(cells[0]), make(cells[1]), return_carry=True)

    _close(layer(RNN)(_xs(5)), layer(nnx.RNN)(_xs(5)), atol=1e-6)


class TwoAxisCell(nnx.RNNCellBase):
    """A cell whose inputs have two feature axes ``[..., 2, I]`` (like a convolutional cell's)."""

    def __init__(self, rngs):
        self.dense = nnx.Linear(2 * I + H, H, rngs=rngs)

    def __call__(self, carry, x):
        x = x.reshape(x.shape[:-2] + (2 * I,))
        h = jnp.tanh(self.dense(jnp.concatenate([x, carry], axis=-1)))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-2] + (H,))

    @property
    def num_feature_axes(self):
        return 2


def test_cells_with_several_feature_axes():
    cell = TwoAxisCell(nnx.Rngs(6))
    xs = np.random.default_rng(7).standard_normal((B, T, 2, I), np.float32)
    _close(RNN(cell, return_carry=True)(xs), nnx.RNN(cell, return_carry=True)(xs))


def test_user_cell_with_lengths_and_sqrt_remat_and_its_gradients():
    cell, xs = MinimalCell(I, H, rngs=nnx.Rngs(8)), _xs(9)
    ours = RNN(cell, remat="sqrt")
    _close(ours(xs, seq_lengths=LENGTHS, return_carry=True), _per_example(cell, xs, LENGTHS))
    # No padding: the gradients (params and inputs) are nnx.RNN's.
    full = jnp.full((B,), T)
    grads = [nnx.grad(_loss, argnums=(0, 1))(rnn, xs, full) for rnn in (ours, nnx.RNN(cell))]
    _close(grads[0][0]["cell"], grads[1][0]["cell"])
    _close(grads[0][1], grads[1][1])
    # With padding: the gradients of the per-example Python loop.
    ours_grad = nnx.grad(_loss)(ours, xs, LENGTHS)["cell"]
    reference = nnx.grad(lambda c: _loss_of(_per_example(c, xs, LENGTHS)))(cell)
    _close(ours_grad, reference, atol=1e-6)


def test_jit_and_eager_agree():
    cell, xs = MinimalCell(I, H, rngs=nnx.Rngs(10)), _xs(11)
    model = RNN(cell, return_carry=True)
    jitted = nnx.jit(lambda m, x, n: m(x, seq_lengths=n))(model, xs, LENGTHS)
    _close(jitted, model(xs, seq_lengths=LENGTHS))


def test_integer_features_are_promoted_as_flax_promotes_them():
    ints = jnp.arange(B * T * I).reshape(B, T, I) % 5  # flax's tests feed jnp.arange values
    cell = nnx.LSTMCell(I, H, rngs=nnx.Rngs(12))
    ours, theirs = RNN(cell)(ints), nnx.RNN(cell)(ints)
    assert ours.dtype == theirs.dtype == jnp.float32
    _close(ours, theirs, atol=1e-6)
    fused = RNNCell("gru", I, H, rngs=nnx.Rngs(13))
    ys = RNN(fused)(ints, seq_lengths=LENGTHS)
    assert ys.dtype == jnp.float32
    np.testing.assert_array_equal(ys, RNN(fused)(ints.astype(jnp.float32), seq_lengths=LENGTHS))
    _close(nnx.RNN(fused)(ints), RNN(fused)(ints))  # the cell promotes under flax's nnx.RNN too
    with pytest.raises(TypeError, match="floating point"):  # the functional run keeps refusing them
        R.run(fused.cell, fused.params, None, ints)


class MaskCell(nnx.RNNCellBase):
    """Outputs its dropout mask (scaled by 2) at every step: ``y_t = dropout(1)``."""

    def __init__(self, rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, carry, x):
        return carry, self.drop(jnp.ones(x.shape[:-1] + (16,)))

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros(input_shape[:-1])

    @property
    def num_feature_axes(self):
        return 1


def test_broadcast_rngs_keep_one_dropout_mask_per_sequence_and_split_rngs_draw_every_step():
    xs = _xs(14)
    split = RNN(MaskCell(nnx.Rngs(dropout=0)))(xs)  # [B, T, 16] of 0 and 2
    assert set(np.unique(split).tolist()) == {0.0, 2.0}
    assert all(not np.array_equal(split[b, 0], split[b, t]) for b in range(B) for t in range(1, T))
    cell = MaskCell(nnx.Rngs(dropout=0))
    broadcast = RNN(cell, broadcast_rngs="dropout")
    masks = broadcast(xs)
    np.testing.assert_array_equal(masks, np.broadcast_to(masks[:, :1], masks.shape))  # the same at every step
    assert not np.array_equal(masks[0, 0], masks[1, 0])  # each example its own
    assert not np.array_equal(broadcast(xs), masks)  # and each call new ones
    flax_masks = nnx.RNN(MaskCell(nnx.Rngs(dropout=0)), broadcast_rngs="dropout")(xs)  # flax: the same behaviour
    np.testing.assert_array_equal(flax_masks, np.broadcast_to(flax_masks[:, :1], flax_masks.shape))


class CountingCell(MinimalCell):
    def __init__(self, rngs):
        super().__init__(I, H, rngs)
        self.steps = nnx.Variable(jnp.zeros((), jnp.int32))

    def __call__(self, carry, x):
        self.steps.set_value(self.steps.get_value() + 1)
        return super().__call__(carry, x)


class RecordingCell(MinimalCell):
    def __call__(self, carry, x):
        self.last_input = nnx.Intermediate(x)  # a new variable, as sow makes
        return super().__call__(carry, x)


def test_refusals_are_clear():
    with pytest.raises(TypeError, match="cell protocol"):
        RNN(lambda carry, x: (carry, x))
    with pytest.raises(UserError, match="read-only"):
        RNN(CountingCell(nnx.Rngs(0)))(_xs())
    with pytest.raises(UserError, match="read-only"):
        RNN(RecordingCell(I, H, nnx.Rngs(0)))(_xs())
    with pytest.raises(UserError, match="state scanned along time"):
        RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)), state_axes={nnx.Param: 0})
    with pytest.raises(UserError, match="no time axis"):
        RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))(jnp.zeros((I,)))
    with pytest.raises(UserError, match="remat"):
        RNN(RNNCell("gru", I, H, rngs=nnx.Rngs(0)), remat="log")
    with pytest.raises(UserError, match="impl"):
        RNN(RNNCell("gru", I, H, rngs=nnx.Rngs(0)), impl="fast")


# ---------------------------------------------------------------------------------------------------
# RNNCell takes flax's constructor arguments
# ---------------------------------------------------------------------------------------------------


def test_rnn_cell_takes_flax_initializers_dtypes_and_carry_init():
    ones, zeros = nnx.initializers.ones_init(), nnx.initializers.zeros_init()
    cell = RNNCell(
        "gru", in_features=I, hidden_features=H, kernel_init=ones, recurrent_kernel_init=zeros,
        bias_init=ones, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0),
    )  # fmt: skip
    p = cell.params
    assert all(a.dtype == jnp.bfloat16 for a in p)
    assert bool(jnp.all(p.W_x == 1)) and bool(jnp.all(p.W_h == 0)) and bool(jnp.all(p.b == 1))
    assert bool(jnp.all(p.b_hn == 1)) and (cell.in_features, cell.hidden_features) == (I, H)
    assert RNN(cell)(_xs()).dtype == jnp.float32  # float32 inputs with bfloat16 params: promoted, as flax does
    assert RNN(RNNCell("lstm", I, H, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))(_xs()).dtype == jnp.bfloat16
    default = RNNCell("lstm", I, H, rngs=nnx.Rngs(0))  # no initializer given: the library's init
    jax.tree.map(np.testing.assert_array_equal, default.params, R.lstm_init(nnx.Rngs(0).params(), I, H))
    carry = default.initialize_carry((B, I), nnx.Rngs(carry=1))
    assert carry.h.shape == (B, H) and not bool(jnp.any(carry.c))
    drawn = default.initialize_carry((B, I), nnx.Rngs(carry=1), carry_init=nnx.initializers.normal())
    assert drawn.h.shape == (B, H) and bool(jnp.all(drawn.h != 0))


@pytest.mark.parametrize("kind", ["lstm", "gru", "vanilla"])
def test_rnn_cell_gate_and_activation_functions_equal_flax_cells(kind):
    fns = (
        dict(activation_fn=jax.nn.relu)
        if kind == "vanilla"
        else dict(gate_fn=jax.nn.hard_sigmoid, activation_fn=jax.nn.relu)
    )
    if kind == "vanilla":  # flax's SimpleCell has no head: the identity one
        base = R.vanilla_init(jax.random.key(0), I, H, H)
        ours = RNNCell.from_params("vanilla", base._replace(W_hy=jnp.eye(H), b_y=jnp.zeros(H)), **fns)
    else:
        ours = RNNCell(kind, I, H, rngs=nnx.Rngs(0), **fns)
    theirs = to_flax_cell(RNNCell.from_params(ours.cell.name, ours.params))
    for name, fn in fns.items():
        setattr(theirs, name, fn)
    xs = _xs(15)
    ys = RNN(ours)(xs)
    _close(ys, nnx.RNN(theirs)(xs), atol=1e-6)  # unit-scale outputs; the fused cell sums in another order
    assert not np.allclose(ys, RNN(RNNCell.from_params(ours.cell.name, ours.params))(xs))  # the functions matter
    with pytest.raises(UserError, match="takes activation_fn"):
        RNNCell("vanilla", I, H, gate_fn=jax.nn.hard_sigmoid, rngs=nnx.Rngs(0))


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_times_our_rnn_against_nnx_rnn_on_flax_optimized_lstm():
    from rnn_jax.tools import bench
    from rnn_jax.tools.bench.impls import jax_impl

    impls = ["flax_interop.RNN OptimizedLSTMCell", "nnx.RNN OptimizedLSTMCell"]
    s, key = bench.Shape(2, 3, 4, 5), jax.random.key(0)
    tiny = dict(modes=("fwd_bwd",), warmup=0, reps=1, rounds=1)
    records = bench.measure_layers([s], cells=("lstm", "gru"), impls=impls, **tiny)
    assert [(r["cell"], r["impl"]) for r in records] == [("lstm", impl) for impl in impls]  # the flax cell is an LSTM
    # Both time the same function: one loss and gradient on the same weights.
    xs = jax.random.normal(key, (s.B, s.T, s.I))
    (ours, g_ours), (theirs, g_theirs) = (
        jax.value_and_grad(loss)(params, xs)
        for loss, params in (jax_impl(i)("lstm", s, jnp.float32, key) for i in impls)
    )
    _close((ours, g_ours["cell"]), (theirs, g_theirs["cell"]), atol=1e-6)


@pytest.mark.parametrize("cell_kind", ["fused", "flax"])
def test_seq_lengths_as_a_list_like_nnx_rnn(cell_kind):
    """A drop-in takes what nnx.RNN takes: seq_lengths as a Python list (nnx.RNN itself takes one only without
    return_carry and reverse; ours takes it everywhere)."""
    cell = RNNCell("gru", I, H, rngs=nnx.Rngs(14)) if cell_kind == "fused" else nnx.GRUCell(I, H, rngs=nnx.Rngs(14))
    xs, as_list = _xs(15), [int(n) for n in LENGTHS]
    theirs = nnx.RNN(cell)(xs, seq_lengths=as_list)
    _close(_valid(RNN(cell)(xs, seq_lengths=as_list)), _valid(theirs), atol=1e-6)
    for reverse in (False, True):
        ours = RNN(cell, return_carry=True, reverse=reverse)
        _close(ours(xs, seq_lengths=as_list), ours(xs, seq_lengths=LENGTHS))
