"""Peak memory of backpropagation through time against the sequence length ``T``, per ``remat`` option.

The model is the lecture's vanilla RNN on one long sequence, its loss the mean cross-entropy of every
step's prediction (computed in float32 whatever the compute dtype):

    h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h),   y_t = W_hy h_t + b_y,   L = mean_t CE(y_t, target_t)

``jax.value_and_grad`` of ``L`` stores what the backward pass needs. With ``remat="none"`` that is every
step's residuals, ``O(T H)``; ``"step"`` keeps one carry per step, ``O(T H)`` with a smaller constant;
``"sqrt"`` keeps one carry per chunk of ``ceil(sqrt T)`` steps, ``O(sqrt(T) H)``, and recomputes a
chunk at a time (about one extra forward pass).

Two measures, both of the jitted ``value_and_grad``:

- **compiled**: XLA's own memory analysis of the compiled program (temporary buffers, arguments,
  outputs). It runs nothing, so it can say what would *not* fit.
- **measured**: run once in a fresh Python process and read how far the peak resident set (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs`` just before the run) rose above the resident set
  before it: the memory the run itself needed, on top of the inputs already in memory.

``hoist=True`` runs the :class:`~rnn_jax.cells.Cell` as :func:`~rnn_jax.scan.run` does by default,
with the input projection and the output head hoisted out of the loop as two big matmuls: fast, but
their ``[T, H]`` results (and cotangents) stay ``O(T H)`` whatever ``remat`` is. ``hoist=False`` passes
the same cell as a plain function, so projection and head run inside the (rematerialised) loop and
only the ``[T, I]`` inputs and ``[T, O]`` logits grow with ``T``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.cells import VanillaParams, vanilla_cell, vanilla_init
from rnn_jax.dtypes import COMPUTE_DTYPES, DTYPES
from rnn_jax.errors import UserError
from rnn_jax.scan import run, zeros_carry

__all__ = ["MemoryRow", "bptt_loss", "make_problem", "compiled_memory", "measured_memory", "memory_table", "cli_main"]

REMATS = ("none", "step", "sqrt")
MiB = 2**20


def _unhoisted_vanilla(params: VanillaParams, h_H, x_I):
    """The same cell as a plain function: ``run`` cannot hoist it, so everything stays in the loop."""
    return vanilla_cell(params, h_H, x_I)


def bptt_loss(params: VanillaParams, xs_BTI, targets_BT, *, remat="none", hoist: bool = True):
    """Mean next-token cross-entropy over every step of ``xs``, in float32 (logits cast up first)."""
    cell = vanilla_cell if hoist else _unhoisted_vanilla
    carry = zeros_carry(vanilla_cell, params, xs_BTI.shape[:-2])
    _, logits_BTO = run(cell, params, carry, xs_BTI, remat=remat)
    # A one-hot product rather than a gather: the gather's transpose (a scatter of T rows) makes XLA's
    # constant folding crawl at T = 100,000.
    log_p = jax.nn.log_softmax(logits_BTO.astype(jnp.float32))
    return -jnp.sum(log_p * jax.nn.one_hot(targets_BT, log_p.shape[-1], dtype=log_p.dtype), axis=-1).mean()


class Problem(NamedTuple):
    params: VanillaParams
    xs_BTI: jax.Array
    targets_BT: jax.Array


def make_problem(
    T: int, *, hidden: int = 256, vocab: int = 32, batch: int = 1, dtype=jnp.float32, seed: int = 0
) -> Problem:
    """Params of a vanilla RNN with ``I = O = vocab`` and a random one-hot sequence with random targets."""
    k_p, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params = vanilla_init(k_p, vocab, hidden, vocab, dtype)
    xs = jax.nn.one_hot(jax.random.randint(k_x, (batch, T), 0, vocab), vocab, dtype=dtype)
    return Problem(params, xs, jax.random.randint(k_y, (batch, T), 0, vocab))


def _grad_fn(remat: str, hoist: bool):
    return jax.jit(jax.value_and_grad(lambda p, x, y: bptt_loss(p, x, y, remat=remat, hoist=hoist)))


def _abstract_problem(T, hidden, vocab, batch, dtype) -> Problem:
    return jax.eval_shape(lambda: make_problem(T, hidden=hidden, vocab=vocab, batch=batch, dtype=dtype))


class MemoryRow(NamedTuple):
    """One configuration: bytes from XLA's analysis and, if it was run, the measured peak and time."""

    T: int
    remat: str
    hoist: bool
    temp_bytes: int  # compiled: temporaries (residuals stored for the backward pass, workspace)
    argument_bytes: int  # compiled: params and the sequence
    output_bytes: int  # compiled: loss and gradients
    measured_bytes: int | None = None  # rise of the peak RSS during one run
    seconds: float | None = None  # wall time of that run (after compilation)

    @property
    def compiled_bytes(self) -> int:
        return self.temp_bytes + self.argument_bytes + self.output_bytes


def _check(T: int, remat: str, hidden: int, vocab: int, batch: int):
    if remat not in REMATS:
        raise UserError(f"remat must be one of {list(REMATS)}, got {remat!r}")
    for name, value in (("T", T), ("hidden", hidden), ("vocab", vocab), ("batch", batch)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")


def compiled_memory(
    T: int, remat: str, *, hoist: bool = True, hidden: int = 256, vocab: int = 32, batch: int = 1, dtype=jnp.float32
) -> MemoryRow:
    """XLA's memory analysis of the compiled ``value_and_grad`` (compiles only; nothing is allocated)."""
    _check(T, remat, hidden, vocab, batch)
    problem = _abstract_problem(T, hidden, vocab, batch, dtype)
    analysis = _grad_fn(remat, hoist).lower(*problem).compile().memory_analysis()
    if analysis is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no compiled memory analysis")
    return MemoryRow(
        T, remat, hoist, analysis.temp_size_in_bytes, analysis.argument_size_in_bytes, analysis.output_size_in_bytes
    )


def _rss_kib() -> dict[str, int]:
    with open("/proc/self/status") as f:
        status = f.read()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) for k in ("VmHWM", "VmRSS")}


def _measure_here(T, remat, hoist, hidden, vocab, batch, dtype_name) -> dict:
    """Run one ``value_and_grad`` in this process and return the rise of its peak RSS, in bytes."""
    problem = jax.block_until_ready(make_problem(T, hidden=hidden, vocab=vocab, batch=batch, dtype=DTYPES[dtype_name]))
    step = _grad_fn(remat, hoist).lower(*problem).compile()
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    before = _rss_kib()["VmRSS"]
    start = time.perf_counter()
    loss, grads = jax.block_until_ready(step(*problem))
    seconds = time.perf_counter() - start
    peak = _rss_kib()["VmHWM"]
    return {"measured_bytes": (peak - before) * 1024, "seconds": seconds, "loss": float(loss)}


def measured_memory(
    T: int,
    remat: str,
    *,
    hoist: bool = True,
    hidden: int = 256,
    vocab: int = 32,
    batch: int = 1,
    dtype: str = "float32",
    timeout: float | None = None,
) -> dict:
    """Run one step in a fresh process (so earlier runs do not hide its peak); Linux only."""
    _check(T, remat, hidden, vocab, batch)
    if not os.path.exists("/proc/self/clear_refs"):
        raise UserError("measured memory reads /proc/self/status and needs Linux; use the compiled analysis")
    spec = json.dumps(dict(T=T, remat=remat, hoist=hoist, hidden=hidden, vocab=vocab, batch=batch, dtype_name=dtype))
    proc = subprocess.run(
        [sys.executable, "-m", "rnn_jax.tools.memory", "--child", spec], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_table(
    Ts, remats=REMATS, *, hoist: bool = True, measure: bool = False, max_bytes: float = 16 * 2**30, **problem
) -> list[MemoryRow]:
    """Compiled analysis for every ``(T, remat)``; with ``measure``, also run those that fit in ``max_bytes``."""
    rows = []
    for T in Ts:
        for remat in remats:
            row = compiled_memory(T, remat, hoist=hoist, **problem)
            if measure and row.compiled_bytes <= max_bytes:
                kwargs = dict(problem, dtype=_dtype_name(problem.get("dtype", jnp.float32)))
                got = measured_memory(T, remat, hoist=hoist, **kwargs)
                row = row._replace(measured_bytes=got["measured_bytes"], seconds=got["seconds"])
            rows.append(row)
    return rows


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


def _mib(n) -> str:
    return "-" if n is None else f"{n / MiB:,.1f}"


def format_table(rows: list[MemoryRow]) -> str:
    """A markdown table, one line per row."""
    lines = [
        "| T | remat | projection | compiled temp MiB | compiled total MiB | measured peak rise MiB | run s |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        secs = "-" if r.seconds is None else f"{r.seconds:.2f}"
        where = "hoisted" if r.hoist else "in loop"
        lines.append(
            f"| {r.T:,} | {r.remat} | {where} | {_mib(r.temp_bytes)} | {_mib(r.compiled_bytes)} "
            f"| {_mib(r.measured_bytes)} | {secs} |"
        )
    return "\n".join(lines)


def cli_main(argv: list[str], prog: str = "rnn-jax memory") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Peak memory of BPTT through a vanilla RNN against T for each remat option "
        "(XLA's compiled memory analysis; with --measure, the peak RSS of a real run).",
    )
    parser.add_argument("--T", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="sequence lengths")
    parser.add_argument("--remat", nargs="+", choices=REMATS, default=list(REMATS))
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=32, help="input and output size (one-hot characters)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default="float32", help="params and compute dtype")
    parser.add_argument(
        "--projection",
        choices=("hoisted", "in-loop", "both"),
        default="both",
        help="input projection and output head as matmuls outside the loop (run's default) or inside it",
    )
    parser.add_argument("--measure", action="store_true", help="also run each configuration and measure peak RSS")
    parser.add_argument(
        "--max-gib", type=float, default=16.0, help="measure only configurations the analysis puts under this"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.T) < 1:
        raise UserError(f"every T must be a positive integer, got {args.T}")
    hoists = {"hoisted": [True], "in-loop": [False], "both": [True, False]}[args.projection]
    problem = dict(hidden=args.hidden, vocab=args.vocab, batch=args.batch, dtype=DTYPES[args.dtype])
    rows = []
    for hoist in hoists:
        rows += memory_table(
            args.T, args.remat, hoist=hoist, measure=args.measure, max_bytes=args.max_gib * 2**30, **problem
        )
    print(
        f"vanilla RNN H={args.hidden}, I=O={args.vocab}, batch {args.batch}, {args.dtype}, "
        f"backend {jax.default_backend()}; sqrt chunk = ceil(sqrt T)"
    )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r._asdict() | {"compiled_bytes": r.compiled_bytes} for r in rows], f, indent=1)
    return 0


def _child_main(spec: str) -> None:
    print(json.dumps(_measure_here(**json.loads(spec))))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_main(sys.argv[2])
    else:
        sys.exit(cli_main(sys.argv[1:], prog="python -m rnn_jax.tools.memory"))
