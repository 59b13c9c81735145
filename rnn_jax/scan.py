"""The one scan over time: :func:`run`, plus stacking and bidirectional runs built on it.

``run(cell, params, carry, xs)`` applies ``cell(params, carry, x_t) -> (carry, y_t)`` at every step
``t`` with the *same* params, and returns the final carry and every ``y_t``. It is the library's
one scan over time; everything recurrent (stacks, encoders, decoders with attention) goes through it.
``impl`` names the algorithm: ``"scan"`` (``lax.scan`` differentiated by JAX), ``"custom_jvp"`` (the
vanilla layer with a hand-written tangent whose weight gradients come after the loop), ``"pallas"``
(:mod:`rnn_jax.kernels`), or ``"auto"``, which picks per platform (:func:`auto_plan`).

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
sequential.

Choices per platform. What ``impl="auto"``, ``hoist=None`` and ``unroll=None`` pick, and which residuals
the backward pass stores, follow the platform the computation is *lowered for* (``lax.platform_dependent``),
not the host's backend, so a train step lowered for a GPU or TPU from a CPU machine gets the GPU/TPU
choices (measurements: ``docs/bench.md``):

- CPU: the vanilla RNN takes the ``custom_jvp`` fast path (unroll 1) wherever it applies; otherwise the
  LSTM and GRU project inside the step, the vanilla RNN hoists while the batch carry has at most
  :data:`CPU_SMALL_STATE` elements, unroll 4 for such small carries (else 1), and a larger carry stores
  only the cell's ``saved`` pre-activations (:func:`auto_hoist`, :func:`auto_unroll`, :func:`auto_saved`).
- GPU (cuda, rocm), TPU and any other platform: the plain scan, the projection hoisted, unroll
  ``min(8, T)``, residuals as XLA keeps them.

Under ``jit`` both choices are traced and only the lowering platform's is compiled (a multi-platform
export keeps both behind a switch); eagerly, only the running platform's runs.
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

from rnn_jax.cells import Cell, vanilla_cell
from rnn_jax.errors import UserError

__all__ = [
    "run",
    "zeros_carry",
    "broadcast_carry",
    "auto_unroll",
    "auto_hoist",
    "auto_saved",
    "auto_plan",
    "custom_jvp_refusal",
    "vmap_batch",
    "check_run_args",
    "Plan",
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
# One call's static arguments and the plan that computes it
# ---------------------------------------------------------------------------------------------------


class _Call(NamedTuple):
    """One call's static arguments, validated: the layout of ``xs`` and the options of :func:`run`."""

    T: int
    batch: tuple[int, ...]
    time_major: bool
    reverse: bool
    remat: bool | str
    return_carries: bool


class Plan(NamedTuple):
    """How :func:`run` computes a call on one platform (see :func:`auto_plan`).

    Attributes:
      impl: ``"scan"`` (``lax.scan`` with autodiff) or ``"custom_jvp"`` (the vanilla layer's fast path).
      hoist: the input projection of all steps as one matmul before the loop (a ``Cell`` only).
      unroll: steps per iteration of the compiled loop.
      saved: names of the step values the backward pass stores (``()``: XLA keeps what it chooses).
    """

    impl: str
    hoist: bool
    unroll: int
    saved: tuple[str, ...]


def vmap_batch(fn: Callable, n_batch_dims: int, in_axes=0, out_axes=0) -> Callable:
    """``fn`` written for one example, mapped over ``n_batch_dims`` batch dimensions (one ``jax.vmap`` each).

    ``in_axes``/``out_axes`` are those of each ``jax.vmap``: the position of the batch dimension that
    this level maps. Each level removes one, so the same axes serve every level (``[T, B1, B2, I]``
    with ``in_axes=1`` maps ``B1``, then ``B2``).
    """
    for _ in range(n_batch_dims):
        fn = jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
    return fn


# ---------------------------------------------------------------------------------------------------
# The scan itself, for one example
# ---------------------------------------------------------------------------------------------------


def _where(keep, new, old):
    return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)


def _mask_time(mask_T, ys):
    """Zero every output at the steps where ``mask_T`` is False."""
    return jax.tree.map(lambda y: jnp.where(lax.expand_dims(mask_T, range(1, jnp.ndim(y))), y, 0), ys)


def _scan_one(step, carry, xs, length, *, project, readout, call: _Call, plan: Plan):
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
        return new_c, ((z, new_c) if call.return_carries else z)

    if call.remat == "sqrt":
        return _scan_sqrt(body, carry, xs, project=project, readout=readout, call=call, unroll=plan.unroll)
    if call.remat in (True, "step"):
        body = jax.checkpoint(body)
    elif plan.saved:  # store only the named pre-activations per step; recompute the elementwise rest
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.save_only_these_names(*plan.saved))
    ts = jnp.arange(call.T)
    carry, outs = lax.scan(body, carry, (ts, _apply(project, xs)), reverse=call.reverse, unroll=plan.unroll)
    return carry, _readout_outs(readout, outs, call.return_carries)


def _apply(fn, block):
    """``fn(block)``, or the block itself where there is no ``fn``."""
    return block if fn is None else fn(block)


def _readout_outs(readout, outs, return_carries):
    return (_apply(readout, outs[0]), outs[1]) if return_carries else _apply(readout, outs)


def _scan_sqrt(body, carry, xs, *, project, readout, call: _Call, unroll: int):
    """Nested scan with sqrt(T) checkpointing: store one carry per chunk, recompute inside a chunk.

    Memory for the backward pass falls from O(T) step residuals to O(sqrt T) carries plus the residuals
    of one chunk; the input projection and the readout run per chunk inside the checkpoint, so only
    ``xs`` and the outputs grow with ``T``. Padding steps (``t >= T``) leave the carry alone; their
    outputs are cut off.
    """
    T = call.T
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
        c, outs = lax.scan(step_body, c, (ts, _apply(project, xs_chunk)), reverse=call.reverse, unroll=unroll)
        return c, _readout_outs(readout, outs, call.return_carries)

    carry, outs = lax.scan(chunk_body, carry, (ts_c, xs_c), reverse=call.reverse)
    outs = jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:T], outs)
    return carry, outs


def _run_one(cell, params, carry, xs_T, length, *, call: _Call, plan: Plan):
    if isinstance(cell, Cell):
        readout = jax.vmap(partial(cell.readout, params))
        if plan.hoist:  # the input projection of a block of steps is one matmul outside the sequential loop
            project, step = jax.vmap(partial(cell.project, params)), partial(cell.step, params)
        else:
            project = None

            def step(c, x):
                return cell.step(params, c, cell.project(params, x))

    else:
        project, readout, step = None, None, partial(cell, params)
    if carry is None:
        carry = cell.init_carry(params)
    carry, outs = _scan_one(step, carry, xs_T, length, project=project, readout=readout, call=call, plan=plan)
    ys, carries = outs if call.return_carries else (outs, None)
    if length is not None:
        ys = _mask_time(jnp.arange(call.T) < length, ys)
    return (carry, ys, carries) if call.return_carries else (carry, ys)


def _run_scan(cell, params, carry, xs, lengths, call: _Call, plan: Plan):
    """The plain ``lax.scan`` over time, vmapped over the batch dimensions (the cell sees one example)."""
    x_axis = 1 if call.time_major else 0
    fn = vmap_batch(
        partial(_run_one, cell, params, call=call, plan=plan),
        len(call.batch),
        in_axes=(None if carry is None else 0, x_axis, None if lengths is None else 0),
        out_axes=(0, x_axis, x_axis) if call.return_carries else (0, x_axis),
    )
    return fn(carry, xs, lengths)


# ---------------------------------------------------------------------------------------------------
# Defaults per platform
# ---------------------------------------------------------------------------------------------------


def auto_unroll(T: int, state_size: int, backend: str | None = None) -> int:
    """The default ``unroll`` (steps per compiled loop iteration) by platform and batch carry size.

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


def custom_jvp_refusal(cell, *, lengths=None, reverse=False, remat=False, return_carries=False) -> str | None:
    """Why ``impl="custom_jvp"`` cannot compute this call, or ``None`` when it can.

    The fast path is the vanilla recurrence (any output head) run forward over every step, storing
    its own residuals: no ``lengths``, ``reverse``, ``remat`` or ``return_carries``.
    """
    if not (isinstance(cell, Cell) and cell.step is vanilla_cell.step and cell.project is vanilla_cell.project):
        got = f"the {cell.name} cell" if isinstance(cell, Cell) else f"the function {getattr(cell, '__name__', cell)}"
        return f"runs the vanilla cell only, got {got}"
    for name, given in (("lengths", lengths is not None), ("reverse", reverse), ("return_carries", return_carries)):
        if given:
            return f"takes no {name} (got {name}={'an array' if name == 'lengths' else True})"
    if remat not in (False, "none"):
        return f"stores its own residuals, so it takes no remat (got remat={remat!r})"
    return None


def auto_plan(cell, T: int, state_size: int, *, platform: str, impl: str = "auto", hoist=None, unroll=None,
              **options) -> Plan:  # fmt: skip
    """The :class:`Plan` that :func:`run` follows on ``platform`` (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``).

    ``impl="auto"`` takes the vanilla layer's ``custom_jvp`` fast path on CPU wherever it applies
    (:func:`custom_jvp_refusal` with ``options``: ``lengths``, ``reverse``, ``remat``, ``return_carries``),
    whatever ``hoist`` and ``unroll`` say (two idle cores, fwd+bwd: (32, 128, 256, 256) 1.11x and
    (1, 2048, 32, 32) 2.17x faster than the plain scan, ``experiments/vanilla_custom_jvp.py``); elsewhere,
    and on GPU/TPU always (not measured there), the plain scan. Unset ``hoist``/``unroll`` and the saved
    residuals follow :func:`auto_hoist`, :func:`auto_unroll` and :func:`auto_saved` for ``platform``; the
    fast path keeps ``unroll=1`` unless given.
    """
    if impl == "custom_jvp" or (impl == "auto" and platform == "cpu" and custom_jvp_refusal(cell, **options) is None):
        return Plan("custom_jvp", True, 1 if unroll is None else int(unroll), ())
    return Plan(
        "scan",
        auto_hoist(cell, state_size, platform) if hoist is None else bool(hoist),
        auto_unroll(T, state_size, platform) if unroll is None else int(unroll),
        auto_saved(cell, state_size, platform),
    )


# ---------------------------------------------------------------------------------------------------
# The vanilla RNN's fast path: the weight gradient after the loop, forward mode kept
# ---------------------------------------------------------------------------------------------------


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


def _to_time_major_flat(a, call: _Call):
    """``[..., T, I]`` (or ``[T, ..., I]``) to ``[T, N, I]`` with every batch dimension in ``N``."""
    a_T = a if call.time_major else jnp.moveaxis(a, -2, 0)
    return jnp.reshape(a_T, (call.T, math.prod(call.batch), a_T.shape[-1]))


def _from_time_major_flat(y, call: _Call):
    """``[T, N, ...]`` back to the layout and batch shape of the call's inputs."""
    y = jnp.reshape(y, (call.T, *call.batch, *y.shape[2:]))
    return y if call.time_major else jnp.moveaxis(y, 0, len(call.batch))


def _carry_to_flat(cell, params, carry, call: _Call):
    """The initial carry with every batch dimension flattened into one leading ``N`` (zeros for ``None``)."""
    N, n = math.prod(call.batch), len(call.batch)
    if carry is None:
        return zeros_carry(cell, params, (N,))
    return jax.tree.map(lambda c: jnp.reshape(c, (N, *jnp.shape(c)[n:])), carry)


def _run_vanilla_fast(cell, params, carry, xs, call: _Call, plan: Plan):
    """The fast path: flatten the batch, run :func:`_vanilla_layer` time-major, apply the head."""
    T, H = call.T, params.W_hh.shape[0]
    h0 = _carry_to_flat(cell, params, carry, call)
    hs = _vanilla_layer(plan.unroll, params.W_xh, params.W_hh, params.b_h, h0, _to_time_major_flat(xs, call))
    ys = jax.vmap(partial(cell.readout, params))(hs.reshape(T * hs.shape[1], H))
    ys = ys.reshape((T, hs.shape[1], *ys.shape[1:]))
    return hs[-1].reshape((*call.batch, H)), _from_time_major_flat(ys, call)


# ---------------------------------------------------------------------------------------------------
# Pallas kernels (rnn_jax.kernels)
# ---------------------------------------------------------------------------------------------------


def _run_pallas(cell, params, carry, xs, lengths, call: _Call):
    """Flatten the batch, run :func:`rnn_jax.kernels.run_pallas` time-major, restore the layout."""
    try:
        from rnn_jax import kernels
    except ImportError as e:
        raise ImportError(f"impl='pallas' needs rnn_jax.kernels, which did not import ({e}); use impl='scan'") from e
    xs_TNI = jax.tree.map(lambda a: _to_time_major_flat(a, call), xs)
    lengths_N = None if lengths is None else jnp.reshape(lengths, (math.prod(call.batch),))
    reason = kernels.unsupported_reason(
        cell, params, xs_TNI, lengths=lengths_N, reverse=call.reverse, remat=call.remat,
        return_carries=call.return_carries,
    )  # fmt: skip
    if reason is not None:
        raise UserError(f"impl='pallas' cannot run this call: {reason}; use impl='scan'")
    carry_N = _carry_to_flat(cell, params, carry, call)
    final_N, ys_TNO = kernels.run_pallas(cell, params, carry_N, xs_TNI, lengths_N, reverse=call.reverse)
    final = jax.tree.map(lambda c: jnp.reshape(c, (*call.batch, *jnp.shape(c)[1:])), final_N)
    return final, jax.tree.map(lambda y: _from_time_major_flat(y, call), ys_TNO)


# ---------------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------------

IMPLS = ("auto", "scan", "custom_jvp", "pallas")
"""The algorithms :func:`run` can follow (its ``impl``)."""


def _check_options(cell, *, remat, unroll, impl):
    if not callable(cell):
        raise TypeError(
            f"cell must be a Cell or a function (params, carry, x) -> (carry, y), got {type(cell).__name__}"
        )
    if impl not in IMPLS:
        raise UserError(f"impl must be one of {IMPLS}, got {impl!r}; impl='auto' picks one per platform")
    if remat not in REMAT_OPTIONS:
        raise UserError(f"remat must be one of {REMAT_OPTIONS}, got {remat!r}")
    if unroll is not None and (not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1):
        raise UserError(f"unroll must be a positive integer, got {unroll!r} (or None: chosen by platform and size)")


def _execute(cell, params, carry, xs, lengths, *, call: _Call, plan: Plan):
    if plan.impl == "custom_jvp":
        return _run_vanilla_fast(cell, params, carry, xs, call, plan)
    return _run_scan(cell, params, carry, xs, lengths, call, plan)


def _per_platform(cell, args, call: _Call, *, cpu: Plan, accelerator: Plan):
    """Follow ``cpu`` where the computation is lowered for CPU, ``accelerator`` elsewhere (GPU, TPU).

    ``lax.platform_dependent`` traces both and keeps only the lowering platform's branch in the module
    (both, behind a switch, for a multi-platform export); outside ``jit`` only the running platform's
    runs. Identical plans need no switch.
    """
    if cpu == accelerator:
        return _execute(cell, *args, call=call, plan=cpu)
    on_cpu, elsewhere = (partial(_execute, cell, call=call, plan=plan) for plan in (cpu, accelerator))
    return lax.platform_dependent(*args, cpu=on_cpu, default=elsewhere)


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
        ``None`` picks it by lowering platform and carry size (:func:`auto_unroll`).
      remat: ``False``/``"none"``: store every step's residuals for BPTT; ``True``/``"step"``:
        recompute each step in the backward pass (``jax.checkpoint``); ``"sqrt"``: nested scan that
        stores one carry per chunk of ``ceil(sqrt(T))`` steps (memory ``O(sqrt T)``).
      return_carries: also return the carry after every step.
      hoist: for a ``Cell``, compute the input projection of all steps as one matmul before the loop
        (``True``) or inside each step (``False``); a speed knob, results agree to float rounding.
        ``None`` picks it by cell, lowering platform and carry size (:func:`auto_hoist`). Ignored for plain
        functions.
      impl: the algorithm, and so the gradient rule (``unroll`` and ``hoist`` never change it):
        ``"scan"``: ``lax.scan`` differentiated by JAX; ``"custom_jvp"``: the vanilla layer with its
        hand-written tangent (weight gradients after the loop; vanilla cell only, no ``lengths``,
        ``reverse``, ``remat``, ``return_carries``); ``"pallas"``: the kernels of :mod:`rnn_jax.kernels`
        (``unroll`` and ``hoist`` do not apply); ``"auto"``: per lowering platform (module docstring,
        :func:`auto_plan`): on CPU ``"custom_jvp"`` where it applies, else ``"scan"``.

    Returns:
      ``(final_carry, ys)``, or ``(final_carry, ys, carries)`` with ``return_carries``; ``ys`` and
      ``carries`` have the time axis where ``xs`` has it.
    """
    _check_options(cell, remat=remat, unroll=unroll, impl=impl)
    T, batch = check_run_args(cell, params, carry, xs, lengths=lengths, time_major=time_major)
    call = _Call(T, batch, bool(time_major), bool(reverse), remat, bool(return_carries))
    if impl == "pallas":
        return _run_pallas(cell, params, carry, xs, lengths, call)
    options = dict(lengths=lengths, reverse=reverse, remat=remat, return_carries=return_carries)
    if impl == "custom_jvp" and (reason := custom_jvp_refusal(cell, **options)) is not None:
        raise UserError(f"impl='custom_jvp' {reason}; use impl='scan' (or impl='auto')")
    state_size = _carry_size(cell, params, carry, batch)
    plans = {
        platform: auto_plan(cell, T, state_size, platform=platform, impl=impl, hoist=hoist, unroll=unroll, **options)
        for platform in ("cpu", "cuda")
    }
    return _per_platform(cell, (params, carry, xs, lengths), call, cpu=plans["cpu"], accelerator=plans["cuda"])


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
