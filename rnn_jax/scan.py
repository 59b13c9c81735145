"""The one scan over time: :func:`run`, the mechanism around every implementation of it.

``run(cell, params, carry, xs)`` applies ``cell(params, carry, x_t) -> (carry, y_t)`` at every step
``t`` with the *same* params, and returns the final carry and every ``y_t``. It is the library's
one scan over time; everything recurrent (stacks, encoders, decoders with attention) goes through it.

Shapes: ``xs`` is ``[..., T, I]`` (batch-major, the default) or ``[T, ..., I]`` (``time_major=True``),
with any number of leading batch dimensions ``...`` (none at all for a single sequence). Cells are
written for one example.

Variable lengths: with ``lengths`` (an integer array of the batch shape), steps ``t >= length`` leave
the carry unchanged and their outputs are exactly zero, so the final carry is the carry after the
last real step. With ``reverse=True`` the scan runs from ``T-1`` down to ``0``; the padded steps come
first and leave the initial carry alone, so the reverse direction starts at each sequence's own last
real step (padding stays at the end, as in a bidirectional encoder).

What ``run`` does, and nothing more: validate the arguments, lay the inputs out as ``[T, N, ...]`` (time
first, every batch dimension flattened into ``N``) and the carry as ``[N, ...]``, dispatch to the
implementation named by ``impl`` through the one table (:mod:`rnn_jax.kernels.registry`) following a
:class:`~rnn_jax.plan.Plan` (:mod:`rnn_jax.plan`: what ``"auto"`` and the unset knobs pick, per lowering
platform), zero the outputs of padded steps, and restore the caller's layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.cells import Cell
from rnn_jax.errors import UserError
from rnn_jax.kernels.registry import IMPLS, TABLE, get_impl, platform_name
from rnn_jax.plan import PLAN_PLATFORMS, auto_plan, platform_free

__all__ = [
    "run",
    "zeros_carry",
    "broadcast_carry",
    "vmap_batch",
    "check_run_args",
    "IMPLS",
    "REMAT_OPTIONS",
]

REMAT_OPTIONS = (False, True, "none", "step", "sqrt")


# ---------------------------------------------------------------------------------------------------
# Validation at the boundary
# ---------------------------------------------------------------------------------------------------


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _sequence_layout(xs, time_major: bool) -> tuple[int, tuple[int, ...]]:
    """Return ``(T, batch_shape)`` of ``xs``, checking that every leaf agrees."""
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise UserError("xs is empty: run needs at least one input array")
    T = batch = None
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) < 2:
            raise UserError(
                f"each input must have a time axis and a feature axis, got shape {_shape_str(shape)}; "
                "expected [..., T, I] (or [T, ..., I] with time_major=True)"
            )
        leaf_T, leaf_batch = (shape[0], shape[1:-1]) if time_major else (shape[-2], shape[:-2])
        if T is None:
            T, batch = leaf_T, leaf_batch
        elif (leaf_T, leaf_batch) != (T, batch):
            raise UserError(
                f"inputs disagree: one has T={T} and batch shape {_shape_str(batch)}, another T={leaf_T} "
                f"and batch shape {_shape_str(leaf_batch)}"
            )
    if T < 1:
        raise UserError(f"the sequence must have at least one step, got T={T}")
    return T, tuple(batch)


def _check_inputs(cell, params, xs):
    if not isinstance(cell, Cell):
        return
    expected = cell.input_size(params)
    for leaf in jax.tree.leaves(xs):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                f"xs must be floating point feature vectors, got dtype {jnp.result_type(leaf)}; "
                "embed or one-hot encode token ids first"
            )
        if jnp.shape(leaf)[-1] != expected:
            raise UserError(
                f"input feature size mismatch: the {cell.name} params expect I={expected}, "
                f"got inputs of shape {_shape_str(jnp.shape(leaf))} (I={jnp.shape(leaf)[-1]})"
            )


def _check_carry(cell, params, carry, batch: tuple[int, ...]):
    if isinstance(cell, Cell):
        single = jax.eval_shape(cell.init_carry, params)
        expected = jax.tree.map(lambda s: jax.ShapeDtypeStruct(batch + s.shape, s.dtype), single)
        got_def, want_def = jax.tree.structure(carry), jax.tree.structure(expected)
        if got_def != want_def:
            raise UserError(
                f"carry has the wrong structure for the {cell.name} cell: expected {want_def}, got {got_def}"
            )
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)):
            if jnp.shape(got) != want.shape:
                raise UserError(
                    f"carry shape mismatch for the {cell.name} cell: expected {_shape_str(want.shape)} "
                    f"(batch shape {_shape_str(batch)} + {_shape_str(want.shape[len(batch) :])}), "
                    f"got {_shape_str(jnp.shape(got))}"
                )
    else:
        for got in jax.tree.leaves(carry):
            if tuple(jnp.shape(got)[: len(batch)]) != batch:
                raise UserError(
                    f"carry leaves must start with the batch shape {_shape_str(batch)}, "
                    f"got {_shape_str(jnp.shape(got))}"
                )


def _check_lengths(lengths, xs, time_major: bool):
    """``lengths``: integers of the batch shape, in ``[0, T]`` where the values are known (outside ``jit``)."""
    T, batch = _sequence_layout(xs, time_major)
    dtype = jnp.result_type(lengths)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {dtype}")
    shape = tuple(jnp.shape(lengths))
    if shape != batch:
        hint = ""
        other = jnp.shape(jax.tree.leaves(xs)[0])
        flipped = other[1:-1] if not time_major else other[:-2]
        if shape == flipped or shape == (T,):
            hint = (
                f"; {_shape_str(shape)} is what the batch would be with time_major={not time_major} "
                f"(xs has shape {_shape_str(other)}): is time_major={time_major} wrong?"
            )
        raise UserError(f"lengths must have the batch shape {_shape_str(batch)}, got {_shape_str(shape)}{hint}")
    if not isinstance(lengths, jax.core.Tracer):  # values can only be checked outside jit
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > T):
            raise UserError(f"lengths must lie in [0, T={T}], got values from {values.min()} to {values.max()}")


def _cell_name(cell) -> str:
    if isinstance(cell, Cell):
        return f"the {cell.name} cell"
    return f"the cell function {getattr(cell, '__qualname__', None) or type(cell).__name__}"


def _struct(tree) -> str:
    """A pytree's structure with each leaf's shape and dtype, for error messages."""
    return str(jax.tree.map(lambda a: f"{jnp.result_type(a)}{list(jnp.shape(a))}", tree))


def _first(tree, n_axes: int):
    """Shapes and dtypes (weak types kept) of each leaf's first entry along its ``n_axes`` leading axes."""
    return jax.eval_shape(lambda t: jax.tree.map(lambda a: jnp.asarray(a)[(0,) * n_axes], t), tree)


def _check_step(cell, params, carry, xs, n_batch: int):
    """Trace one step of one example (shapes only): the cell must return a ``(carry, y)`` pair whose carry
    has the structure, shapes and dtypes of the carry it was given (``lax.scan`` feeds it back)."""
    carry_1 = jax.eval_shape(cell.init_carry, params) if carry is None else _first(carry, n_batch)
    out = jax.eval_shape(cell, params, carry_1, _first(xs, n_batch + 1))
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        got = f"a {type(out).__name__} of {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__
        raise TypeError(
            f"{_cell_name(cell)} must return a pair (new_carry, y), got {got}: {_struct(out)}; "
            "return (carry, y), e.g. (h, h) when the output is the hidden state"
        )
    same = jax.tree.structure(out[0]) == jax.tree.structure(carry_1) and all(
        a.shape == b.shape and (a.dtype == b.dtype or a.weak_type)  # lax.scan casts a weakly typed start
        for a, b in zip(jax.tree.leaves(carry_1), jax.tree.leaves(out[0]))
    )
    if not same:
        raise TypeError(
            f"{_cell_name(cell)} changes its carry across a step: it takes {_struct(carry_1)} and returns "
            f"{_struct(out[0])}; return a carry with the same structure, shapes and dtypes as the one it reads"
        )


def check_run_args(cell, params, carry, xs, *, lengths=None, time_major: bool = False) -> tuple[int, tuple[int, ...]]:
    """Check :func:`run`'s array arguments against each other and the cell; return ``(T, batch_shape)``.

    Raises :class:`~rnn_jax.errors.UserError` (a ValueError) or TypeError naming what was expected,
    what came and the fix. Shared by every function that runs a cell over time.
    """
    T, batch = _sequence_layout(xs, time_major)
    _check_inputs(cell, params, xs)
    if carry is None:
        if not isinstance(cell, Cell):
            raise UserError("carry=None (zeros) needs a Cell; pass an explicit initial carry for a plain function")
    else:
        _check_carry(cell, params, carry, batch)
    if lengths is not None:
        _check_lengths(lengths, xs, time_major)
    _check_step(cell, params, carry, xs, len(batch))
    return T, batch


# ---------------------------------------------------------------------------------------------------
# Layout: the caller's shapes to [T, N, ...] and back
# ---------------------------------------------------------------------------------------------------


class _Call(NamedTuple):
    """One call's static arguments, validated: the layout of ``xs`` and the options of :func:`run`."""

    T: int
    batch: tuple[int, ...]
    time_major: bool
    reverse: bool
    remat: bool | str
    return_carries: bool


def vmap_batch(fn: Callable, n_batch_dims: int, in_axes=0, out_axes=0) -> Callable:
    """``fn`` written for one example, mapped over ``n_batch_dims`` batch dimensions (one ``jax.vmap`` each).

    ``in_axes``/``out_axes`` are those of each ``jax.vmap``: the position of the batch dimension that
    this level maps. Each level removes one, so the same axes serve every level (``[T, B1, B2, I]``
    with ``in_axes=1`` maps ``B1``, then ``B2``).
    """
    for _ in range(n_batch_dims):
        fn = jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
    return fn


def _to_time_major_flat(a, call: _Call):
    """``[..., T, I]`` (or ``[T, ..., I]``) to ``[T, N, I]`` with every batch dimension in ``N``."""
    a_T = a if call.time_major else jnp.moveaxis(a, -2, 0)
    return jnp.reshape(a_T, (call.T, math.prod(call.batch), a_T.shape[-1]))


def _from_time_major_flat(y, call: _Call):
    """``[T, N, ...]`` back to the layout and batch shape of the call's inputs."""
    y = jnp.reshape(y, (call.T, *call.batch, *y.shape[2:]))
    return y if call.time_major else jnp.moveaxis(y, 0, len(call.batch))


def _carry_to_flat(cell, params, carry, call: _Call):
    """The initial carry with every batch dimension flattened into one leading ``N`` (``None``: the cell's
    ``init_carry`` broadcast over the batch)."""
    N, n = math.prod(call.batch), len(call.batch)
    if carry is None:
        return broadcast_carry(cell.init_carry(params), (N,))
    return jax.tree.map(lambda c: jnp.reshape(c, (N, *jnp.shape(c)[n:])), carry)


def _restore(out, lengths_N, call: _Call):
    """An implementation's ``(final_N, ys_TNO[, carries_TN])`` in the caller's layout, padded steps' outputs zero."""
    final_N, ys_TNO, *carries = out
    if lengths_N is not None:
        mask_TN = jnp.arange(call.T)[:, None] < lengths_N[None, :]
        ys_TNO = jax.tree.map(lambda y: jnp.where(lax.expand_dims(mask_TN, range(2, jnp.ndim(y))), y, 0), ys_TNO)
    final = jax.tree.map(lambda c: jnp.reshape(c, (*call.batch, *jnp.shape(c)[1:])), final_N)
    restored = [jax.tree.map(lambda y: _from_time_major_flat(y, call), seq) for seq in (ys_TNO, *carries)]
    return (final, *restored)


# ---------------------------------------------------------------------------------------------------
# Dispatch through the table
# ---------------------------------------------------------------------------------------------------


def _check_options(cell, *, remat, unroll, impl):
    if not callable(cell):
        raise TypeError(
            f"cell must be a Cell or a function (params, carry, x) -> (carry, y), got {type(cell).__name__}"
        )
    names = ("auto", *TABLE)  # the table as it is now (IMPLS is the same, taken at import)
    if impl not in names:
        raise UserError(f"impl must be one of {names}, got {impl!r}; impl='auto' picks one per platform")
    if remat not in REMAT_OPTIONS:
        raise UserError(f"remat must be one of {REMAT_OPTIONS}, got {remat!r}")
    if unroll is not None and (not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1):
        raise UserError(f"unroll must be a positive integer, got {unroll!r} (or None: chosen by platform and size)")


def _refuse_unless_it_runs(impl: str, cell, params, xs_TNI, **options):
    """An implementation named outright must be available here and accept the call; else one line naming why."""
    entry = get_impl(impl)
    if (reason := entry.available()) is not None:
        raise UserError(f"impl={impl!r} is not available here: {reason}; use impl='scan' (or impl='auto')")
    if (reason := entry.unsupported_reason(cell, params, xs_TNI, **options)) is not None:
        raise UserError(f"impl={impl!r} cannot run this call: {reason}; use impl='scan' (or impl='auto')")


def _execute(cell, params, carry_N, xs_TNI, lengths_N, *, call: _Call, platform: str, **knobs):
    """Plan the call for ``platform`` and run the planned implementation."""
    options = dict(reverse=call.reverse, remat=call.remat, return_carries=call.return_carries)
    plan = auto_plan(cell, params, carry_N, xs_TNI, platform=platform, lengths=lengths_N, **options, **knobs)
    return get_impl(plan.impl).run(cell, params, carry_N, xs_TNI, lengths_N, plan=plan, **options)


def _dispatch(cell, args, call: _Call, **knobs):
    """Run ``args = (params, carry_N, xs_TNI, lengths_N)`` with the plan of the platform being lowered for.

    Where every platform would follow the same plan (:func:`~rnn_jax.plan.platform_free`) there is one plan and
    no switch. Otherwise each branch of ``lax.platform_dependent`` builds its own plan: only the lowering
    platform's is kept in the module (both, behind a switch, for a multi-platform export), and outside ``jit``
    only the running platform's runs.
    """
    if platform_free(cell, args[1], **knobs):
        return _execute(cell, *args, call=call, platform=platform_name(), **knobs)
    branches = {p: partial(_execute, cell, call=call, platform=p, **knobs) for p in PLAN_PLATFORMS}
    return lax.platform_dependent(*args, default=partial(_execute, cell, call=call, platform="default", **knobs),
                                  **branches)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------


def run(
    cell: Cell | Callable,
    params: Any,
    carry: Any,
    xs: Any,
    *,
    lengths=None,
    time_major: bool = False,
    reverse: bool = False,
    unroll: int | None = None,
    remat: bool | str = False,
    return_carries: bool = False,
    hoist: bool | None = None,
    impl: str = "auto",
):
    """Run ``cell`` over a sequence with ``lax.scan``: ``h_t, y_t = cell(params, h_{t-1}, x_t)``.

    Args:
      cell: a :class:`~rnn_jax.cells.Cell` (hoisted input projection and output head) or any pure
        function ``cell(params, carry, x) -> (carry, y)`` written for one example.
      params: the cell's params, shared by every step.
      carry: the initial carry with the batch dimensions in front (``[..., H]``), or ``None`` for
        zeros (a ``Cell`` only). A learnable initial state: see :func:`broadcast_carry`.
      xs: ``[..., T, I]``, or ``[T, ..., I]`` with ``time_major=True``; a pytree of such arrays is
        accepted (each leaf with the same ``T`` and batch shape).
      lengths: optional integer array of the batch shape; steps ``t >= lengths`` leave the carry
        unchanged and output zeros. Values outside ``[0, T]`` are refused where they are known (eagerly);
        under ``jit`` they cannot be checked: a length above ``T`` then acts as ``T`` and a negative one as 0.
      time_major: whether time is the first axis of ``xs`` (and of the outputs).
      reverse: run from the last step to the first (outputs stay at their own positions). It respects
        ``lengths``: the padded steps come first and leave the carry alone, so each sequence is read from
        its own last real step back to step 0, and ``ys[t]`` is the output after reading steps ``t..len-1``.
      unroll: steps per iteration of the compiled loop (a speed knob; results do not change);
        ``None`` picks it by lowering platform and carry size (:func:`rnn_jax.plan.auto_unroll`).
      remat: ``False``/``"none"``: store every step's residuals for BPTT; ``True``/``"step"``:
        recompute each step in the backward pass (``jax.checkpoint``); ``"sqrt"``: nested scan that
        stores one carry per chunk of ``ceil(sqrt(T))`` steps (memory ``O(sqrt T)``).
      return_carries: also return the carry after every step.
      hoist: for a ``Cell``, compute the input projection of all steps as one matmul before the loop
        (``True``) or inside each step (``False``); a speed knob, results agree to float rounding.
        ``None`` picks it by cell, lowering platform and carry size (:func:`rnn_jax.plan.auto_hoist`). Ignored for plain
        functions.
      impl: the algorithm, and so the gradient rule (``unroll`` and ``hoist`` never change it):
        ``"scan"``: ``lax.scan`` differentiated by JAX; ``"custom_jvp"``: the vanilla layer with its
        hand-written tangent (weight gradients after the loop; vanilla cell only, no ``lengths``,
        ``reverse``, ``remat``, ``return_carries``); ``"pallas"``: the kernels of :mod:`rnn_jax.kernels`
        (``unroll`` and ``hoist`` do not apply); ``"auto"``: per lowering platform
        (:func:`rnn_jax.plan.auto_plan`): on CPU ``"custom_jvp"`` where it applies, else ``"scan"``. Every
        name in :data:`rnn_jax.kernels.registry.TABLE` is accepted; :func:`rnn_jax.available_impls` lists
        which run here.

    Returns:
      ``(final_carry, ys)``, or ``(final_carry, ys, carries)`` with ``return_carries``; ``ys`` and
      ``carries`` have the time axis where ``xs`` has it.
    """
    _check_options(cell, remat=remat, unroll=unroll, impl=impl)
    T, batch = check_run_args(cell, params, carry, xs, lengths=lengths, time_major=time_major)
    call = _Call(T, batch, bool(time_major), bool(reverse), remat, bool(return_carries))
    xs_TNI = jax.tree.map(lambda a: _to_time_major_flat(a, call), xs)
    lengths_N = None if lengths is None else jnp.reshape(lengths, (math.prod(batch),))
    if impl != "auto":
        _refuse_unless_it_runs(impl, cell, params, xs_TNI, lengths=lengths_N, reverse=call.reverse, remat=remat,
                               return_carries=call.return_carries)  # fmt: skip
    args = (params, _carry_to_flat(cell, params, carry, call), xs_TNI, lengths_N)
    out = _dispatch(cell, args, call, impl=impl, hoist=hoist, unroll=unroll)
    return _restore(out, lengths_N, call)


# ---------------------------------------------------------------------------------------------------
# Carries
# ---------------------------------------------------------------------------------------------------


def zeros_carry(cell: Cell, params, batch_shape: Sequence[int] = ()):
    """The zero carry of ``cell`` for a batch of shape ``batch_shape``."""
    batch_shape = tuple(batch_shape)
    return jax.tree.map(lambda z: jnp.zeros(batch_shape + z.shape, z.dtype), cell.init_carry(params))


def broadcast_carry(carry, batch_shape: Sequence[int]):
    """Broadcast one example's carry (e.g. a learnable ``h0`` held in the params) over a batch.

    Gradients flow back to ``carry`` summed over the batch, as they should for a shared initial state.
    """
    batch_shape = tuple(batch_shape)
    return jax.tree.map(lambda c: jnp.broadcast_to(c, batch_shape + jnp.shape(c)), carry)
