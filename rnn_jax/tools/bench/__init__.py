"""Benchmark harness: time one recurrent layer, forward and forward+backward, against its peers.

``rnn-jax bench`` (or :func:`measure_layers`) times each implementation on the same inputs in one
process: ``rnn_jax.run`` with each ``impl=`` asked for (``--impls``; ``auto`` is the row ``rnn_jax``),
harness variants (``--variants``: the input projection inside the step or hoisted, ``remat``, a Python
loop under ``jit``; ``--unrolls``), every flax ``nn.RNN`` cell of the kind and torch
``nn.RNN``/``nn.LSTM``/``nn.GRU`` (``--peers``). Everything is compiled first (timed apart); then the
whole comparison runs ``--runs`` times, each run warming up and timing all items of one shape and cell
in interleaved rounds. The loss is ``mean(h**2)`` over every output, as in ``shared/bench/rnn_anchor.py``;
``fwd_bwd`` differentiates it with respect to the params only.

Ratios (:func:`summarize`): for each run ``k``, ``r_k = t_peer,k / t_k`` where ``t_peer,k`` is the fastest
cell of that peer library and kind in run ``k``; the table gives ``median_k r_k (min_k r_k - max_k r_k)``,
and calls it parity when that range contains 1.

``rnn-jax bench compile`` times compilation against ``T`` (the scan's does not grow, a Python loop's
does); ``rnn-jax bench linear`` times the linear cells of :mod:`rnn_jax.linear` sequentially and with
``lax.associative_scan``.

Threads: XLA's CPU thread pool has one thread per CPU in the process's affinity mask, fixed when the
backend starts; torch is set to the same count. ``--threads N`` pins the process to its first ``N``
allowed CPUs before either starts, so both use the same cores.

The package: :mod:`~rnn_jax.tools.bench.timing` (sizes, the machine, the clock), ``impls`` (rnn_jax's own
rows), ``peers`` (flax, torch), ``suites`` (what is measured), ``report`` (ratios, table, JSON lines, figure)
and ``cli`` (``rnn-jax bench``).
"""

from rnn_jax.tools.bench.cli import cli_main
from rnn_jax.tools.bench.impls import JAX_IMPLS, bench_cell, run_impl
from rnn_jax.tools.bench.report import (
    Ratio,
    format_ratio,
    plot,
    print_header,
    print_table,
    ratio_of_runs,
    summarize,
    write_json,
)
from rnn_jax.tools.bench.suites import measure_compile, measure_layers, measure_linear
from rnn_jax.tools.bench.timing import Shape, conditions, machine, parse_config

_run_impl = run_impl  # the name tests/test_fastpath.py reaches for

__all__ = [
    "Shape",
    "parse_config",
    "JAX_IMPLS",
    "bench_cell",
    "run_impl",
    "measure_layers",
    "measure_compile",
    "measure_linear",
    "Ratio",
    "ratio_of_runs",
    "format_ratio",
    "summarize",
    "conditions",
    "machine",
    "print_header",
    "print_table",
    "write_json",
    "plot",
    "cli_main",
]
