"""``impl="custom_jvp"``: the vanilla RNN layer with a hand-written tangent, its weight gradients after the loop.

The tangent takes every term that does not pass through the recurrence out of the sequential loop, so
reverse mode (its transpose) does one ``[N, H] @ [H, H]`` product per step and ``dW_h``, ``dW_x`` as one
matmul each after the loop; forward mode (``jax.jvp``) keeps working, unlike a ``custom_vjp``. It runs the
vanilla recurrence (any output head) forward over every step: no ``lengths``, ``reverse``, ``remat`` or
``return_carries``. Measurements: ``docs/bench.md``, "The vanilla RNN's fast path".
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax.cells import Cell, vanilla_cell

__all__ = ["unsupported_reason", "available"]


def available() -> str | None:
    """Always usable: plain JAX."""
    return None


def unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False):
    """Why the fast path cannot compute this call (one sentence), or ``None`` when it can."""
    del params, xs_TNI
    if not (isinstance(cell, Cell) and cell.step is vanilla_cell.step and cell.project is vanilla_cell.project):
        got = f"the {cell.name} cell" if isinstance(cell, Cell) else f"the function {getattr(cell, '__name__', cell)}"
        return f"it runs the vanilla cell only, got {got}"
    for name, given in (("lengths", lengths is not None), ("reverse", reverse), ("return_carries", return_carries)):
        if given:
            return f"it takes no {name} (got {name}={'an array' if name == 'lengths' else True})"
    if remat not in (False, "none"):
        return f"it stores its own residuals, so it takes no remat (got remat={remat!r})"
    return None


def _vanilla_forward(W_x, W_h, b, h0, xs, unroll: int = 1):
    """``h_t = tanh(x_t W_x + h_{t-1} W_h + b)`` over a time-major ``xs [T, N, I]`` from ``h0 [N, H]``."""

    def step(h, x):
        h = jnp.tanh(x @ W_x + h @ W_h + b[None, :])
        return h, h

    return lax.scan(step, h0, xs, unroll=unroll)[1]


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _vanilla_layer(unroll, W_x, W_h, b, h0, xs):
    return _vanilla_forward(W_x, W_h, b, h0, xs, unroll)


@partial(_vanilla_layer.defjvp, symbolic_zeros=True)
def _vanilla_layer_jvp(unroll, primals, tangents):
    """The tangent with every term that does not pass through the recurrence taken out of the loop::

        E = X dW_x + H_prev dW_h + db + dX W_x        (big matmuls, all steps at once)
        dh_t = (1 - h_t^2) * (E_t + dh_{t-1} W_h)     (the only sequential part)

    Reverse mode transposes it, so the backward loop does one ``[N, H] @ [H, H]`` product per step and
    ``dW_h = H_prev^T dE``, ``dW_x = X^T dE`` are one matmul each after it (autodiff of the plain scan
    accumulates them step by step). Forward mode (``jax.jvp``) keeps working, unlike a ``custom_vjp``.
    """
    W_x, W_h, b, h0, xs = primals
    dW_x, dW_h, db, dh0, dxs = tangents
    hs = _vanilla_forward(W_x, W_h, b, h0, xs, unroll)
    zero = jax.custom_derivatives.SymbolicZero
    E = jnp.zeros_like(hs)
    if not isinstance(dW_x, zero):
        E = E + xs @ dW_x
    if not isinstance(dW_h, zero):
        E = E + jnp.concatenate([h0[None], hs[:-1]]) @ dW_h
    if not isinstance(db, zero):
        E = E + db[None, None, :]
    if not isinstance(dxs, zero):
        E = E + dxs @ W_x
    dh0 = jnp.zeros_like(h0) if isinstance(dh0, zero) else dh0

    def step(dh, inputs):
        e, slope = inputs
        dh = slope * (e + dh @ W_h)
        return dh, dh

    _, dhs = lax.scan(step, dh0, (E, 1 - hs * hs), unroll=unroll)
    return hs, dhs


def _run_vanilla_fast(cell, params, carry_N, xs_TNI, lengths_N, *, reverse, remat, return_carries, plan):
    """Run :func:`_vanilla_layer` over ``xs_TNI [T, N, I]`` from ``carry_N [N, H]``, then the cell's head:
    ``(h_T [N, H], ys_TNO)``. The options were refused by :func:`unsupported_reason` unless at their defaults."""
    del lengths_N, reverse, remat, return_carries
    T, N = xs_TNI.shape[:2]
    H = params.W_hh.shape[0]
    hs = _vanilla_layer(plan.unroll, params.W_xh, params.W_hh, params.b_h, carry_N, xs_TNI)
    ys = jax.vmap(partial(cell.readout, params))(hs.reshape(T * N, H))
    return hs[-1], ys.reshape((T, N, *ys.shape[1:]))
