"""Which built-in cell a :class:`~rnn_jax.cells.Cell` steps like, for the kernels that run only those."""

from __future__ import annotations

from rnn_jax.cells import Cell, gru_cell, lstm_cell, vanilla_cell

__all__ = ["kernel_cell_name", "recurrent_weight"]

_CELL_NAMES = ((vanilla_cell, "vanilla"), (lstm_cell, "lstm"), (gru_cell, "gru"))


def kernel_cell_name(cell) -> str | None:
    """``"vanilla"``, ``"lstm"`` or ``"gru"`` when ``cell`` steps like one of the built-in cells (any
    input projection and output head: they run outside the kernel), else ``None``."""
    if not isinstance(cell, Cell):
        return None
    for known, name in _CELL_NAMES:
        if cell.step is known.step:
            return name
    return None


def recurrent_weight(name: str, params):
    """The recurrent weight ``W_h [H, G*H]`` of a built-in cell's params (``name`` from :func:`kernel_cell_name`)."""
    return params.W_hh if name == "vanilla" else params.W_h
