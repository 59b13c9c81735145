"""Linear recurrent cells: ``h_t = a_t * h_{t-1} + b_t`` (elementwise), run sequentially or in parallel.

When the gates ``a_t`` and the input ``b_t`` depend on the input alone (not on ``h_{t-1}``), the
recurrence is *linear* in ``h``, and composing two steps is again such a step:

    (a_1, b_1) then (a_2, b_2)  =  (a_2 * a_1, a_2 * b_1 + b_2)

That operator is associative, so all ``T`` prefixes come out of ``lax.associative_scan`` in
``O(log T)`` parallel depth (Blelloch; Martin & Cundy 2018) instead of a ``T``-step loop. Both forms
compute the same function; :func:`run_linear` picks one with ``method``.

Two cells, written as :class:`~rnn_jax.cells.Cell` so that :func:`rnn_jax.run` runs them too (its
sequential scan is the reference):

- :data:`mingru_cell`, minGRU (Feng et al. 2024, "Were RNNs all we needed?")::

      z_t = sigmoid(x_t W_z + b_z),   h~_t = x_t W_h + b_h
      h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

- :data:`diag_cell`, a diagonal linear RNN with decay ``lambda = sigmoid(nu)`` in ``(0, 1)``::

      h_t = lambda * h_{t-1} + x_t W_x + b
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax.cells import Cell, check_sizes, identity_readout, input_weight
from rnn_jax.scan import check_run_args, run, vmap_batch

Array = jax.Array

__all__ = [
    "MinGRUParams",
    "DiagParams",
    "mingru_init",
    "diag_init",
    "mingru_cell",
    "diag_cell",
    "linear_scan",
    "run_linear",
    "LINEAR_CELLS",
    "METHODS",
]

METHODS = ("sequential", "associative")


def _linear_step(params, h_H, ab):
    """``h_t = a_t * h_{t-1} + b_t``: the whole recurrence, elementwise."""
    del params
    a_H, b_H = ab
    h_H = a_H * h_H + b_H
    return h_H, h_H


# ---------------------------------------------------------------------------------------------------
# minGRU
# ---------------------------------------------------------------------------------------------------


class MinGRUParams(NamedTuple):
    """minGRU params: the update gate ``z`` and the candidate ``h~`` both read the input alone."""

    W_z: Array  # [I, H]
    b_z: Array  # [H]
    W_h: Array  # [I, H]
    b_h: Array  # [H]


def mingru_init(key, in_size: int, hidden_size: int, dtype=jnp.float32) -> MinGRUParams:
    """LeCun-normal input weights, zero biases."""
    check_sizes(in_size=in_size, hidden_size=hidden_size)
    k_z, k_h = jax.random.split(key, 2)
    return MinGRUParams(
        W_z=input_weight(k_z, in_size, hidden_size, dtype),
        b_z=jnp.zeros((hidden_size,), dtype),
        W_h=input_weight(k_h, in_size, hidden_size, dtype),
        b_h=jnp.zeros((hidden_size,), dtype),
    )


def _mingru_project(p: MinGRUParams, x_I):
    z_H = jax.nn.sigmoid(x_I @ p.W_z + p.b_z)
    return 1 - z_H, z_H * (x_I @ p.W_h + p.b_h)


mingru_cell = Cell(
    name="mingru",
    doc="""minGRU, one time step of one example: a GRU whose gates do not read h.

    z_t = sigmoid(x_t W_z + b_z),  h~_t = x_t W_h + b_h,  h_t = (1 - z_t) * h_{t-1} + z_t * h~_t

``mingru_cell(params, h_H, x_I) -> (h_H, h_H)``.
""",
    project=_mingru_project,
    step=_linear_step,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros(p.W_h.shape[1:], p.W_h.dtype),
    input_size=lambda p: p.W_h.shape[0],
)


# ---------------------------------------------------------------------------------------------------
# Diagonal linear RNN
# ---------------------------------------------------------------------------------------------------


class DiagParams(NamedTuple):
    """Diagonal linear RNN params: per-unit decay ``sigmoid(nu)`` and an input projection."""

    nu: Array  # [H]
    W_x: Array  # [I, H]
    b: Array  # [H]


def diag_init(key, in_size: int, hidden_size: int, dtype=jnp.float32) -> DiagParams:
    """Decays spread over ``[0.5, 0.99]`` (short and long memories), LeCun-normal ``W_x``, zero bias."""
    check_sizes(in_size=in_size, hidden_size=hidden_size)
    decay = jnp.linspace(0.5, 0.99, hidden_size)
    return DiagParams(
        nu=jnp.log(decay / (1 - decay)).astype(dtype),
        W_x=input_weight(key, in_size, hidden_size, dtype),
        b=jnp.zeros((hidden_size,), dtype),
    )


def _diag_project(p: DiagParams, x_I):
    return jax.nn.sigmoid(p.nu), x_I @ p.W_x + p.b


diag_cell = Cell(
    name="diag",
    doc="""Diagonal linear RNN, one time step of one example.

    h_t = sigmoid(nu) * h_{t-1} + x_t W_x + b

``diag_cell(params, h_H, x_I) -> (h_H, h_H)``.
""",
    project=_diag_project,
    step=_linear_step,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros(p.nu.shape, p.nu.dtype),
    input_size=lambda p: p.W_x.shape[0],
)

LINEAR_CELLS: dict[str, Cell] = {"mingru": mingru_cell, "diag": diag_cell}


# ---------------------------------------------------------------------------------------------------
# The parallel form
# ---------------------------------------------------------------------------------------------------


def _compose(earlier, later):
    """Step ``earlier`` then step ``later``: ``h -> a2 * (a1 * h + b1) + b2``."""
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def linear_scan(a_TH, b_TH, h0_H, *, reverse: bool = False):
    """Every ``h_t`` of ``h_t = a_t * h_{t-1} + b_t`` by ``lax.associative_scan`` over the leading axis.

    With the prefix compositions ``(A_t, B_t)`` of steps ``0..t`` (``T-1..t`` with ``reverse``),
    ``h_t = A_t * h0 + B_t``. Extra trailing axes of ``a``/``b`` broadcast against ``h0``.
    """
    if reverse:  # step t+1 now comes before step t: scan the flipped sequence, flip back
        return linear_scan(a_TH[::-1], b_TH[::-1], h0_H)[::-1]
    A, B = lax.associative_scan(_compose, (a_TH, b_TH))
    return A * jnp.broadcast_to(h0_H, A.shape) + B


def _run_linear_one(cell, params, carry, xs_T, length, *, T, reverse):
    a, b = jax.vmap(cell.project, (None, 0))(params, xs_T)
    a = jnp.broadcast_to(a, b.shape)
    if length is not None:  # past the length: a = 1, b = 0, so the carry passes through unchanged
        keep = (jnp.arange(T) < length)[:, None]
        a, b = jnp.where(keep, a, 1), jnp.where(keep, b, 0)
    if carry is None:
        carry = cell.init_carry(params)
    hs = linear_scan(a, b, carry, reverse=reverse)
    final = hs[0] if reverse else hs[-1]
    ys = jax.vmap(cell.readout, (None, 0))(params, hs)
    if length is not None:
        ys = jnp.where(keep, ys, 0)
    return final, ys


def run_linear(
    cell: Cell,
    params,
    carry,
    xs,
    *,
    lengths=None,
    time_major: bool = False,
    reverse: bool = False,
    method: str = "associative",
):
    """Run a linear cell over ``xs`` (``[..., T, I]``) by the sequential scan or the parallel one.

    Same arguments, masking and results as :func:`rnn_jax.run` (``carry=None`` for zeros, ``lengths``
    freezes the carry and zeroes outputs past each length). ``method="sequential"`` *is*
    :func:`rnn_jax.run`; ``"associative"`` computes all steps with :func:`linear_scan`: more work
    (``O(T log T)``) but no sequential loop, which wins at long ``T`` (see ``rnn-jax bench linear``).

    Returns ``(final_carry, ys)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if cell.step is not _linear_step:
        raise ValueError(f"run_linear needs a linear cell ({', '.join(LINEAR_CELLS)}), got the {cell.name} cell")
    if method == "sequential":
        return run(cell, params, carry, xs, lengths=lengths, time_major=time_major, reverse=reverse)
    T, batch = check_run_args(cell, params, carry, xs, lengths=lengths, time_major=time_major)
    x_axis = 1 if time_major else 0
    fn = vmap_batch(
        lambda c, x, n: _run_linear_one(cell, params, c, x, n, T=T, reverse=reverse),
        len(batch),
        in_axes=(None if carry is None else 0, x_axis, None if lengths is None else 0),
        out_axes=(0, x_axis),
    )
    return fn(carry, xs, lengths)
