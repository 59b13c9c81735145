"""Sequential processing of a fixed input: a recurrent model that reads it by glimpses, choosing where to
look next from what it has seen, then decides."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.errors import UserError
from rnn_jax.scan import run, vmap_batch
from rnn_jax.topologies.basic import Dense, cell_init, cell_of, dense, dense_init, hidden_of, step_impl

Array = jax.Array

__all__ = ["GlimpseParams", "GlimpseOutput", "image_patches", "glimpse_init", "glimpse_apply"]


class GlimpseParams(NamedTuple):
    """A recurrent glimpse model over a fixed input of ``N`` parts with ``F`` features each."""

    cell: Any  # reads [glimpse F; where it looked N]
    where: Dense  # [H, N]: the next location's logits from the hidden state
    head: Dense  # [H, C]: the decision, from the final hidden state


class GlimpseOutput(NamedTuple):
    """``logits [..., C]`` of the decision and ``looks [..., T, N]``: where each step looked (rows sum to 1)."""

    logits: Array
    looks: Array


def image_patches(image_HW, patch: int) -> Array:
    """Cut ``[..., Hi, Wi]`` images into ``N = (Hi/p)(Wi/p)`` row-major ``p x p`` patches: ``[..., N, p*p]``."""
    image_HW = jnp.asarray(image_HW)
    *batch, Hi, Wi = image_HW.shape
    if Hi % patch or Wi % patch:
        raise UserError(f"image of {Hi}x{Wi} pixels does not split into {patch}x{patch} patches")
    x = image_HW.reshape(*batch, Hi // patch, patch, Wi // patch, patch)
    x = jnp.moveaxis(x, -3, -2)  # [..., rows, cols, p, p]
    return x.reshape(*batch, (Hi // patch) * (Wi // patch), patch * patch)


def glimpse_init(
    key, *, n_parts: int, part_size: int, hidden_size: int, n_classes: int, cell: str = "gru", dtype=jnp.float32
) -> GlimpseParams:
    """Params of :func:`glimpse_apply`."""
    k1, k2, k3 = jax.random.split(key, 3)
    return GlimpseParams(
        cell=cell_init(cell, k1, part_size + n_parts, hidden_size, dtype),
        where=dense_init(k2, hidden_size, n_parts, dtype),
        head=dense_init(k3, hidden_size, n_classes, dtype),
    )


def glimpse_apply(
    params: GlimpseParams, parts, *, steps: int, hard: bool = False, impl: str = "auto", unroll: int | None = None
) -> GlimpseOutput:
    """Read a fixed input by ``steps`` glimpses, choosing each time where to look next; decide at the end.

    For one example with parts ``x [N, F]``::

        a_t = softmax(h_{t-1} W_where + b)        # where to look (from what was seen so far)
        g_t = a_t x                               # the glimpse: the attended part
        h_t = cell(h_{t-1}, [g_t; a_t])           # remember what was seen, and where
        logits = h_T W_head + b                   # decide at the end

    ``hard=True`` looks at exactly one part, ``one_hot(argmax a_t)``, with the soft weights' gradient
    (straight-through). ``parts`` is ``[..., N, F]`` (e.g. :func:`image_patches`). The glimpse step is a
    plain function around the cell: it runs with :func:`step_impl` of ``impl`` and with ``unroll``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UserError(f"glimpse_apply needs steps >= 1, got {steps!r}")
    parts = jnp.asarray(parts)
    cell = cell_of(params.cell)
    N = params.where.W.shape[1]
    if parts.ndim < 2 or parts.shape[-2] != N:
        raise ValueError(f"parts must be [..., N={N}, F], got shape {parts.shape}")

    def one(x_NF):
        def step(p, c, _):
            a_N = jax.nn.softmax(dense(p.where, hidden_of(c)).astype(jnp.float32))
            if hard:
                a_N = jax.nn.one_hot(jnp.argmax(a_N), N, dtype=a_N.dtype) + a_N - lax.stop_gradient(a_N)
            a_N = a_N.astype(x_NF.dtype)
            c, _ = cell(p.cell, c, jnp.concatenate([a_N @ x_NF, a_N]))
            return c, a_N

        xs = jnp.zeros((steps, 0), x_NF.dtype)  # no per-step input: each step chooses its own glimpse
        c, looks = run(step, params, cell.init_carry(params.cell), xs, impl=step_impl(impl), unroll=unroll)
        return dense(params.head, hidden_of(c)), looks

    logits, looks = vmap_batch(one, len(parts.shape[:-2]))(parts)
    return GlimpseOutput(logits, looks)
