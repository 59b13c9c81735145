"""``impl="scan"``: ``lax.scan`` over time, differentiated by JAX; it runs every cell and every option.

The cell is written for one example; this module maps it over the flattened batch ``N`` with one
``jax.vmap`` and follows the :class:`~rnn_jax.plan.Plan`'s knobs: ``hoist`` (the input projection of a
block of steps as one matmul outside the sequential loop), ``unroll`` and the ``saved`` residuals of the
backward pass, plus ``run``'s ``remat`` (``"step"``: ``jax.checkpoint`` per step; ``"sqrt"``: one carry
stored per chunk of ``ceil(sqrt T)`` steps).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax.cells import Cell

__all__ = ["unsupported_reason", "available"]


class _Loop(NamedTuple):
    """The static options of one scan over time."""

    T: int
    reverse: bool
    remat: bool | str
    return_carries: bool
    unroll: int
    saved: tuple[str, ...]


def available() -> str | None:
    """Always usable: plain ``lax.scan``."""
    return None


def unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False):
    """``None``: the scan runs every cell with every option of :func:`~rnn_jax.scan.run`."""
    del cell, params, xs_TNI, lengths, reverse, remat, return_carries
    return None


def _where(keep, new, old):
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _apply(fn, block):
    """``fn(block)``, or the block itself where there is no ``fn``."""
    return block if fn is None else fn(block)


def _readout_outs(readout, outs, return_carries):
    return (_apply(readout, outs[0]), outs[1]) if return_carries else _apply(readout, outs)


def _scan_one(step, carry, xs, length, *, project, readout, loop: _Loop):
    """Scan ``step(carry, u) -> (carry, z)`` over the leading axis of ``xs`` for one example.

    ``project`` (``[n, I] -> [n, ...]``) and ``readout`` (``[n, ...] -> [n, O]``), where not ``None``, map whole
    blocks of steps: all ``T`` at once around the loop, or one chunk at a time inside the checkpointed chunk of
    ``remat="sqrt"`` (so that no ``[T, 4H]`` projection or readout is kept alive there).
    """

    def body(c, inputs):
        t, u = inputs
        new_c, z = step(c, u)
        if length is not None:
            new_c = _where(t < length, new_c, c)
        return new_c, ((z, new_c) if loop.return_carries else z)

    if loop.remat == "sqrt":
        return _scan_sqrt(body, carry, xs, project=project, readout=readout, loop=loop)
    if loop.remat in (True, "step"):
        body = jax.checkpoint(body)
    elif loop.saved:  # store only the named pre-activations per step; recompute the elementwise rest
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(*loop.saved))
    ts = jnp.arange(loop.T)
    carry, outs = lax.scan(body, carry, (ts, _apply(project, xs)), reverse=loop.reverse, unroll=loop.unroll)
    return carry, _readout_outs(readout, outs, loop.return_carries)


def _scan_sqrt(body, carry, xs, *, project, readout, loop: _Loop):
    """Nested scan with sqrt(T) checkpointing: store one carry per chunk, recompute inside a chunk.

    Memory for the backward pass falls from O(T) step residuals to O(sqrt T) carries plus the residuals
    of one chunk; the input projection and the readout run per chunk inside the checkpoint, so only
    ``xs`` and the outputs grow with ``T``. Padding steps (``t >= T``) leave the carry alone; their
    outputs are cut off.
    """
    T = loop.T
    chunk = math.isqrt(T - 1) + 1 if T > 1 else 1
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T

    def padded(a):
        a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    # Steps past the end get t >= T and are masked in masked_body (no scatter into a [T] constant).
    ts_c = jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk)
    xs_c = jax.tree.map(padded, xs)

    def masked_body(c, inputs):
        t, _ = inputs
        new_c, out = body(c, inputs)
        return _where(t < T, new_c, c), out

    step_body = masked_body if pad else body  # no per-step select when the chunks tile T exactly

    @jax.checkpoint
    def chunk_body(c, inputs):
        ts, xs_chunk = inputs
        c, outs = lax.scan(step_body, c, (ts, _apply(project, xs_chunk)), reverse=loop.reverse, unroll=loop.unroll)
        return c, _readout_outs(readout, outs, loop.return_carries)

    carry, outs = lax.scan(chunk_body, carry, (ts_c, xs_c), reverse=loop.reverse)
    outs = jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:T], outs)
    return carry, outs


def _run_one(cell, params, carry, xs_T, length, *, hoist: bool, loop: _Loop):
    """One example: ``carry`` without a batch axis, ``xs_T`` with time first."""
    if isinstance(cell, Cell):
        readout = jax.vmap(partial(cell.readout, params))
        if hoist:  # the input projection of a block of steps is one matmul outside the sequential loop
            project, step = jax.vmap(partial(cell.project, params)), partial(cell.step, params)
        else:
            project = None

            def step(c, x):
                return cell.step(params, c, cell.project(params, x))

    else:
        project, readout, step = None, None, partial(cell, params)
    return _scan_one(step, carry, xs_T, length, project=project, readout=readout, loop=loop)


def _run_scan(cell, params, carry_N, xs_TNI, lengths_N, *, reverse, remat, return_carries, plan):
    """The plain ``lax.scan`` over time, vmapped over ``N`` (the cell sees one example).

    Returns ``(final_carry_N, ys_TNO)``, or ``(final_carry_N, ys_TNO, carries_TN)`` with ``return_carries``;
    outputs of padded steps are left as computed (``run`` masks them).
    """
    T = jax.tree.leaves(xs_TNI)[0].shape[0]
    loop = _Loop(T, bool(reverse), remat, bool(return_carries), plan.unroll, plan.saved)
    one = partial(_run_one, cell, params, hoist=plan.hoist, loop=loop)
    in_axes = (0, 1, None if lengths_N is None else 0)
    out_axes = (0, 1, 1) if return_carries else (0, 1)
    fn = jax.vmap(lambda c, x, n: _flatten_outs(one(c, x, n), return_carries), in_axes=in_axes, out_axes=out_axes)
    return fn(carry_N, xs_TNI, lengths_N)


def _flatten_outs(result, return_carries):
    carry, outs = result
    return (carry, *outs) if return_carries else (carry, outs)
