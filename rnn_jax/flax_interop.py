"""``flax.nnx`` modules over this library's cells and its one scan, with params convertible both ways.

- :class:`RNNCell` holds a cell's params as ``nnx.Param`` attributes named after the fields of its
  params NamedTuple (``W_xh``, ``W_hh``... or ``W_x``, ``W_h``, ``b``) and follows flax's cell protocol
  (``cell(carry, x) -> (carry, y)`` over any batch dims, ``initialize_carry``, ``num_feature_axes``), so
  it also works inside flax's own ``nnx.RNN``.
- :class:`RNN` is a drop-in for ``nnx.RNN`` that runs the cell with :func:`rnn_jax.run`: the input
  projection hoisted out of the loop, padded steps masked (carry frozen, outputs zero), and ``remat``
  for long sequences.
- Conversions: ``RNNCell.from_params(cell, params)`` and ``module.params`` go between a module and the
  functional params pytree (the same arrays, so the module computes exactly the functional result);
  :func:`from_flax_cell` / :func:`to_flax_cell` go between this library's params and flax's own
  ``nnx.SimpleCell`` / ``nnx.LSTMCell`` / ``nnx.GRUCell``.

Carries follow this library: ``LSTMState(h, c)`` for the LSTM, where flax's ``LSTMCell`` uses ``(c, h)``.

Example::

    model = RNN(RNNCell("lstm", in_features=8, hidden_features=32, rngs=nnx.Rngs(0)))
    ys_BTH = model(xs_BTI, seq_lengths=lengths_B)
    params = model.cell.params                     # LSTMParams, for rnn_jax.run(lstm_cell, params, ...)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.recurrent import flip_sequences

from rnn_jax.cells import (
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    VanillaParams,
    gru_init,
    lstm_init,
    vanilla_init,
)
from rnn_jax.scan import REMAT_OPTIONS, run, zeros_carry

__all__ = ["RNNCell", "RNN", "from_flax_cell", "to_flax_cell"]


def _init_params(name: str, key, in_features: int, hidden_features: int, out_features: int | None, dtype):
    if name == "vanilla":
        return vanilla_init(key, in_features, hidden_features, out_features or hidden_features, dtype)
    if out_features is not None:
        raise ValueError(f"out_features is only for the vanilla cell (its W_hy head); the {name} cell outputs h")
    return {"lstm": lstm_init, "gru": gru_init}[name](key, in_features, hidden_features, dtype)


class RNNCell(nnx.RNNCellBase):
    """One of this library's cells as an ``nnx`` cell; its params are ``nnx.Param`` attributes.

    ``RNNCell("lstm", in_features, hidden_features, rngs=rngs)`` initialises the params with the
    library's own init (:func:`~rnn_jax.cells.lstm_init`...); ``out_features`` sizes the vanilla
    cell's ``W_hy`` head (default ``hidden_features``). ``RNNCell.from_params(cell, params)`` wraps
    existing params, of any :class:`~rnn_jax.cells.Cell` whose params are a NamedTuple.
    """

    def __init__(
        self,
        cell: str | Cell,
        in_features: int | None = None,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        params: Any = None,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r}; expected one of {sorted(CELLS)} or a Cell")
            cell = CELLS[cell]
        if not isinstance(cell, Cell):
            raise TypeError(f"cell must be a Cell or one of {sorted(CELLS)}, got {type(cell).__name__}")
        if params is None:
            if cell.name not in CELLS or CELLS[cell.name] is not cell:
                raise ValueError(f"give params= for the custom cell {cell.name!r}: only built-in cells have an init")
            if in_features is None or hidden_features is None or rngs is None:
                raise ValueError("give in_features, hidden_features and rngs (or params=) to build an RNNCell")
            key = rngs.params()
            params = _init_params(cell.name, key, in_features, hidden_features, out_features, param_dtype)
        elif not (isinstance(params, tuple) and hasattr(params, "_fields")):
            raise TypeError(f"params must be the cell's params NamedTuple, got {type(params).__name__}")
        self.cell = cell
        self.params_type = type(params)
        for name, value in zip(params._fields, params):
            setattr(self, name, nnx.Param(jnp.asarray(value)))

    @classmethod
    def from_params(cls, cell: str | Cell, params) -> RNNCell:
        """Wrap functional params (e.g. from :func:`~rnn_jax.cells.lstm_init` or a checkpoint)."""
        return cls(cell, params=params)

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

    def __call__(self, carry, inputs):
        """One time step over any leading batch dims: ``carry [..., H], inputs [..., I]``."""
        step = self.cell
        for _ in range(jnp.ndim(inputs) - 1):  # the cell is written for one example
            step = jax.vmap(step, in_axes=(None, 0, 0))
        return step(self.params, carry, inputs)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None):
        """The zero carry for inputs of shape ``input_shape`` (``[..., I]``); ``rngs`` is not used."""
        del rngs
        return zeros_carry(self.cell, self.params, tuple(input_shape[:-1]))


class RNN(nnx.Module):
    """``nnx.RNN``'s interface, computed by :func:`rnn_jax.run` (one ``lax.scan``, hoisted projection).

    ``model(inputs, *, initial_carry=None, seq_lengths=None, return_carry=None, time_major=None,
    reverse=None, keep_order=None)`` returns ``ys`` or ``(carry, ys)``, as ``nnx.RNN`` does. Differences,
    all in the outputs past each sequence's length: they are zero here, and the carry stops at the
    last real step (``nnx.RNN`` computes them from padding). ``remat`` (``False``, ``"step"``, ``"sqrt"``)
    trades compute for memory on long sequences; ``unroll=None`` lets :func:`rnn_jax.run` choose it.
    """

    def __init__(
        self,
        cell: RNNCell,
        *,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int | None = None,
        remat: bool | str = False,
    ):
        if not isinstance(cell, RNNCell):
            raise TypeError(f"cell must be an rnn_jax RNNCell (use nnx.RNN for flax's own cells), got {type(cell)}")
        if remat not in REMAT_OPTIONS:
            raise ValueError(f"remat must be one of {REMAT_OPTIONS}, got {remat!r}")
        self.cell = cell
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.remat = remat

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
    ):
        pick = lambda given, default: default if given is None else given  # noqa: E731
        time_major, reverse = pick(time_major, self.time_major), pick(reverse, self.reverse)
        carry, ys = run(
            self.cell.cell,
            self.cell.params,
            initial_carry,
            inputs,
            lengths=seq_lengths,
            time_major=time_major,
            reverse=reverse,
            unroll=self.unroll,
            remat=self.remat,
        )
        if reverse and not pick(keep_order, self.keep_order):
            # run keeps each output at its own step; nnx.RNN returns them in reading order
            # (each sequence flipped within its length), unless keep_order.
            batch_ndim = jnp.ndim(inputs) - 2
            ys = flip_sequences(ys, seq_lengths, num_batch_dims=batch_ndim, time_major=time_major)
        return (carry, ys) if pick(return_carry, self.return_carry) else ys


# ---------------------------------------------------------------------------------------------------
# flax's own cells <-> this library's params
# ---------------------------------------------------------------------------------------------------


def _v(variable):
    return variable.get_value()


def from_flax_cell(flax_cell) -> RNNCell:
    """Convert flax's ``nnx.SimpleCell`` / ``nnx.LSTMCell`` / ``nnx.GRUCell`` to an :class:`RNNCell`.

    - ``SimpleCell`` (``h' = tanh(x W_i + b_i + h W_h)``, output ``h'``): a vanilla cell with
      ``W_hy = I`` and ``b_y = 0``, so ``y_t = h_t`` exactly. Its ``residual`` option has no
      counterpart here.
    - ``LSTMCell``: the eight per-gate kernels fused into ``W_x [I, 4H]`` and ``W_h [H, 4H]`` (gate order
      ``i, f, g, o``, as flax's); flax's hidden-side biases become ``b``.
    - ``GRUCell``: already fused in ``r, z, n`` order; flax has no ``b_hn``, so it is zero here.

    Gate and activation functions must be flax's defaults (sigmoid, tanh). The result computes the
    same function up to float rounding (sums may be taken in another order).
    """
    default_gates = getattr(flax_cell, "gate_fn", jax.nn.sigmoid) is jax.nn.sigmoid
    if not (default_gates and flax_cell.activation_fn is jax.nn.tanh):
        raise ValueError("only flax cells with the default gate (sigmoid) and activation (tanh) convert")
    if isinstance(flax_cell, nnx.SimpleCell):
        if flax_cell.residual:
            raise ValueError("a residual SimpleCell (h' = tanh(... + h)) has no counterpart in rnn_jax")
        W_hh = _v(flax_cell.dense_h.kernel)
        H = W_hh.shape[0]
        params = VanillaParams(
            W_xh=_v(flax_cell.dense_i.kernel),
            W_hh=W_hh,
            b_h=_v(flax_cell.dense_i.bias),
            W_hy=jnp.eye(H, dtype=W_hh.dtype),
            b_y=jnp.zeros((H,), W_hh.dtype),
        )
        return RNNCell.from_params("vanilla", params)
    if isinstance(flax_cell, nnx.LSTMCell):
        gates = ("i", "f", "g", "o")
        inputs = {"i": flax_cell.ii, "f": flax_cell.if_, "g": flax_cell.ig, "o": flax_cell.io}
        hidden = {"i": flax_cell.hi, "f": flax_cell.hf, "g": flax_cell.hg, "o": flax_cell.ho}
        params = LSTMParams(
            W_x=jnp.concatenate([_v(inputs[g].kernel) for g in gates], axis=1),
            W_h=jnp.concatenate([_v(hidden[g].kernel) for g in gates], axis=1),
            b=jnp.concatenate([_v(hidden[g].bias) for g in gates]),
        )
        return RNNCell.from_params("lstm", params)
    if isinstance(flax_cell, nnx.GRUCell):
        W_h = _v(flax_cell.dense_h.kernel)
        params = GRUParams(
            W_x=_v(flax_cell.dense_i.kernel),
            W_h=W_h,
            b=_v(flax_cell.dense_i.bias),
            b_hn=jnp.zeros((W_h.shape[0],), W_h.dtype),
        )
        return RNNCell.from_params("gru", params)
    raise TypeError(f"no conversion from {type(flax_cell).__name__}; expected nnx.SimpleCell, LSTMCell or GRUCell")


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
