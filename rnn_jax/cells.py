"""Recurrent cells as pure functions: ``cell(params, carry, x) -> (carry, y)``.

Every cell works on **one example** (``x_I``, ``h_H``); batches come from ``jax.vmap`` (the scan wrapper
in :mod:`rnn_jax.scan` does it for you). Params are NamedTuples of arrays, so they are pytrees that
``jax.grad``, ``optax`` and checkpointing handle as they are.

Weights are stored input-major (``W_xh`` has shape ``[I, H]``) so that ``x @ W_xh`` is the lecture's
``W_xh x``: the equations below are the lecture's, written for row vectors.

A cell is a :class:`Cell`: a callable whose work is split where it pays. ``project`` is the part that
depends on the input alone (``x W_x + b``); ``step`` is the recurrence; ``readout`` maps what the step
emits to the output. Calling the cell runs all three for one time step. The scan wrapper can instead
apply ``project`` to the whole sequence as one large matmul before the loop (where that measures
faster: see ``rnn_jax.plan.auto_hoist``) and ``readout`` after it, so only the recurrent matmul stays
inside the sequential loop. Both routes compute the same function; the tests check it.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rnn_jax.errors import UserError

Array = jax.Array
Carry = Any
Params = Any

__all__ = [
    "Cell",
    "VanillaParams",
    "LSTMParams",
    "LSTMState",
    "GRUParams",
    "vanilla_init",
    "lstm_init",
    "gru_init",
    "vanilla_cell",
    "lstm_cell",
    "gru_cell",
    "CELLS",
    "import_path",
    "resolve_cell",
]


@dataclasses.dataclass(frozen=True)
class Cell:
    """A recurrent cell, callable as ``cell(params, carry, x) -> (carry, y)`` on one example.

    Attributes:
      name: short name (``"vanilla"``, ``"lstm"``, ...).
      project: ``(params, x_I) -> u``: the input-only part of the step (no carry in it).
      step: ``(params, carry, u) -> (carry, z)``: the recurrence proper.
      readout: ``(params, z) -> y``: the output head (identity for LSTM and GRU).
      init_carry: ``(params) -> carry``: the zero carry of one example.
      input_size: ``(params) -> int``: the feature size ``I`` that ``x`` must have.
      doc: the cell's equations; they become the instance's ``__doc__``, so ``help(rnn_jax.gru_cell)``
        shows them (a cell without ``doc`` shows this class's).
      saved: names (``jax.ad_checkpoint.checkpoint_name``) of the step's pre-activations from which
        its backward pass can be computed with elementwise work alone; where :func:`rnn_jax.run`
        chooses to, it stores only these per step and recomputes the gate nonlinearities.
      init: ``(key, in_size, hidden_size, dtype=jnp.float32) -> params`` for a layer whose output ``y``
        has ``hidden_size`` features (the vanilla cell's head ``W_hy`` maps ``H -> H``); ``None`` for a
        cell that brings no init, which then cannot be built by the trainers or the bench.
    """

    name: str
    project: Callable[[Params, Array], Any]
    step: Callable[[Params, Carry, Any], tuple[Carry, Any]]
    readout: Callable[[Params, Any], Any]
    init_carry: Callable[[Params], Carry]
    input_size: Callable[[Params], int]
    doc: str = ""
    saved: tuple[str, ...] = ()
    init: Callable[..., Params] | None = None

    def __post_init__(self):
        if self.doc:  # pydoc shows an instance's own __doc__ (with its repr) instead of its class's
            object.__setattr__(self, "__doc__", self.doc)

    def __repr__(self) -> str:
        return f"<Cell {self.name!r}>"

    def __call__(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Any]:
        carry, z = self.step(params, carry, self.project(params, x))
        return carry, self.readout(params, z)


def identity_readout(params, z):
    """The output head of a cell that has none: ``y = z``."""
    del params
    return z


def _split_keys(key, n):
    return jax.random.split(key, n)


def input_weight(key, in_size, out_size, dtype):
    """An ``[in_size, out_size]`` LeCun-normal weight: ``x @ W`` has unit variance per unit when ``x`` does."""
    return jax.nn.initializers.lecun_normal()(key, (in_size, out_size), dtype)


def _recurrent_weight(key, hidden_size, n_blocks, dtype):
    # One orthogonal [H, H] block per gate: keeps the recurrent Jacobian well conditioned at init.
    # The QR decomposition behind it has no bfloat16 kernel: draw in (at least) float32, then cast.
    work_dtype = jnp.promote_types(dtype, jnp.float32)
    keys = _split_keys(key, n_blocks)
    blocks = [jax.nn.initializers.orthogonal()(k, (hidden_size, hidden_size), work_dtype) for k in keys]
    return jnp.concatenate(blocks, axis=1).astype(dtype)


def _checked_input_size(cell_name: str, params_type: type, field: str) -> Callable[[Params], int]:
    """``input_size`` of a built-in cell, which also checks the params' type: ``run`` calls it once per call
    while validating (never inside the loop), so wrong params get one line instead of an error deep in a step."""

    def input_size(params) -> int:
        if not isinstance(params, params_type) and getattr(params, "_fields", None) != params_type._fields:
            fields = getattr(params, "_fields", None)
            got = type(params).__name__ + (f" ({', '.join(fields)})" if fields else "")
            raise UserError(
                f"{cell_name}_cell expects {params_type.__name__} ({', '.join(params_type._fields)}), got {got}; "
                f"make them with {cell_name}_init"
            )
        return getattr(params, field).shape[0]

    return input_size


def check_sizes(**sizes):
    """Raise a ValueError naming the first size that is not a positive integer."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------
# Vanilla RNN (the lecture's)
# ---------------------------------------------------------------------------------------------------


class VanillaParams(NamedTuple):
    """Params of the lecture's vanilla RNN, shared by every time step."""

    W_xh: Array  # [I, H]
    W_hh: Array  # [H, H]
    b_h: Array  # [H]
    W_hy: Array  # [H, O]
    b_y: Array  # [O]


def vanilla_init(key, in_size: int, hidden_size: int, out_size: int, dtype=jnp.float32) -> VanillaParams:
    """Orthogonal ``W_hh``, LeCun-normal ``W_xh`` and ``W_hy``, zero biases, all in ``dtype``."""
    check_sizes(in_size=in_size, hidden_size=hidden_size, out_size=out_size)
    k_xh, k_hh, k_hy = _split_keys(key, 3)
    return VanillaParams(
        W_xh=input_weight(k_xh, in_size, hidden_size, dtype),
        W_hh=_recurrent_weight(k_hh, hidden_size, 1, dtype),
        b_h=jnp.zeros((hidden_size,), dtype),
        W_hy=input_weight(k_hy, hidden_size, out_size, dtype),
        b_y=jnp.zeros((out_size,), dtype),
    )


def _vanilla_layer_init(key, in_size: int, hidden_size: int, dtype=jnp.float32) -> VanillaParams:
    """:func:`vanilla_init` for a layer: the head ``W_hy`` maps ``hidden_size -> hidden_size``."""
    return vanilla_init(key, in_size, hidden_size, hidden_size, dtype)


def _vanilla_project(p: VanillaParams, x_I):
    return x_I @ p.W_xh + p.b_h


def _vanilla_step(p: VanillaParams, h_H, u_H, *, activation_fn=jnp.tanh):
    h_H = activation_fn(h_H @ p.W_hh + u_H)
    return h_H, h_H


def _vanilla_readout(p: VanillaParams, h_H):
    return h_H @ p.W_hy + p.b_y


vanilla_cell = Cell(
    name="vanilla",
    doc="""The lecture's vanilla RNN, one time step of one example.

    h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h)
    y_t = W_hy h_t + b_y

``vanilla_cell(params, h_H, x_I) -> (h_H, y_O)``. The same params are used at every step.
""",
    project=_vanilla_project,
    step=_vanilla_step,
    readout=_vanilla_readout,
    init_carry=lambda p: jnp.zeros(p.W_hh.shape[:1], p.W_hh.dtype),
    input_size=_checked_input_size("vanilla", VanillaParams, "W_xh"),
    init=_vanilla_layer_init,
)


# ---------------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------------


class LSTMState(NamedTuple):
    """The LSTM carry: hidden state ``h`` and cell state ``c``."""

    h: Array  # [H]
    c: Array  # [H]


class LSTMParams(NamedTuple):
    """LSTM params with the four gates fused in one matmul, gate order ``i, f, g, o``."""

    W_x: Array  # [I, 4H]
    W_h: Array  # [H, 4H]
    b: Array  # [4H]


def lstm_init(key, in_size: int, hidden_size: int, dtype=jnp.float32) -> LSTMParams:
    """Orthogonal recurrent blocks, LeCun-normal input weights, forget-gate bias 1, other biases 0."""
    check_sizes(in_size=in_size, hidden_size=hidden_size)
    k_x, k_h = _split_keys(key, 2)
    H = hidden_size
    b = jnp.zeros((4 * H,), dtype).at[H : 2 * H].set(1.0)
    return LSTMParams(W_x=input_weight(k_x, in_size, 4 * H, dtype), W_h=_recurrent_weight(k_h, H, 4, dtype), b=b)


def _lstm_project(p: LSTMParams, x_I):
    return x_I @ p.W_x + p.b


def _lstm_step(p: LSTMParams, state: LSTMState, u_G, *, gate_fn=jax.nn.sigmoid, activation_fn=jnp.tanh):
    gates = checkpoint_name(u_G + state.h @ p.W_h, "lstm_gates")  # all the backward pass needs to store
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = gate_fn(f) * state.c + gate_fn(i) * activation_fn(g)
    h = gate_fn(o) * activation_fn(c)
    return LSTMState(h, c), h


def _lstm_zero(p: LSTMParams):
    z = jnp.zeros(p.W_h.shape[:1], p.W_h.dtype)
    return LSTMState(z, z)


lstm_cell = Cell(
    name="lstm",
    doc="""Long short-term memory, one time step of one example.

    [i, f, g, o] = x_t W_x + h_{t-1} W_h + b        (one fused matmul per operand)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(c_t)

``lstm_cell(params, LSTMState(h, c), x_I) -> (LSTMState(h, c), h)``.
""",
    project=_lstm_project,
    step=_lstm_step,
    readout=identity_readout,
    init_carry=_lstm_zero,
    input_size=_checked_input_size("lstm", LSTMParams, "W_x"),
    saved=("lstm_gates",),
    init=lstm_init,
)


# ---------------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------------


class GRUParams(NamedTuple):
    """GRU params, gate order ``r, z, n``; ``b_hn`` sits inside the reset gate's product."""

    W_x: Array  # [I, 3H]
    W_h: Array  # [H, 3H]
    b: Array  # [3H]
    b_hn: Array  # [H]


def gru_init(key, in_size: int, hidden_size: int, dtype=jnp.float32) -> GRUParams:
    """Orthogonal recurrent blocks, LeCun-normal input weights, zero biases."""
    check_sizes(in_size=in_size, hidden_size=hidden_size)
    k_x, k_h = _split_keys(key, 2)
    H = hidden_size
    return GRUParams(
        W_x=input_weight(k_x, in_size, 3 * H, dtype),
        W_h=_recurrent_weight(k_h, H, 3, dtype),
        b=jnp.zeros((3 * H,), dtype),
        b_hn=jnp.zeros((H,), dtype),
    )


def _gru_project(p: GRUParams, x_I):
    return x_I @ p.W_x + p.b


def _gru_step(p: GRUParams, h_H, u_G, *, gate_fn=jax.nn.sigmoid, activation_fn=jnp.tanh):
    # The two pre-activations are all the backward pass needs to store (the rest is elementwise).
    ux_r, ux_z, ux_n = jnp.split(checkpoint_name(u_G, "gru_x"), 3, axis=-1)
    uh_r, uh_z, uh_n = jnp.split(checkpoint_name(h_H @ p.W_h, "gru_h"), 3, axis=-1)
    r = gate_fn(ux_r + uh_r)
    z = gate_fn(ux_z + uh_z)
    n = activation_fn(ux_n + r * (uh_n + p.b_hn))
    h_H = (1 - z) * n + z * h_H
    return h_H, h_H


gru_cell = Cell(
    name="gru",
    doc="""Gated recurrent unit, one time step of one example (the cuDNN/flax form).

    r = sigmoid(x W_xr + h W_hr + b_r)
    z = sigmoid(x W_xz + h W_hz + b_z)
    n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))
    h_t = (1 - z) * n + z * h_{t-1}

``gru_cell(params, h_H, x_I) -> (h_H, h_H)``.
""",
    project=_gru_project,
    step=_gru_step,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros(p.W_h.shape[:1], p.W_h.dtype),
    input_size=_checked_input_size("gru", GRUParams, "W_x"),
    saved=("gru_x", "gru_h"),
    init=gru_init,
)

CELLS: dict[str, Cell] = {"vanilla": vanilla_cell, "lstm": lstm_cell, "gru": gru_cell}


def import_path(cell: Cell) -> str | None:
    """``"module:attr"`` from which ``cell`` can be imported, found without a registry: the module that
    defines its ``step`` (or ``project``) is searched for an attribute that is this very cell. ``None``
    where there is none: a cell made inside a function, or in ``__main__`` (another process cannot import it).
    """
    for fn in (cell.step, cell.project):
        module_name = getattr(fn, "__module__", None)
        module = sys.modules.get(module_name) if isinstance(module_name, str) else None
        if module is None or module_name == "__main__":
            continue
        for attr, value in vars(module).items():
            if value is cell:
                return f"{module_name}:{attr}"
    return None


def resolve_cell(spec) -> Cell:
    """The :class:`Cell` that ``spec`` names: a Cell itself, a built-in name (``"gru"``) or an import path
    ``"module:attr"`` (``"mypkg.cells:lngru"``); a :class:`~rnn_jax.UserError` naming what came otherwise."""
    if isinstance(spec, Cell):
        return spec
    if isinstance(spec, str) and spec in CELLS:
        return CELLS[spec]
    if isinstance(spec, str) and ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UserError(f"cannot import the cell {spec!r}: {err}") from None
        cell = getattr(module, attr, None)
        if not isinstance(cell, Cell):
            raise UserError(f"{spec!r} must name an rnn_jax.Cell, got {type(cell).__name__}")
        return cell
    raise UserError(f"cell must be one of {list(CELLS)}, an rnn_jax.Cell or an import path 'module:attr', got {spec!r}")
