"""The implementations behind ``run(..., impl=...)``, reached through one table.

- :mod:`rnn_jax.kernels.registry`: the table (:data:`~rnn_jax.kernels.registry.TABLE`), the names ``run``
  accepts (:data:`~rnn_jax.kernels.registry.IMPLS`) and :func:`available_impls`; how to add one.
- :mod:`rnn_jax.kernels.scan_impl`: ``"scan"``, ``lax.scan`` differentiated by JAX (every cell, every option).
- :mod:`rnn_jax.kernels.vanilla_jvp`: ``"custom_jvp"``, the vanilla layer with a hand-written tangent.
- :mod:`rnn_jax.kernels.pallas_impl` (glue) and :mod:`rnn_jax.kernels.pallas` (the kernels): ``"pallas"``.
- :func:`kernel_cell_name`: which built-in cell a ``Cell`` steps like, for kernels that run only those.

The Pallas names below (``run_pallas``, ``unsupported_reason``, ``BLOCK_N``...) import Pallas on first use, so
``import rnn_jax`` does not.
"""

from __future__ import annotations

import importlib

from rnn_jax.kernels.cell_kind import kernel_cell_name, recurrent_weight
from rnn_jax.kernels.registry import IMPLS, TABLE, Impl, available_impls, get_impl

__all__ = [
    "IMPLS",
    "TABLE",
    "Impl",
    "available_impls",
    "get_impl",
    "kernel_cell_name",
    "recurrent_weight",
    "run_pallas",
    "unsupported_reason",
    "BLOCK_N",
    "MAX_WEIGHT_BYTES",
    "SUPPORTED_DTYPES",
    "padded_hidden",
]

_PALLAS_NAMES = frozenset({"run_pallas", "unsupported_reason", "BLOCK_N", "MAX_WEIGHT_BYTES", "SUPPORTED_DTYPES",
                           "padded_hidden"})  # fmt: skip


def __getattr__(name: str):
    """The Pallas glue's public names, imported on first use."""
    if name in _PALLAS_NAMES:
        return getattr(importlib.import_module("rnn_jax.kernels.pallas_impl"), name)
    raise AttributeError(f"module 'rnn_jax.kernels' has no attribute {name!r}")
