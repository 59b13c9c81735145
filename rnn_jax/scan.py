"""The one scan over time: :func:`run`, plus stacking and bidirectional runs built on it.

``run(cell, params, carry, xs)`` applies ``cell(params, carry, x_t) -> (carry, y_t)`` at every step
``t`` with the *same* params, and returns the final carry and every ``y_t``. It is the library's
one scan over time; everything recurrent (stacks, encoders, decoders with attention) goes through it.
(For the vanilla RNN on CPU it runs the recurrence through a ``custom_jvp`` whose rule scans the same
loop and its tangent: see :func:`uses_vanilla_fast_path`.)

Shapes: ``xs`` is ``[..., T, I]`` (batch-major, the default) or ``[T, ..., I]`` (``time_major=True``),
with any number of leading batch dimensions ``...`` (none at all for a single sequence). Cells are
written for one example and ``run`` maps them over the batch dimensions with ``jax.vmap``.

Variable lengths: with ``lengths`` (an integer array of the batch shape), steps ``t >= length`` leave
the carry unchanged and their outputs are exactly zero, so the final carry is the carry after the
last real step. With ``reverse=True`` the scan runs from ``T-1`` down to ``0``; the padded steps come
first and leave the initial carry alone, so the reverse direction starts at each sequence's own last
real step (padding stays at the end, as in a bidirectional encoder).

Where it pays (a :class:`~rnn_jax.cells.Cell`), the input projection of all ``T`` steps is one large
matmul before the loop and the output head one large matmul after it; only the recurrence itself is
sequential. ``hoist=None`` (the default) chooses hoisting by cell, backend and carry size
(:func:`auto_hoist`: on CPU the LSTM and GRU project inside the step) and ``unroll=None`` the loop's
unroll by backend and carry size (:func:`auto_unroll`); the measurements behind both are in
``docs/bench.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.cells import Cell, vanilla_cell

__all__ = [
    "run",
    "run_stack",
    "bidirectional",
    "zeros_carry",
    "broadcast_carry",
    "auto_unroll",
    "auto_hoist",
    "auto_saved",
    "uses_vanilla_fast_path",
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
        raise ValueError("xs is empty: run needs at least one input array")
    T = batch = None
    for leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) < 2:
            raise ValueError(
                f"each input must have a time axis and a feature axis, got shape {_shape_str(shape)}; "
                "expected [..., T, I] (or [T, ..., I] with time_major=True)"
            )
        leaf_T, leaf_batch = (shape[0], shape[1:-1]) if time_major else (shape[-2], shape[:-2])
        if T is None:
            T, batch = leaf_T, leaf_batch
        elif (leaf_T, leaf_batch) != (T, batch):
            raise ValueError(
                f"inputs disagree: one has T={T} and batch shape {_shape_str(batch)}, another T={leaf_T} "
                f"and batch shape {_shape_str(leaf_batch)}"
            )
    if T < 1:
        raise ValueError(f"the sequence must have at least one step, got T={T}")
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
            raise ValueError(
                f"input feature size mismatch: the {cell.name} params expect I={expected}, "
                f"got inputs of shape {_shape_str(jnp.shape(leaf))} (I={jnp.shape(leaf)[-1]})"
            )


def _check_carry(cell, params, carry, batch: tuple[int, ...]):
    if isinstance(cell, Cell):
        single = jax.eval_shape(cell.init_carry, params)
        expected = jax.tree.map(lambda s: jax.ShapeDtypeStruct(batch + s.shape, s.dtype), single)
        got_def, want_def = jax.tree.structure(carry), jax.tree.structure(expected)
        if got_def != want_def:
            raise ValueError(
                f"carry has the wrong structure for the {cell.name} cell: expected {want_def}, got {got_def}"
            )
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(expected)):
            if jnp.shape(got) != want.shape:
                raise ValueError(
                    f"carry shape mismatch for the {cell.name} cell: expected {_shape_str(want.shape)} "
                    f"(batch shape {_shape_str(batch)} + {_shape_str(want.shape[len(batch) :])}), "
                    f"got {_shape_str(jnp.shape(got))}"
                )
    else:
        for got in jax.tree.leaves(carry):
            if tuple(jnp.shape(got)[: len(batch)]) != batch:
                raise ValueError(
                    f"carry leaves must start with the batch shape {_shape_str(batch)}, "
                    f"got {_shape_str(jnp.shape(got))}"
                )


def _check_lengths(lengths, T: int, batch: tuple[int, ...]):
    dtype = jnp.result_type(lengths)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {dtype}")
    if tuple(jnp.shape(lengths)) != batch:
        raise ValueError(f"lengths must have the batch shape {_shape_str(batch)}, got {_shape_str(jnp.shape(lengths))}")
    if not isinstance(lengths, jax.core.Tracer):  # values can only be checked outside jit
        values = np.asarray(lengths)
        if values.size and (values.min() < 0 or values.max() > T):
            raise ValueError(f"lengths must lie in [0, T={T}], got values from {values.min()} to {values.max()}")


# ---------------------------------------------------------------------------------------------------
# The scan itself, for one example
# ---------------------------------------------------------------------------------------------------


def _where(keep, new, old):
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _mask_time(mask_T, ys):
    """Zero every output at the steps where ``mask_T`` is False."""
    return jax.tree.map(lambda y: jnp.where(lax.expand_dims(mask_T, range(1, jnp.ndim(y))), y, 0), ys)


def _scan_one(step, carry, xs, length, T, *, project, readout, reverse, unroll, remat, return_carries, saved=()):
    """Scan ``step(carry, u) -> (carry, z)`` over the leading axis of ``xs`` for one example.

    ``project`` (``[n, I] -> [n, ...]``) and ``readout`` (``[n, ...] -> [n, O]``) map whole blocks of
    steps: all ``T`` at once around the loop, or one chunk at a time inside the checkpointed chunk of
    ``remat="sqrt"`` (so that no ``[T, 4H]`` projection or readout is kept alive there).
    """

    def body(c, inputs):
        t, u = inputs
        new_c, z = step(c, u)
        if length is not None:
            new_c = _where(t < length, new_c, c)
        return new_c, ((z, new_c) if return_carries else z)

    if remat == "sqrt":
        return _scan_sqrt(
            body,
            carry,
            xs,
            T,
            project=project,
            readout=readout,
            reverse=reverse,
            unroll=unroll,
            return_carries=return_carries,
        )
    if remat in (True, "step"):
        body = jax.checkpoint(body)
    elif saved:  # store only the named pre-activations per step; recompute the elementwise rest
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(*saved))
    carry, outs = lax.scan(body, carry, (jnp.arange(T), project(xs)), reverse=reverse, unroll=unroll)
    return carry, _readout_outs(readout, outs, return_carries)


def _readout_outs(readout, outs, return_carries):
    return (readout(outs[0]), outs[1]) if return_carries else readout(outs)


def _scan_sqrt(body, carry, xs, T, *, project, readout, reverse, unroll, return_carries):
    """Nested scan with sqrt(T) checkpointing: store one carry per chunk, recompute inside a chunk.

    Memory for the backward pass falls from O(T) step residuals to O(sqrt T) carries plus the residuals
    of one chunk; the input projection and the readout run per chunk inside the checkpoint, so only
    ``xs`` and the outputs grow with ``T``. Padding steps (``t >= T``) leave the carry alone; their
    outputs are cut off.
    """
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
        c, outs = lax.scan(step_body, c, (ts, project(xs_chunk)), reverse=reverse, unroll=unroll)
        return c, _readout_outs(readout, outs, return_carries)

    carry, outs = lax.scan(chunk_body, carry, (ts_c, xs_c), reverse=reverse)
    outs = jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:T], outs)
    return carry, outs


def auto_unroll(T: int, state_size: int, backend: str | None = None) -> int:
    """The default ``unroll`` (steps per compiled loop iteration) by backend and batch carry size.

    On GPU/TPU each loop iteration costs kernel launches: unroll 8 (H100 anchors: 1.2-2.3x faster
    than unroll 1). On CPU the loop overhead matters only when a step is tiny: unroll 4 when the
    carry of the whole batch has at most :data:`CPU_SMALL_STATE` elements (LSTM B=1, H=32: 1.28x
    less CPU time than unroll 1), else 1 (LSTM B=8, H=64 and B=32, H=256: unroll 4 costs 1.3x and
    1.25x more). Measurements: ``docs/bench.md``.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return max(1, min(8, T))
    return max(1, min(4, T)) if state_size <= CPU_SMALL_STATE else 1


CPU_SMALL_STATE = 256
"""On CPU, batch carries of at most this many elements get unroll 4 by default."""


def _carry_size(cell, params, carry, batch) -> int:
    """Elements in the carry of the whole batch (for the unroll heuristic)."""
    if carry is None:
        one = jax.tree.leaves(jax.eval_shape(cell.init_carry, params))
        return math.prod(batch) * sum(math.prod(s.shape) for s in one)
    return sum(math.prod(jnp.shape(c)) for c in jax.tree.leaves(carry))


CPU_PROJECT_IN_STEP = frozenset({"lstm", "gru"})
"""Cells whose input projection runs inside the step on CPU by default (see :func:`auto_hoist`)."""

CPU_PROJECT_IN_STEP_LARGE = frozenset({"vanilla"})
"""Cells that project inside the step on CPU only when the batch carry exceeds :data:`CPU_SMALL_STATE`."""


def auto_hoist(cell, state_size: int, backend: str | None = None) -> bool:
    """The default ``hoist``: project the inputs of all steps as one matmul before the loop?

    On GPU/TPU yes (one large matmul instead of ``T`` small ones; H100 anchors). On CPU (one core,
    fwd+bwd CPU time) the LSTM and GRU (:data:`CPU_PROJECT_IN_STEP`) project inside each step:
    LSTM B=32, T=128, I=H=256: 190 vs 230 ms; B=1, T=2048, I=H=32: 6.0 vs 7.6 ms; GRU B=32: 139 vs
    174 ms: the step's operands stay in cache and the backward pass does not stream a ``[T, B, 4H]``
    array. The vanilla RNN (:data:`CPU_PROJECT_IN_STEP_LARGE`) only when its batch carry has more than
    :data:`CPU_SMALL_STATE` elements (B=32, H=256: 37-39 vs 41-44 ms; B=1, H=32: hoisted 3.4-3.6 vs 4.6-4.7 ms).
    Other cells: hoisted (not measured). Measurements: ``docs/bench.md``.
    """
    if not isinstance(cell, Cell):
        return False
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return True
    if cell.name in CPU_PROJECT_IN_STEP:
        return False
    return not (cell.name in CPU_PROJECT_IN_STEP_LARGE and state_size > CPU_SMALL_STATE)


def auto_saved(cell, state_size: int, backend: str | None = None) -> tuple[str, ...]:
    """Names of the step values that the backward pass stores per step by default (``remat=False``).

    On CPU with a batch carry of more than :data:`CPU_SMALL_STATE` elements, a cell's
    :attr:`~rnn_jax.cells.Cell.saved` pre-activations only (``jax.checkpoint`` with
    ``save_only_these_names``): the gate nonlinearities are recomputed in the backward pass, which
    streams less memory per step (one core, fwd+bwd, B=32, T=128, I=H=256: LSTM 1.10x less CPU time
    and 44 instead of 68 MB, GRU 1.05x). With a small carry (B=1, H=32, unroll 4) it measured slower
    (LSTM 8.4 vs 5.8 ms), and on other backends it is not measured: there XLA keeps what it chooses.
    Measurements: ``docs/bench.md``.
    """
    if not isinstance(cell, Cell):
        return ()
    backend = backend or jax.default_backend()
    return cell.saved if backend == "cpu" and state_size > CPU_SMALL_STATE else ()


# ---------------------------------------------------------------------------------------------------
# The vanilla RNN's fast path on CPU: the weight gradient after the loop, forward mode kept
# ---------------------------------------------------------------------------------------------------


def _vanilla_forward(W_x, W_h, b, h0, xs):
    """``h_t = tanh(x_t W_x + h_{t-1} W_h + b)`` over a time-major ``xs [T, N, I]`` from ``h0 [N, H]``."""

    def step(h, x):
        h = jnp.tanh(x @ W_x + h @ W_h + b[None, :])
        return h, h

    return lax.scan(step, h0, xs)[1]


@jax.custom_jvp
def _vanilla_layer(W_x, W_h, b, h0, xs):
    return _vanilla_forward(W_x, W_h, b, h0, xs)


@partial(_vanilla_layer.defjvp, symbolic_zeros=True)
def _vanilla_layer_jvp(primals, tangents):
    """The tangent with every term that does not pass through the recurrence taken out of the loop::

        E = X dW_x + H_prev dW_h + db + dX W_x        (big matmuls, all steps at once)
        dh_t = (1 - h_t^2) * (E_t + dh_{t-1} W_h)     (the only sequential part)

    Reverse mode transposes it, so the backward loop does one ``[N, H] @ [H, H]`` product per step and
    ``dW_h = H_prev^T dE``, ``dW_x = X^T dE`` are one matmul each after it (autodiff of the plain scan
    accumulates them step by step). Forward mode (``jax.jvp``) keeps working, unlike a ``custom_vjp``.
    """
    W_x, W_h, b, h0, xs = primals
    dW_x, dW_h, db, dh0, dxs = tangents
    hs = _vanilla_forward(W_x, W_h, b, h0, xs)
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

    _, dhs = lax.scan(step, dh0, (E, 1 - hs * hs))
    return hs, dhs


def uses_vanilla_fast_path(cell, *, lengths=None, reverse=False, remat=False, return_carries=False,
                           hoist=None, unroll=None, backend: str | None = None) -> bool:  # fmt: skip
    """Whether :func:`run` takes the vanilla RNN's fast path (:func:`_vanilla_layer`) for these arguments.

    On CPU, for the vanilla cell (any output head), with the default ``hoist`` and ``unroll`` and no
    ``lengths``, ``reverse``, ``remat`` or ``return_carries``. Two idle cores, fwd+bwd:
    (32, 128, 256, 256) 1.11x and (1, 2048, 32, 32) 2.17x faster than the plain scan
    (``experiments/vanilla_custom_jvp.py``, ``docs/bench.md``). Not measured elsewhere, so not used there.
    """
    backend = backend or jax.default_backend()
    return (
        isinstance(cell, Cell)
        and cell.step is vanilla_cell.step
        and cell.project is vanilla_cell.project
        and backend == "cpu"
        and lengths is None
        and not reverse
        and remat in (False, "none")
        and not return_carries
        and hoist is None
        and unroll is None
    )


def _run_vanilla_fast(cell, params, carry, xs, *, batch, time_major):
    """The fast path: flatten the batch, run :func:`_vanilla_layer` time-major, apply the head."""
    xs_T = xs if time_major else jnp.moveaxis(xs, -2, 0)  # [T, ..., I]
    T, N = xs_T.shape[0], math.prod(batch)
    H = params.W_hh.shape[0]
    h0 = jnp.zeros((N, H), params.W_hh.dtype) if carry is None else jnp.reshape(carry, (N, H))
    hs = _vanilla_layer(params.W_xh, params.W_hh, params.b_h, h0, jnp.reshape(xs_T, (T, N, xs_T.shape[-1])))
    ys = jax.vmap(partial(cell.readout, params))(hs.reshape(T * N, H))
    ys = ys.reshape((T,) + tuple(batch) + ys.shape[1:])
    return hs[-1].reshape(tuple(batch) + (H,)), ys if time_major else jnp.moveaxis(ys, 0, -2)


def _identity(x):
    return x


def _run_one(cell, params, carry, xs_T, length, *, T, hoist, saved, reverse, unroll, remat, return_carries):
    if isinstance(cell, Cell):
        readout = jax.vmap(partial(cell.readout, params))
        if hoist:  # the input projection of a block of steps is one matmul outside the sequential loop
            project, step = jax.vmap(partial(cell.project, params)), partial(cell.step, params)
        else:
            project = _identity

            def step(c, x):
                return cell.step(params, c, cell.project(params, x))

    else:
        project, readout, step = _identity, _identity, partial(cell, params)
    if carry is None:
        carry = cell.init_carry(params)
    carry, outs = _scan_one(
        step,
        carry,
        xs_T,
        length,
        T,
        project=project,
        readout=readout,
        reverse=reverse,
        unroll=unroll,
        remat=remat,
        return_carries=return_carries,
        saved=saved,
    )
    ys, carries = outs if return_carries else (outs, None)
    if length is not None:
        ys = _mask_time(jnp.arange(T) < length, ys)
    return (carry, ys, carries) if return_carries else (carry, ys)


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
        unchanged and output zeros.
      time_major: whether time is the first axis of ``xs`` (and of the outputs).
      reverse: run from the last step to the first (outputs stay at their own positions).
      unroll: steps per iteration of the compiled loop (a speed knob; results do not change);
        ``None`` picks it by backend and carry size (:func:`auto_unroll`).
      remat: ``False``/``"none"``: store every step's residuals for BPTT; ``True``/``"step"``:
        recompute each step in the backward pass (``jax.checkpoint``); ``"sqrt"``: nested scan that
        stores one carry per chunk of ``ceil(sqrt(T))`` steps (memory ``O(sqrt T)``).
      return_carries: also return the carry after every step.
      hoist: for a ``Cell``, compute the input projection of all steps as one matmul before the loop
        (``True``) or inside each step (``False``); a speed knob, results agree to float rounding.
        ``None`` picks it by cell, backend and carry size (:func:`auto_hoist`). Ignored for plain functions.

    Returns:
      ``(final_carry, ys)``, or ``(final_carry, ys, carries)`` with ``return_carries``; ``ys`` and
      ``carries`` have the time axis where ``xs`` has it.
    """
    if not callable(cell):
        raise TypeError(
            f"cell must be a Cell or a function (params, carry, x) -> (carry, y), got {type(cell).__name__}"
        )
    if remat not in REMAT_OPTIONS:
        raise ValueError(f"remat must be one of {REMAT_OPTIONS}, got {remat!r}")
    if unroll is not None and (not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1):
        raise ValueError(f"unroll must be a positive integer, got {unroll!r} (or None: chosen by backend and size)")
    T, batch = _sequence_layout(xs, time_major)
    _check_inputs(cell, params, xs)
    if carry is None:
        if not isinstance(cell, Cell):
            raise ValueError("carry=None (zeros) needs a Cell; pass an explicit initial carry for a plain function")
    else:
        _check_carry(cell, params, carry, batch)
    if lengths is not None:
        _check_lengths(lengths, T, batch)
    if uses_vanilla_fast_path(
        cell, lengths=lengths, reverse=reverse, remat=remat, return_carries=return_carries, hoist=hoist, unroll=unroll
    ):
        return _run_vanilla_fast(cell, params, carry, xs, batch=batch, time_major=time_major)
    state_size = _carry_size(cell, params, carry, batch)
    if unroll is None:
        unroll = auto_unroll(T, state_size)
    if hoist is None:
        hoist = auto_hoist(cell, state_size)

    fn = partial(
        _run_one,
        cell,
        params,
        T=T,
        hoist=bool(hoist),
        saved=auto_saved(cell, state_size),
        reverse=reverse,
        unroll=int(unroll),
        remat=remat,
        return_carries=return_carries,
    )
    x_axis = 1 if time_major else 0
    out_axes = (0, x_axis, x_axis) if return_carries else (0, x_axis)
    for _ in batch:  # one vmap per batch dimension: the cell itself sees one example
        fn = jax.vmap(
            fn,
            in_axes=(None if carry is None else 0, x_axis, None if lengths is None else 0),
            out_axes=out_axes,
        )
    return fn(carry, xs, lengths)


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


# ---------------------------------------------------------------------------------------------------
# Stacks and bidirectional runs
# ---------------------------------------------------------------------------------------------------


def _dropout(key, rate: float, x):
    keep = jax.random.bernoulli(key, 1.0 - rate, jnp.shape(x))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def run_stack(
    cells: Cell | Sequence[Cell],
    params: Sequence[Any],
    carries: Sequence[Any] | None,
    xs,
    *,
    dropout_rate: float = 0.0,
    key=None,
    **run_kwargs,
):
    """Run a stack of layers: layer ``l`` reads the outputs of layer ``l-1``.

    Args:
      cells: one cell for every layer, or one per layer.
      params: one params pytree per layer.
      carries: ``None`` (zeros everywhere) or one initial carry per layer (each may be ``None``).
      xs: the first layer's inputs, laid out as for :func:`run`.
      dropout_rate: inverted dropout on the inputs of layers ``2..L`` (between layers), applied only
        when ``key`` is given; pass no key at evaluation time.
      key: PRNG key for dropout.
      **run_kwargs: passed to :func:`run` for every layer (``lengths``, ``time_major``, ``unroll``...).

    Returns:
      ``(final_carries, ys)``: a list with each layer's final carry, and the last layer's outputs.
    """
    n_layers = len(params)
    if n_layers < 1:
        raise ValueError("run_stack needs at least one layer of params")
    cells = [cells] * n_layers if isinstance(cells, Cell) or not isinstance(cells, Sequence) else list(cells)
    if len(cells) != n_layers:
        raise ValueError(f"got {len(cells)} cells for {n_layers} layers of params")
    carries = [None] * n_layers if carries is None else list(carries)
    if len(carries) != n_layers:
        raise ValueError(f"got {len(carries)} initial carries for {n_layers} layers")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    keys = jax.random.split(key, n_layers) if key is not None else [None] * n_layers
    finals = []
    ys = xs
    for layer, (cell, p, c, k) in enumerate(zip(cells, params, carries, keys)):
        if layer > 0 and k is not None and dropout_rate > 0:
            ys = _dropout(k, dropout_rate, ys)
        c, ys = run(cell, p, c, ys, **run_kwargs)
        finals.append(c)
    return finals, ys


def bidirectional(
    cell: Cell | Callable,
    params: tuple[Any, Any],
    carries: tuple[Any, Any] | None,
    xs,
    *,
    lengths=None,
    merge: str = "concat",
    **run_kwargs,
):
    """Run one cell forward and another (own params) backward over ``xs`` and merge the outputs.

    The backward direction respects ``lengths``: it starts at each sequence's last real step, so
    padding stays at the end and never leaks into the backward state.

    Args:
      params: ``(params_forward, params_backward)``.
      carries: ``None`` or ``(carry_forward, carry_backward)``.
      merge: ``"concat"`` (feature axis), ``"sum"``, or ``"none"`` for the pair ``(ys_fw, ys_bw)``.

    Returns:
      ``((carry_fw, carry_bw), ys)``; ``carry_bw`` is the state after reading each sequence back to
      its first step.
    """
    if merge not in ("concat", "sum", "none"):
        raise ValueError(f"merge must be 'concat', 'sum' or 'none', got {merge!r}")
    if "reverse" in run_kwargs:
        raise TypeError("bidirectional runs both directions; do not pass reverse")
    params_fw, params_bw = params
    carry_fw, carry_bw = (None, None) if carries is None else carries
    c_fw, ys_fw = run(cell, params_fw, carry_fw, xs, lengths=lengths, **run_kwargs)
    c_bw, ys_bw = run(cell, params_bw, carry_bw, xs, lengths=lengths, reverse=True, **run_kwargs)
    if merge == "concat":
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=-1), ys_fw, ys_bw)
    elif merge == "sum":
        ys = jax.tree.map(jnp.add, ys_fw, ys_bw)
    else:
        ys = (ys_fw, ys_bw)
    return (c_fw, c_bw), ys
