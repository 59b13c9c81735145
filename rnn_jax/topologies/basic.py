"""The small pieces every topology uses (a dense layer, cells by name, the hidden part of a carry) and the
generic topologies over any cell: one to one, one to many, many to one (many to many is :func:`rnn_jax.run`).

Like :func:`rnn_jax.run`, the generic functions take ``(cell, params, carry, xs)`` and any number of
leading batch dimensions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import (
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    LSTMState,
    VanillaParams,
    gru_cell,
    lstm_cell,
    vanilla_cell,
)
from rnn_jax.errors import UserError
from rnn_jax.kernels.registry import TABLE
from rnn_jax.scan import run, zeros_carry

Array = jax.Array

__all__ = [
    "Dense",
    "dense_init",
    "dense",
    "hidden_of",
    "carry_from_hidden",
    "cell_of",
    "cell_and_params",
    "CellParams",
    "cell_init",
    "step_impl",
    "one_to_one",
    "one_to_many",
    "many_to_one",
]


class Dense(NamedTuple):
    """An affine map ``x W + b``."""

    W: Array  # [in, out]
    b: Array  # [out]


def dense_init(key, in_size: int, out_size: int, dtype=jnp.float32) -> Dense:
    """LeCun-normal ``W``, zero ``b``."""
    return Dense(jax.nn.initializers.lecun_normal()(key, (in_size, out_size), dtype), jnp.zeros((out_size,), dtype))


def dense(p: Dense, x):
    """``x W + b`` for one example ``x [in]``."""
    return x @ p.W + p.b


def hidden_of(carry) -> Array:
    """The hidden state ``h`` of a carry: ``carry.h`` for an LSTM, the carry itself for vanilla and GRU."""
    return carry.h if isinstance(carry, LSTMState) else carry


def carry_from_hidden(cell: Cell, params, h_H):
    """The carry of ``cell`` whose hidden state is ``h_H`` (an LSTM's cell state starts at zero)."""
    zero = cell.init_carry(params)
    if isinstance(zero, LSTMState):
        return LSTMState(h_H.astype(zero.h.dtype), jnp.zeros_like(h_H, zero.c.dtype))
    if jax.tree.structure(zero).num_leaves != 1:
        raise TypeError(f"carry_from_hidden knows LSTMState and single-array carries, got {jax.tree.structure(zero)}")
    return h_H.astype(zero.dtype)


@partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["cell"])
@dataclasses.dataclass(frozen=True)
class CellParams:
    """A user cell's params together with the cell they belong to: a layer of a model built from a user's
    :class:`~rnn_jax.Cell` (``encoder_decoder_init(cell=my_cell)``). The params are the pytree's leaves;
    the cell is static (part of the tree's structure), so the model functions read it from the params as
    they read a built-in cell from its params' type."""

    params: Any
    cell: Cell


_CELL_OF_PARAMS = {VanillaParams: vanilla_cell, LSTMParams: lstm_cell, GRUParams: gru_cell}


def cell_of(params) -> Cell:
    """The cell that goes with a layer's params (a built-in's by the params type, a user's from its
    :class:`CellParams`), so model functions need no config."""
    if isinstance(params, CellParams):
        return params.cell
    try:
        return _CELL_OF_PARAMS[type(params)]
    except KeyError:
        raise TypeError(
            f"expected VanillaParams, LSTMParams, GRUParams or CellParams, got {type(params).__name__}"
        ) from None


def cell_and_params(layer) -> tuple[Cell, Any]:
    """``(cell, params)`` of a layer, ready for ``cell(params, carry, x)`` and :func:`rnn_jax.run`."""
    return cell_of(layer), (layer.params if isinstance(layer, CellParams) else layer)


def cell_init(kind: str, key, in_size: int, hidden_size: int, dtype=jnp.float32):
    """Params of a ``"vanilla"``, ``"lstm"`` or ``"gru"`` cell whose output ``y`` has ``hidden_size`` features."""
    if kind not in CELLS:
        raise UserError(f"cell must be one of 'vanilla', 'lstm', 'gru', got {kind!r}")
    return CELLS[kind].init(key, in_size, hidden_size, dtype)  # a vanilla head maps h -> h: the model's features


def step_impl(impl: str) -> str:
    """The ``impl`` for a loop whose step is a plain function around a cell: every implementation in the table
    becomes ``"scan"`` (the kernels run the built-in cells only); ``"auto"`` stays (it finds the scan for such a
    step), and so does a name not in the table (``run`` refuses it, listing the table)."""
    return "scan" if impl in TABLE else impl


def one_to_one(cell, params, carry, x):
    """One to one: a single step, ``(carry, y) = cell(params, carry, x)``, for ``x [..., I]``.

    ``carry=None`` is the zero carry (a plain feed-forward net through the cell).
    """
    carry, ys = run(cell, params, carry, jax.tree.map(lambda a: a[..., None, :], x))
    return carry, jax.tree.map(lambda a: a[..., 0, :], ys)


def one_to_many(
    cell,
    params,
    carry,
    x_I,
    *,
    steps: int,
    feedback: Callable[[Any], Any] | None = None,
    impl: str = "auto",
    unroll: int | None = None,
) -> tuple[Any, Any]:
    """One to many: read ``x_1 = x_I``, then feed each output back as the next input, for ``steps`` steps.

    ``h_t, y_t = cell(params, h_{t-1}, x_t)``, ``x_{t+1} = feedback(y_t)`` (identity by default, which needs
    ``O = I``). The fixed input sets the initial state: e.g. ``carry = carry_from_hidden(cell, params,
    tanh(dense(W_img, features)))`` as in image captioning. For tokens (sampling, beam search), use a token
    step with :mod:`rnn_jax.decode`.

    Args:
      carry: the initial carry with the batch dims in front, or ``None`` for zeros (a ``Cell``).
      x_I: the first input, ``[..., I]``.
      impl, unroll: for :func:`rnn_jax.run`; the loop's step feeds back, so ``impl`` goes through :func:`step_impl`.

    Returns:
      ``(final_carry, ys [..., T, O])``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UserError(f"one_to_many needs steps >= 1, got {steps!r}")
    feedback = feedback if feedback is not None else (lambda y: y)
    batch = jnp.shape(x_I)[:-1]
    if carry is None:
        carry = zeros_carry(cell, params, batch)

    def fed_back(p, state, _):
        c, x = state
        c, y = cell(p, c, x)
        return (c, feedback(y)), y

    dummy = jnp.zeros(batch + (steps, 0), jnp.float32)  # no per-step input: the loop feeds itself
    (carry, _), ys = run(fed_back, params, (carry, x_I), dummy, impl=step_impl(impl), unroll=unroll)
    return carry, ys


def many_to_one(
    cell, params, carry, xs, *, lengths=None, pool: str = "last", impl: str = "auto", unroll: int | None = None
) -> tuple[Any, Array]:
    """Many to one: summarise a sequence by its output at the last real step, or by the mean output.

    ``pool="last"``: ``y_{L-1}`` with ``L`` each sequence's length (``T`` without ``lengths``); ``"mean"``:
    ``(1/L) sum_{t<L} y_t``. For LSTM and GRU ``y_t = h_t``, so ``"last"`` is the final hidden state; for the
    vanilla cell it is the head's output at that step (the lecture's classifier). Length 0 gives zeros.
    ``impl`` and ``unroll`` go to :func:`rnn_jax.run` as given.

    Returns:
      ``(final_carry, summary [..., O])``.
    """
    if pool not in ("last", "mean"):
        raise UserError(f"pool must be 'last' or 'mean', got {pool!r}")
    carry, ys = run(cell, params, carry, xs, lengths=lengths, impl=impl, unroll=unroll)
    T = jnp.shape(ys)[-2]
    if lengths is None:
        lengths = jnp.full(jnp.shape(ys)[:-2], T, jnp.int32)
    lengths = jnp.asarray(lengths)
    if pool == "mean":  # run zeroed the outputs past each length
        return carry, jnp.sum(ys, axis=-2) / jnp.maximum(lengths, 1)[..., None].astype(ys.dtype)
    last = jnp.maximum(lengths - 1, 0)[..., None, None]
    summary = jnp.take_along_axis(ys, last, axis=-2)[..., 0, :]
    return carry, jnp.where((lengths > 0)[..., None], summary, 0)
