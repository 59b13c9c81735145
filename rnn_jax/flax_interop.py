"""``flax.nnx`` modules over this library's cells and its one scan, with params convertible both ways.

- :class:`RNN` is a drop-in for ``nnx.RNN``: the same arguments, defaults and results where flax's are
  defined, computed by :func:`rnn_jax.run`. It runs any cell with flax's cell protocol
  (``cell(carry, x) -> (carry, y)``, ``initialize_carry``, ``num_feature_axes``): flax's own
  (``nnx.LSTMCell``, ``OptimizedLSTMCell``, ``GRUCell``, ``SimpleCell``), a user's, or an
  :class:`RNNCell`. Padded steps are masked (carry frozen, outputs zero), ``remat`` trades compute for
  memory on long sequences, and rng streams inside the cell (dropout) are split per step or, for the
  streams ``broadcast_rngs`` selects, drawn once per sequence.
- :class:`RNNCell` holds one of this library's fused cells, its params as ``nnx.Param`` attributes named
  after the fields of its params NamedTuple (``W_xh``, ``W_hh``... or ``W_x``, ``W_h``, ``b``). It takes
  flax's constructor arguments and follows flax's cell protocol, so flax's own ``nnx.RNN`` runs it too;
  under :class:`RNN` it keeps the fast path (the input projection hoisted where that measures faster).
- Conversions: ``RNNCell.from_params(cell, params)`` and ``module.params`` go between a module and the
  functional params pytree (the same arrays, so the module computes exactly the functional result);
  :func:`from_flax_cell` / :func:`to_flax_cell` go between this library's params and flax's own
  ``nnx.SimpleCell`` / ``nnx.LSTMCell`` / ``nnx.GRUCell`` (and ``OptimizedLSTMCell`` one way); :class:`RNN`
  uses :func:`from_flax_cell` on the fly to run flax's own cells as the fused ones.

Carries follow the cell: ``LSTMState(h, c)`` for an :class:`RNNCell` LSTM, ``(c, h)`` for flax's LSTMs.
Integer features are promoted as flax promotes them (with float32 params: to float32); the functional
:func:`rnn_jax.run` refuses them with a clear error instead.

Example::

    model = RNN(nnx.OptimizedLSTMCell(8, 32, rngs=nnx.Rngs(0)))   # was: nnx.RNN(...)
    ys_BTH = model(xs_BTI, seq_lengths=lengths_B)                  # outputs past each length are zero
    fast = RNN(RNNCell("lstm", 8, 32, rngs=nnx.Rngs(0)))          # the fused cell
    params = fast.cell.params                                      # LSTMParams, for rnn_jax.run(lstm_cell, ...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from flax.nnx.nn.recurrent import flip_sequences

from rnn_jax.cells import (
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    LSTMState,
    VanillaParams,
    vanilla_init,
)
from rnn_jax.errors import UserError
from rnn_jax.scan import IMPLS, REMAT_OPTIONS, run, vmap_batch, zeros_carry

__all__ = ["RNNCell", "RNN", "from_flax_cell", "to_flax_cell"]

Initializer = Callable[..., jax.Array]

_INIT_FIELDS = {
    "vanilla": {"kernel_init": ("W_xh", "W_hy"), "recurrent_kernel_init": ("W_hh",), "bias_init": ("b_h", "b_y")},
    "lstm": {"kernel_init": ("W_x",), "recurrent_kernel_init": ("W_h",), "bias_init": ("b",)},
    "gru": {"kernel_init": ("W_x",), "recurrent_kernel_init": ("W_h",), "bias_init": ("b", "b_hn")},
}
"""The params fields each of flax's initializer arguments draws, per built-in cell (input kernels, the
recurrent kernel as one fused ``[H, G*H]`` array like flax's ``OptimizedLSTMCell`` and ``GRUCell``, biases)."""

_ACTIVATIONS = {
    "vanilla": ("activation_fn",),
    "lstm": ("gate_fn", "activation_fn"),
    "gru": ("gate_fn", "activation_fn"),
}
_DEFAULT_FNS = {"gate_fn": jax.nn.sigmoid, "activation_fn": jnp.tanh}


def _init_params(name: str, key, sizes: tuple, param_dtype, inits: dict):
    """The library's init (``lstm_init``...), then any of flax's initializers given in ``inits``."""
    in_features, hidden_features, out_features = sizes
    if name == "vanilla":
        params = vanilla_init(key, in_features, hidden_features, out_features or hidden_features, param_dtype)
    elif out_features is not None:
        raise UserError(f"out_features is only for the vanilla cell (its W_hy head); the {name} cell outputs h")
    else:
        params = CELLS[name].init(key, in_features, hidden_features, param_dtype)
    drawn = {}
    for i, (arg, init) in enumerate(sorted(inits.items())):
        for j, field in enumerate(_INIT_FIELDS[name][arg] if init is not None else ()):
            shape = getattr(params, field).shape
            drawn[field] = jnp.asarray(init(jax.random.fold_in(key, 1 + 2 * i + j), shape, param_dtype), param_dtype)
    return params._replace(**drawn)


def _with_activations(cell: Cell, fns: dict) -> Cell:
    """``cell`` with flax's ``gate_fn`` / ``activation_fn`` in its step (the defaults leave it as it is)."""
    given = {k: f for k, f in fns.items() if f is not None and f is not _DEFAULT_FNS[k]}
    allowed = _ACTIVATIONS.get(cell.name, ())
    if any(k not in allowed for k in given):
        raise UserError(
            f"the {cell.name} cell takes {' and '.join(allowed) or 'no activation argument'}, got {sorted(given)}"
        )
    return dataclasses.replace(cell, step=partial(cell.step, **given)) if given else cell


def _built_in(cell: str | Cell) -> Cell:
    if isinstance(cell, str):
        if cell not in CELLS:
            raise UserError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)} or a Cell")
        return CELLS[cell]
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a Cell or one of {sorted(CELLS)}, got {type(cell).__name__}")
    return cell


class RNNCell(nnx.RNNCellBase):
    """One of this library's fused cells as an ``nnx`` cell; its params are ``nnx.Param`` attributes.

    ``RNNCell("lstm", in_features, hidden_features, rngs=rngs)`` initialises the params with the library's
    own init (:func:`~rnn_jax.cells.lstm_init`: orthogonal recurrent blocks, forget bias 1...); flax's
    ``kernel_init``, ``recurrent_kernel_init`` and ``bias_init`` replace the arrays they name
    (``init(key, shape, param_dtype)``). ``gate_fn`` / ``activation_fn`` replace sigmoid / tanh (the vanilla
    cell has only ``activation_fn``). ``dtype`` is the computation dtype (``None``: promoted from the
    inputs and params, as flax does); ``out_features`` sizes the vanilla cell's ``W_hy`` head (default
    ``hidden_features``). ``RNNCell.from_params(cell, params)`` wraps existing params, of any
    :class:`~rnn_jax.cells.Cell` whose params are a NamedTuple.
    """

    def __init__(
        self,
        cell: str | Cell,
        in_features: int | None = None,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        params: Any = None,
        gate_fn: Callable | None = None,
        activation_fn: Callable | None = None,
        kernel_init: Initializer | None = None,
        recurrent_kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        dtype=None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        cell = _built_in(cell)
        if params is None:
            if cell.name not in CELLS or CELLS[cell.name] is not cell:
                raise UserError(f"give params= for the custom cell {cell.name!r}: only built-in cells have an init")
            if in_features is None or hidden_features is None or rngs is None:
                raise UserError("give in_features, hidden_features and rngs (or params=) to build an RNNCell")
            inits = dict(kernel_init=kernel_init, recurrent_kernel_init=recurrent_kernel_init, bias_init=bias_init)
            sizes = (in_features, hidden_features, out_features)
            params = _init_params(cell.name, rngs.params(), sizes, param_dtype, inits)
        elif not (isinstance(params, tuple) and hasattr(params, "_fields")):
            raise TypeError(f"params must be the cell's params NamedTuple, got {type(params).__name__}")
        self.cell = _with_activations(cell, dict(gate_fn=gate_fn, activation_fn=activation_fn))
        self.dtype = dtype
        self.params_type = type(params)
        for name, value in zip(params._fields, params):
            setattr(self, name, nnx.Param(jnp.asarray(value)))

    @classmethod
    def from_params(cls, cell: str | Cell, params, **kwargs) -> RNNCell:
        """Wrap functional params (e.g. from :func:`~rnn_jax.cells.lstm_init` or a checkpoint)."""
        return RNNCell(cell, params=params, **kwargs)

    @property
    def params(self):
        """The functional params NamedTuple, for ``rnn_jax.run(module.cell, module.params, ...)``."""
        return self.params_type(*(getattr(self, name).get_value() for name in self.params_type._fields))

    @property
    def hidden_features(self) -> int:
        return jax.tree.leaves(jax.eval_shape(self.cell.init_carry, self.params))[0].shape[-1]

    @property
    def in_features(self) -> int:
        return self.cell.input_size(self.params)

    @property
    def num_feature_axes(self) -> int:
        return 1

    def promoted(self, inputs):
        """``(params, inputs)`` in the computation dtype: ``dtype``, or as flax promotes (``int -> float32``)."""
        leaves, treedef = jax.tree.flatten(self.params)
        inputs, *leaves = promote_dtype((inputs, *leaves), dtype=self.dtype)
        return jax.tree.unflatten(treedef, leaves), inputs

    def __call__(self, carry, inputs):
        """One time step over any leading batch dims: ``carry [..., H], inputs [..., I]``."""
        params, inputs = self.promoted(inputs)
        step = vmap_batch(self.cell, jnp.ndim(inputs) - 1, in_axes=(None, 0, 0))  # the cell sees one example
        return step(params, carry, inputs)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init: Initializer | None = None):
        """The carry for inputs of shape ``input_shape`` (``[..., I]``): zeros, or ``carry_init(key, shape, dtype)``
        for every leaf (``rngs``, an ``nnx.Rngs`` or ``RngStream``, gives the keys)."""
        zeros = zeros_carry(self.cell, self.params, tuple(input_shape[:-1]))
        if carry_init is None:
            return zeros
        stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
        if stream is None:
            raise UserError("initialize_carry with carry_init needs rngs (an nnx.Rngs or RngStream)")
        return jax.tree.map(lambda z: carry_init(stream(), z.shape, z.dtype), zeros)


# ---------------------------------------------------------------------------------------------------
# RNN: nnx.RNN's interface over rnn_jax.run
# ---------------------------------------------------------------------------------------------------


def _check_cell(cell) -> None:
    missing = [a for a in ("initialize_carry", "num_feature_axes") if not hasattr(cell, a)]
    if not isinstance(cell, nnx.Module) or not callable(cell) or missing:
        raise TypeError(
            "cell must be an nnx.Module with flax's cell protocol (cell(carry, x) -> (carry, y), initialize_carry, "
            f"num_feature_axes), e.g. nnx.LSTMCell or RNNCell; got {type(cell).__name__}"
            + (f" without {', '.join(missing)}" if missing else "")
        )


def _check_state_axes(state_axes):
    """Accept ``nnx.RNN``'s ``state_axes`` where every value is ``nnx.Carry`` or ``None`` (see :class:`RNN`)."""
    if state_axes is None:
        return None
    if not isinstance(state_axes, (Mapping, nnx.StateAxes)):
        raise TypeError(f"state_axes must be a mapping from filters to nnx.Carry or None, got {type(state_axes)}")
    scanned = [axis for _, axis in state_axes.items() if axis is not None and axis is not nnx.Carry]
    if scanned:
        raise UserError(
            f"state_axes with axes {scanned}: rnn_jax's RNN shares the cell's state across steps (nnx.Carry or "
            "None); a state scanned along time needs nnx.RNN"
        )
    return state_axes


def _carry_stream(rngs):
    """The stream that ``initialize_carry`` draws from, as ``nnx.RNN`` makes it."""
    if rngs is True:
        return nnx.RngStream(0, tag="carry")
    if rngs is False:
        return nnx.data(None)
    if isinstance(rngs, nnx.Rngs):
        return rngs.carry.fork()
    raise TypeError(f"rngs must be an nnx.Rngs or a bool, got {type(rngs).__name__}")


def _layout(inputs, feature_axes: int, time_major: bool) -> tuple[int, tuple[int, ...]]:
    """``(time_axis, batch_shape)`` of ``inputs`` for a cell with ``feature_axes`` trailing feature axes."""
    if jnp.ndim(inputs) < feature_axes + 1:
        raise UserError(
            f"inputs of shape {jnp.shape(inputs)} have no time axis: the cell reads {feature_axes} feature axis(es), "
            "so expected [..., T, features] (or [T, ..., features] with time_major=True)"
        )
    ndim = jnp.ndim(inputs)
    if time_major:
        return 0, tuple(jnp.shape(inputs)[1 : ndim - feature_axes])
    return ndim - feature_axes - 1, tuple(jnp.shape(inputs)[: ndim - feature_axes - 1])


def _check_read_only(before, after) -> None:
    if jax.tree.structure(before) != jax.tree.structure(after):
        changed = ["its set of variables (e.g. by sow)"]
    else:
        pairs = zip(jax.tree.leaves_with_path(after), jax.tree.leaves(before))
        changed = [jax.tree_util.keystr(path) for (path, a), b in pairs if a is not b]
    if changed:
        raise UserError(
            f"the cell changed {', '.join(changed)} during a step: rnn_jax's RNN threads only rng streams through "
            "the scan (params and other state are read-only); use nnx.RNN for a cell that updates its state"
        )


def _run_flax_cell(cell, carry, xs, batch: tuple[int, ...], broadcast_rngs, options: dict):
    """Run a flax cell through :func:`run` as the plain function ``step(state, (carry, rngs), x)``.

    ``run`` maps the step over the batch, so the cell sees one example. Its rng streams get one fresh key
    per example (``nnx.split_rngs``, restored afterwards), carried along the scan: the streams that
    ``broadcast_rngs`` selects are handed back unchanged after every step (the same draws at every step:
    one dropout mask per sequence), the others advance (new draws at every step). The rest of the
    cell's state (its params) is read-only inside the scan.
    """
    feature_shape = xs.shape[xs.ndim - cell.num_feature_axes :]
    xs = xs.reshape(xs.shape[: xs.ndim - len(feature_shape)] + (-1,))  # run reads one feature axis
    fixed = nnx.All(nnx.RngState, broadcast_rngs)
    with nnx.split_rngs(cell, splits=batch or 1, squeeze=not batch, graph=True, graph_updates=True):
        graphdef, *states = nnx.split(cell, fixed, nnx.RngState, ...)
        fixed_rngs, moving_rngs, rest = jax.tree.map(lambda a: a, states)  # copies: split_rngs restores the streams

    def step(rest, carry, x):
        inner, fixed_rngs, moving_rngs = carry
        module = nnx.merge(graphdef, fixed_rngs, moving_rngs, rest, copy=True)  # a step updates the rng counts
        inner, y = module(inner, jnp.reshape(x, feature_shape))
        _, _, moving_rngs, after = nnx.split(module, fixed, nnx.RngState, ...)
        _check_read_only(rest, after)
        return (inner, fixed_rngs, moving_rngs), y

    (carry, _, _), ys = run(step, rest, (carry, fixed_rngs, moving_rngs), xs, **options)
    return carry, ys


_FUSABLE = (nnx.SimpleCell, nnx.LSTMCell, nnx.OptimizedLSTMCell, nnx.GRUCell)


def _fusable(cell) -> bool:
    """Whether ``cell`` is one of flax's own cells (not a subclass) that a fused library cell computes."""
    default_promotion = getattr(cell, "promote_dtype", None) is promote_dtype
    return type(cell) in _FUSABLE and default_promotion and not getattr(cell, "residual", False)


def _run_fused(fused: RNNCell, carry, inputs, options: dict):
    """:func:`run` over an :class:`RNNCell`'s fused cell, inputs, params and carry in the computation dtype."""
    params, inputs = fused.promoted(inputs)
    dtype = jax.tree.leaves(params)[0].dtype
    carry = jax.tree.map(lambda c: jnp.asarray(c, dtype), carry)
    return run(fused.cell, params, carry, inputs, **options)


class RNN(nnx.Module):
    """``nnx.RNN``'s interface and defaults, computed by :func:`rnn_jax.run` (one ``lax.scan``).

    ``RNN(cell, *, time_major=False, return_carry=False, reverse=False, keep_order=False, unroll=None,
    state_axes=None, broadcast_rngs=None, rngs=True, remat=False, impl="auto")``, then ``model(inputs, *,
    initial_carry=None, seq_lengths=None, return_carry=None, time_major=None, reverse=None,
    keep_order=None, rngs=None)`` returns ``ys`` or ``(carry, ys)``, as ``nnx.RNN`` does, for any cell with
    flax's cell protocol. Where ``nnx.RNN``'s results are defined they are the same (to float rounding);
    past each sequence's length they differ: the outputs are zero here and the carry stops at the last
    real step, where ``nnx.RNN`` computes both from padding.

    - ``remat`` (``False``, ``"step"``, ``"sqrt"``) trades compute for memory on long sequences;
      ``unroll=None`` lets :func:`rnn_jax.run` choose the loop's unroll (a speed knob: results do not change);
      ``impl`` is :func:`rnn_jax.run`'s algorithm (``"auto"``, ``"scan"``, ``"custom_jvp"``, ``"pallas"``;
      only ``"auto"`` and ``"scan"`` run a cell that is not fused, see below).
    - ``broadcast_rngs``: a filter of the cell's rng streams (e.g. ``"dropout"``) whose draws repeat at
      every step (recurrent dropout: one mask per sequence); the other streams draw anew at every step.
      Every example gets its own keys, and every call new ones.
    - ``state_axes``: ``nnx.Carry`` or ``None`` for every filter (the cell's params are shared by every
      step either way); a state scanned along time is refused.
    - :class:`RNNCell`, and flax's own ``SimpleCell``, ``LSTMCell``, ``OptimizedLSTMCell`` and ``GRUCell``
      (their arrays fused on the fly by :func:`from_flax_cell`, so gradients reach them): the library's fused
      cells, with the input projection hoisted where that measures faster. Any other cell is called on one
      example at a time (``run`` maps it over the batch).
    """

    def __init__(
        self,
        cell,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int | None = None,
        state_axes: Mapping | None = None,
        broadcast_rngs=None,
        rngs: nnx.Rngs | bool = True,
        remat: bool | str = False,
        impl: str = "auto",
    ):
        _check_cell(cell)
        if remat not in REMAT_OPTIONS:
            raise UserError(f"remat must be one of {REMAT_OPTIONS}, got {remat!r}")
        if impl not in IMPLS:
            raise UserError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.remat = remat
        self.impl = impl
        self.state_axes = _check_state_axes(state_axes)
        self.broadcast_rngs = broadcast_rngs
        self.rngs = _carry_stream(rngs)

    def __call__(
        self,
        inputs,
        *,
        initial_carry=None,
        seq_lengths=None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs=None,
    ):
        pick = lambda given, default: default if given is None else given  # noqa: E731
        time_major, reverse = pick(time_major, self.time_major), pick(reverse, self.reverse)
        inputs = jnp.asarray(inputs)
        seq_lengths = None if seq_lengths is None else jnp.asarray(seq_lengths)  # a list, as nnx.RNN takes
        time_axis, batch = _layout(inputs, self.cell.num_feature_axes, time_major)
        options = dict(lengths=seq_lengths, time_major=time_major, reverse=reverse)
        options.update(unroll=self.unroll, remat=self.remat, impl=self.impl)
        cell, lstm = self.cell, isinstance(self.cell, (nnx.LSTMCell, nnx.OptimizedLSTMCell))
        if initial_carry is None and not isinstance(cell, RNNCell):  # an RNNCell's carry: zeros, made by run
            rngs = pick(rngs, self.rngs)
            rngs = rngs.carry.fork() if isinstance(rngs, nnx.Rngs) else rngs
            initial_carry = cell.initialize_carry(inputs.shape[:time_axis] + inputs.shape[time_axis + 1 :], rngs)
        if isinstance(cell, RNNCell) or _fusable(cell):  # the fused cell: run's fast path
            fused = cell if isinstance(cell, RNNCell) else from_flax_cell(cell)
            carry = LSTMState(h=initial_carry[1], c=initial_carry[0]) if lstm else initial_carry
            carry, ys = _run_fused(fused, carry, inputs, options)
            carry = (carry.c, carry.h) if lstm else carry  # flax's LSTM carry is (c, h)
        else:
            carry, ys = _run_flax_cell(cell, initial_carry, inputs, batch, self.broadcast_rngs, options)
        if reverse and not pick(keep_order, self.keep_order):
            # run keeps each output at its own step; nnx.RNN returns them in reading order
            # (each sequence flipped within its length), unless keep_order.
            flip = partial(flip_sequences, seq_lengths=seq_lengths, num_batch_dims=len(batch), time_major=time_major)
            ys = jax.tree.map(flip, ys)
        return (carry, ys) if pick(return_carry, self.return_carry) else ys


# ---------------------------------------------------------------------------------------------------
# flax's own cells <-> this library's params
# ---------------------------------------------------------------------------------------------------


def _v(variable):
    return variable.get_value()


def _flax_params(flax_cell) -> tuple[str, Any]:
    """``(name, params)`` of the library cell that computes flax's ``flax_cell`` (the same arrays, fused)."""
    if isinstance(flax_cell, nnx.SimpleCell):
        if flax_cell.residual:
            raise ValueError("a residual SimpleCell (h' = tanh(... + h)) has no counterpart in rnn_jax")
        W_hh = _v(flax_cell.dense_h.kernel)
        H = W_hh.shape[0]
        eye, zero = jnp.eye(H, dtype=W_hh.dtype), jnp.zeros((H,), W_hh.dtype)
        return "vanilla", VanillaParams(_v(flax_cell.dense_i.kernel), W_hh, _v(flax_cell.dense_i.bias), eye, zero)
    if isinstance(flax_cell, nnx.OptimizedLSTMCell):  # already fused, gate order i, f, g, o
        dense_i, dense_h = flax_cell.dense_i, flax_cell.dense_h
        return "lstm", LSTMParams(W_x=_v(dense_i.kernel), W_h=_v(dense_h.kernel), b=_v(dense_h.bias))
    if isinstance(flax_cell, nnx.LSTMCell):
        gates = ("i", "f", "g", "o")
        inputs = {"i": flax_cell.ii, "f": flax_cell.if_, "g": flax_cell.ig, "o": flax_cell.io}
        hidden = {"i": flax_cell.hi, "f": flax_cell.hf, "g": flax_cell.hg, "o": flax_cell.ho}
        return "lstm", LSTMParams(
            W_x=jnp.concatenate([_v(inputs[g].kernel) for g in gates], axis=1),
            W_h=jnp.concatenate([_v(hidden[g].kernel) for g in gates], axis=1),
            b=jnp.concatenate([_v(hidden[g].bias) for g in gates]),
        )
    if isinstance(flax_cell, nnx.GRUCell):
        W_h = _v(flax_cell.dense_h.kernel)
        zero = jnp.zeros((W_h.shape[0],), W_h.dtype)
        return "gru", GRUParams(W_x=_v(flax_cell.dense_i.kernel), W_h=W_h, b=_v(flax_cell.dense_i.bias), b_hn=zero)
    raise TypeError(
        f"no conversion from {type(flax_cell).__name__}; "
        "expected nnx.SimpleCell, LSTMCell, OptimizedLSTMCell or GRUCell"
    )


def from_flax_cell(flax_cell) -> RNNCell:
    """Convert flax's ``nnx.SimpleCell`` / ``LSTMCell`` / ``OptimizedLSTMCell`` / ``GRUCell`` to an :class:`RNNCell`.

    - ``SimpleCell`` (``h' = tanh(x W_i + b_i + h W_h)``, output ``h'``): a vanilla cell with
      ``W_hy = I`` and ``b_y = 0``, so ``y_t = h_t`` exactly. Its ``residual`` option has no
      counterpart here.
    - ``LSTMCell``: the eight per-gate kernels fused into ``W_x [I, 4H]`` and ``W_h [H, 4H]`` (gate order
      ``i, f, g, o``, as flax's); flax's hidden-side biases become ``b``. ``OptimizedLSTMCell`` is fused already.
    - ``GRUCell``: already fused in ``r, z, n`` order; flax has no ``b_hn``, so it is zero here.

    The cell's ``gate_fn``, ``activation_fn`` and ``dtype`` carry over. The result computes the same
    function up to float rounding (sums may be taken in another order). The arrays are computed from
    flax's (concatenated), so inside a transform gradients reach the flax cell's params.
    """
    name, params = _flax_params(flax_cell)
    fns = {k: getattr(flax_cell, k) for k in _ACTIVATIONS[name]}
    return RNNCell.from_params(name, params, dtype=flax_cell.dtype, **fns)


def _set(variable, value):
    if variable.get_value().shape != value.shape:
        raise ValueError(f"shape mismatch: flax expects {variable.get_value().shape}, got {value.shape}")
    variable.set_value(value)


def to_flax_cell(cell: RNNCell, *, rngs: nnx.Rngs | None = None):
    """Convert an :class:`RNNCell` (or ``(name, params)`` via ``RNNCell.from_params``) to flax's own cell.

    The inverse of :func:`from_flax_cell`. A vanilla cell converts only with the identity head
    (``W_hy = I``, ``b_y = 0``: ``SimpleCell`` has no head) and a GRU only with ``b_hn = 0`` (flax's
    ``GRUCell`` has no such bias); anything else raises ``ValueError`` rather than change the function.
    The returned cell uses flax's carry layout (``(c, h)`` for the LSTM).
    """
    if not isinstance(cell, RNNCell):
        raise TypeError(f"expected an RNNCell, got {type(cell).__name__}")
    p = cell.params
    rngs = nnx.Rngs(0) if rngs is None else rngs  # flax builds then overwrites the params
    kwargs = dict(param_dtype=jax.tree.leaves(p)[0].dtype, rngs=rngs)
    if isinstance(p, VanillaParams):
        H = p.W_hh.shape[0]
        if p.W_hy.shape != (H, H) or not (bool(jnp.all(p.W_hy == jnp.eye(H))) and not bool(jnp.any(p.b_y))):
            raise ValueError("nnx.SimpleCell has no output head: only a vanilla cell with W_hy = I, b_y = 0 converts")
        out = nnx.SimpleCell(p.W_xh.shape[0], H, **kwargs)
        _set(out.dense_i.kernel, p.W_xh)
        _set(out.dense_i.bias, p.b_h)
        _set(out.dense_h.kernel, p.W_hh)
        return out
    if isinstance(p, LSTMParams):
        I, H = p.W_x.shape[0], p.W_h.shape[0]
        out = nnx.LSTMCell(I, H, **kwargs)
        Wx, Wh, b = (jnp.split(a, 4, axis=-1) for a in p)
        for g, wx, wh, bb in zip(("i", "f", "g", "o"), Wx, Wh, b):
            _set(getattr(out, "if_" if g == "f" else "i" + g).kernel, wx)
            _set(getattr(out, "h" + g).kernel, wh)
            _set(getattr(out, "h" + g).bias, bb)
        return out
    if isinstance(p, GRUParams):
        if bool(jnp.any(p.b_hn)):
            raise ValueError("nnx.GRUCell has no b_hn (the bias inside the reset product): it must be zero")
        out = nnx.GRUCell(p.W_x.shape[0], p.W_h.shape[0], **kwargs)
        _set(out.dense_i.kernel, p.W_x)
        _set(out.dense_i.bias, p.b)
        _set(out.dense_h.kernel, p.W_h)
        return out
    raise TypeError(f"no flax counterpart for params of type {type(p).__name__}")
