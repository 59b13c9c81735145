"""rnn_jax's own rows of ``rnn-jax bench``: ``run`` with each ``impl=`` and the harness variants; each builds
``(loss(params, xs), params)`` for one cell and shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from rnn_jax.cells import CELLS, Cell, identity_readout, resolve_cell
from rnn_jax.errors import UserError
from rnn_jax.scan import IMPLS, run
from rnn_jax.tools.bench.peers import CUDNN_IMPL, cudnn_impl, flax_impl, nnx_rnn_impl
from rnn_jax.tools.bench.timing import Shape, mean_square


def bench_cell(name: str) -> Cell:
    """The cell timed as ``name`` (a built-in's name or a user's ``"module:attr"``); the vanilla RNN without
    its output head, like torch's nn.RNN."""
    cell = resolve_cell(name)
    return dataclasses.replace(cell, readout=identity_readout) if cell is CELLS["vanilla"] else cell


def cell_params(name: str, key, s: Shape, dtype):
    """Params of one ``I -> H`` layer from the cell's own ``init`` (the vanilla head goes unused: see
    :func:`bench_cell`)."""
    cell = resolve_cell(name)
    if cell.init is None:
        raise UserError(f"the cell {name!r} has no init; the bench needs Cell(..., init=fn(key, I, H, dtype))")
    return cell.init(key, s.I, s.H, dtype)


def run_impl(name, s, dtype, key, **run_kwargs):
    cell = bench_cell(name)

    def loss(params, xs):
        return mean_square(run(cell, params, None, xs, **run_kwargs)[1])

    return loss, cell_params(name, key, s, dtype)


def _inside_impl(name, s, dtype, key, **run_kwargs):
    """Input projection inside the step: a plain function, which ``run`` cannot hoist."""
    cell = bench_cell(name)

    def plain(params, carry, x):
        return cell(params, carry, x)

    def loss(params, xs):
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        return mean_square(run(plain, params, carry, xs, **run_kwargs)[1])

    return loss, cell_params(name, key, s, dtype)


def _hoisted_impl(name, s, dtype, key, **run_kwargs):
    """Input projection of all steps as one matmul before the loop, on every backend."""
    cell = bench_cell(name)

    def step(params, carry, u):
        return cell.step(params, carry, u)

    def loss(params, xs):
        us = jax.vmap(jax.vmap(cell.project, (None, 0)), (None, 0))(params, xs)
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        return mean_square(run(step, params, carry, us, **run_kwargs)[1])

    return loss, cell_params(name, key, s, dtype)


def python_loop_impl(name, s, dtype, key):
    """A Python ``for`` loop over time under ``jit``: the program (and its compile time) grows with T."""
    cell = bench_cell(name)

    def loss(params, xs):
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        step = jax.vmap(cell, (None, 0, 0))
        ys = []
        for t in range(xs.shape[1]):
            carry, y = step(params, carry, xs[:, t])
            ys.append(y)
        return mean_square(jnp.stack(ys, axis=1))

    return loss, cell_params(name, key, s, dtype)


JAX_IMPLS: dict[str, Callable] = {
    "rnn_jax": run_impl,
    "rnn_jax remat=step": partial(run_impl, remat="step"),
    "rnn_jax remat=sqrt": partial(run_impl, remat="sqrt"),
    "scan inside": _inside_impl,
    "scan hoisted": _hoisted_impl,
    "python loop": python_loop_impl,
    "flax LSTMCell": partial(flax_impl, cell_name="LSTMCell"),
    "flax OptimizedLSTMCell": partial(flax_impl, cell_name="OptimizedLSTMCell"),
    "flax SimpleCell": partial(flax_impl, cell_name="SimpleCell"),
    "flax GRUCell": partial(flax_impl, cell_name="GRUCell"),
    "flax_interop.RNN OptimizedLSTMCell": partial(nnx_rnn_impl, ours=True),
    "nnx.RNN OptimizedLSTMCell": partial(nnx_rnn_impl, ours=False),
    CUDNN_IMPL: cudnn_impl,
}
"""Implementations by name: ``builder(cell, shape, dtype, key) -> (loss(params, xs), params)`` or ``None``
where the implementation has no such cell. ``rnn_jax unroll=U`` is added for every ``--unrolls`` value."""

DEFAULT_IMPLS = ("rnn_jax",)
RUN_IMPLS = IMPLS
"""``rnn_jax.run(..., impl=...)`` values ``--impls`` takes; ``auto`` is the row ``rnn_jax``."""
IMPL_ROW = "rnn_jax impl={}"


def jax_impl(impl: str):
    if impl.startswith("rnn_jax unroll="):
        return partial(run_impl, unroll=int(impl.split("=")[1]))
    if impl.startswith(IMPL_ROW.format("")):
        return partial(run_impl, impl=impl.split("=")[1])
    return JAX_IMPLS[impl]
