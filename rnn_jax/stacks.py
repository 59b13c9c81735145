"""Layers over :func:`~rnn_jax.scan.run`: stacks with dropout between layers, and bidirectional runs.

``run_stack`` feeds each layer's outputs to the next (inverted dropout in between while training);
``bidirectional`` runs one cell forward and another backward over the same inputs and merges them.
Both pass ``run``'s options (``lengths``, ``time_major``, ``unroll``, ``impl``...) to every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax.cells import Cell
from rnn_jax.errors import UserError
from rnn_jax.scan import run

__all__ = ["run_stack", "bidirectional", "inverted_dropout"]


def inverted_dropout(key, rate: float, x):
    """Zero each element of ``x`` with probability ``rate`` and scale the rest by ``1 / (1 - rate)``.

    The expected value is ``x`` itself, so evaluation needs no rescaling: with ``key=None`` or
    ``rate == 0`` it returns ``x`` unchanged.
    """
    if key is None or rate == 0.0:
        return x
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
      **run_kwargs: passed to :func:`run` for every layer (``lengths``, ``time_major``, ``unroll``, ``impl``...).

    Returns:
      ``(final_carries, ys)``: a list with each layer's final carry, and the last layer's outputs.
    """
    if not isinstance(params, (list, tuple)) or hasattr(params, "_fields"):  # a NamedTuple is one layer's params
        raise TypeError(
            f"run_stack takes one params pytree per layer (a list or tuple of them), got a single "
            f"{type(params).__name__}; pass [params] for one layer (or call run), or a list with one per layer"
        )
    n_layers = len(params)
    if n_layers < 1:
        raise UserError("run_stack needs at least one layer of params")
    cells = [cells] * n_layers if isinstance(cells, Cell) or not isinstance(cells, Sequence) else list(cells)
    if len(cells) != n_layers:
        raise UserError(f"got {len(cells)} cells for {n_layers} layers of params")
    carries = [None] * n_layers if carries is None else list(carries)
    if len(carries) != n_layers:
        raise UserError(f"got {len(carries)} initial carries for {n_layers} layers")
    if not 0.0 <= dropout_rate < 1.0:
        raise UserError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    keys = jax.random.split(key, n_layers) if key is not None else [None] * n_layers
    finals = []
    ys = xs
    for layer, (cell, p, c, k) in enumerate(zip(cells, params, carries, keys)):
        if c is None and not isinstance(cell, Cell):
            raise UserError(
                f"layer {layer} of run_stack is a plain function, so its carry cannot default to zeros; pass "
                "carries=[carry_0, carry_1, ...] with an explicit initial carry for it (None only for a Cell)"
            )
        if layer > 0:
            ys = inverted_dropout(k, dropout_rate, ys)
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
      **run_kwargs: passed to :func:`run` for both directions (``time_major``, ``unroll``, ``impl``...).

    Returns:
      ``((carry_fw, carry_bw), ys)``; ``carry_bw`` is the state after reading each sequence back to
      its first step.
    """
    if merge not in ("concat", "sum", "none"):
        raise UserError(f"merge must be 'concat', 'sum' or 'none', got {merge!r}")
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
