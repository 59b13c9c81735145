"""A trainer's cell from Python: a built-in's name, a user's :class:`~rnn_jax.Cell` (it must bring ``init``) or
its import path ``"module:attr"``; what a checkpoint records of it, and the cell found again when loading.

No registry: a user's cell is found by :func:`rnn_jax.cells.import_path` (the module that defines its step holds
it under some name), so a checkpoint of a cell defined in an importable module loads anywhere; one defined in
``__main__`` or inside a function is passed again to the app's ``load_model(..., cell=)``.
"""

from __future__ import annotations

import dataclasses

from rnn_jax.cells import CELLS, Cell, import_path, resolve_cell
from rnn_jax.errors import UserError

__all__ = ["trainable_cell", "is_builtin", "cell_record", "stored_cell_spec", "check_with_cell", "loaded_cell"]


def trainable_cell(spec) -> Cell:
    """The :class:`Cell` that ``spec`` names (a name, a Cell or ``"module:attr"``); it must bring an ``init``."""
    cell = resolve_cell(spec)
    if cell.init is None:
        raise UserError(
            f"the cell {cell.name!r} has no init; the trainer needs one: "
            f"Cell(..., init=fn(key, in_size, hidden_size, dtype) -> params)"
        )
    return cell


def is_builtin(cell: Cell) -> bool:
    """Whether ``cell`` is one of :data:`rnn_jax.cells.CELLS` (not a user's cell of the same name)."""
    return CELLS.get(cell.name) is cell


def cell_record(cell: Cell) -> dict:
    """What a checkpoint says about its cell: the name, and for a user's cell where to import it from."""
    builtin = is_builtin(cell)
    return {"name": cell.name, "builtin": builtin, "import_path": None if builtin else import_path(cell),
            "module": getattr(cell.step, "__module__", None)}  # fmt: skip


def stored_cell_spec(cell) -> str:
    """``cell`` as a stored config spells it: a built-in's name, else its import path, else its name."""
    record = cell_record(resolve_cell(cell))
    return record["name"] if record["builtin"] else record["import_path"] or record["name"]


def check_with_cell(cfg, check):
    """``check(cfg)`` of a config whose ``cell`` may be a user's Cell: the harness's checks know cells by name,
    so they see the smallest built-in in its place (a user's cell was checked here). The result's ``cell``
    is a built-in's name or the user's :class:`Cell`."""
    cell = trainable_cell(cfg.cell)
    builtin = is_builtin(cell)
    cfg = check(dataclasses.replace(cfg, cell=cell.name if builtin else "vanilla"))
    return dataclasses.replace(cfg, cell=cell.name if builtin else cell)


def loaded_cell(meta: dict, stored_spec: str, ckpt, given=None) -> str | Cell:
    """The cell a checkpoint needs: ``given`` when the caller passes one, else the one its meta records (a
    built-in's name, or a user's Cell imported from its path); a :class:`UserError` saying to pass
    ``load_model(ckpt, cell=...)`` where it cannot be imported."""
    if given is not None:
        return trainable_cell(given)
    record = meta.get("cell") or {"name": stored_spec, "builtin": stored_spec in CELLS}
    if record["builtin"]:
        return record["name"]
    path = record.get("import_path")
    how = f"pass it: load_model({str(ckpt)!r}, cell=<that Cell>)"
    if path is None:
        where = record.get("module") or "a place no other process can import"
        raise UserError(f"{ckpt} was trained with the user cell {record['name']!r} defined in {where}; {how}")
    try:
        return trainable_cell(path)
    except UserError as err:
        raise UserError(f"{ckpt} was trained with the cell {record['name']!r} from {path}: {err}; {how}") from None
