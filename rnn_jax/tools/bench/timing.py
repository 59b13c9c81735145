"""What every suite of ``rnn-jax bench`` shares: sizes, the machine, the interleaved clock, compilation and
one measurement's record."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.dtypes import DTYPES
from rnn_jax.errors import UserError

GATES = {"vanilla": 1, "lstm": 4, "gru": 3}
MODES = ("fwd", "fwd_bwd")


class Shape(NamedTuple):
    """One layer's sizes: batch ``B``, steps ``T``, input features ``I``, hidden units ``H``."""

    B: int
    T: int
    I: int
    H: int


def parse_config(text: str) -> Shape:
    """``"32,128,256,256"`` -> ``Shape(B=32, T=128, I=256, H=256)``."""
    parts = text.replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) != 4 or min(sizes) < 1:
        raise UserError(f"--config expects four positive integers B,T,I,H, got {text!r}")
    return Shape(*sizes)


def split_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return items


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def jax_device() -> str:
    d = jax.devices()[0]
    return f"cpu: {cpu_model()}" if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"


def n_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pin_threads(n: int) -> None:
    """Pin this process to its first ``n`` allowed CPUs (call before JAX or torch starts computing)."""
    if not hasattr(os, "sched_setaffinity"):
        raise UserError("--threads needs sched_setaffinity (Linux)")
    cpus = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(cpus):
        raise UserError(f"--threads must lie in [1, {len(cpus)}] (the CPUs this process may use), got {n}")
    os.sched_setaffinity(0, cpus[:n])


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> str:
    """The device, the threads in use and the versions of every library timed."""
    versions = ", ".join(f"{p} {_version(p)}" for p in ("jax", "jaxlib", "flax", "torch") if _version(p))
    return f"{jax_device()}; {n_threads()} of {os.cpu_count()} CPUs; {versions}"


def conditions() -> dict:
    """Now: the UTC time and the load average over 1, 5 and 15 minutes (what ``uptime`` shows)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return dict(time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), load=load and [round(x, 2) for x in load])


@dataclasses.dataclass
class Timed:
    """One thing to time: ``call()`` runs it to completion; times accumulate over rounds."""

    meta: dict
    call: Callable[[], Any]
    wall: list = dataclasses.field(default_factory=list)
    cpu: list = dataclasses.field(default_factory=list)


def time_rounds(items: list[Timed], *, warmup: int, reps: int, rounds: int) -> None:
    """Warm every item up, then time ``reps`` calls of each, item after item, ``rounds`` times.

    Interleaving spreads any change of machine load over all items alike, so their ratios stay fair.
    CPU time (all threads of the process) is kept too: it is less sensitive to other processes.
    """
    for item in items:
        for _ in range(warmup):
            item.call()
    for _ in range(rounds):
        for item in items:
            for _ in range(reps):
                w0, c0 = time.perf_counter(), time.process_time()
                item.call()
                item.wall.append(time.perf_counter() - w0)
                item.cpu.append(time.process_time() - c0)


def compile_jax(fn, args) -> tuple[Callable, float, float | None]:
    """Trace, lower and compile ``fn``; return ``(compiled, seconds, peak MB or None)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    try:
        mem = compiled.memory_analysis()
        peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20
    except Exception:  # not every backend reports it
        peak = None
    return compiled, seconds, peak


def matmul_flops(cell: str, s: Shape, mode: str) -> float | None:
    """Matmul FLOPs of one layer: ``x W_x`` and ``h W_h`` forward; ``dW_x``, ``dW_h``, ``dh`` backward."""
    if cell not in GATES:  # a user's cell: its matmuls are unknown here
        return None
    GH = GATES[cell] * s.H
    fwd = 2.0 * s.B * s.T * GH * (s.I + s.H)
    return fwd if mode == "fwd" else fwd + 2.0 * s.B * s.T * GH * (s.I + 2 * s.H)


FLOOR_GEMM = (4096, 256, 1024)
"""``(M, K, N)`` of the GEMM whose rate prices a layer's matmuls: as large as one layer's hoisted input projection."""


def _median_seconds(call: Callable[[], Any], warmup: int = 3, reps: int = 15) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_rates(dtype_name: str, torch=None) -> dict[str, float]:
    """GFLOP/s of one large GEMM (:data:`FLOOR_GEMM`) here: ``{"xla": ..., "torch": ...}`` (torch where given).

    The best of them is the rate this machine reaches on large matmuls; a layer's *matmul floor* is its matmul
    FLOPs (:func:`matmul_flops`) at that rate: no implementation of the layer's arithmetic can go below it
    without skipping work, so ``ms / floor_ms`` says how far from the hardware a row is.
    """
    M, K, N = FLOOR_GEMM
    flops = 2.0 * M * K * N
    a = jax.random.normal(jax.random.key(0), (M, K), DTYPES[dtype_name])
    b = jax.random.normal(jax.random.key(1), (K, N), DTYPES[dtype_name])
    matmul = jax.jit(jnp.matmul)
    rates = {"xla": flops / _median_seconds(lambda: jax.block_until_ready(matmul(a, b))) / 1e9}
    if torch is not None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        tdtype = getattr(torch, dtype_name)
        ta, tb = torch.randn(M, K, device=dev, dtype=tdtype), torch.randn(K, N, device=dev, dtype=tdtype)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        rates["torch"] = flops / _median_seconds(lambda: (ta @ tb, sync())) / 1e9
    return {k: round(v, 1) for k, v in rates.items()}


def runner(compiled, *args) -> Callable[[], Any]:
    return lambda: jax.block_until_ready(compiled(*args))


def record(meta: dict, item: Timed, flops: float | None) -> dict:
    """One measurement: medians of ``item``'s times, and every raw time (``wall_ms_all``, ``cpu_ms_all``)."""
    ms = statistics.median(item.wall) * 1e3
    rec = dict(meta)
    rec.update(
        ms=round(ms, 6),  # nanoseconds: a native step of a tiny layer takes a few microseconds
        us_per_step=round(ms * 1e3 / meta["T"], 3),
        cpu_ms=round(statistics.median(item.cpu) * 1e3, 4),
        gflops=None if flops is None else float(f"{flops / ms / 1e6:.4g}"),
        reps=len(item.wall),
        wall_ms_all=[round(t * 1e3, 4) for t in item.wall],
        cpu_ms_all=[round(t * 1e3, 4) for t in item.cpu],
    )
    return rec


def mean_square(ys) -> jax.Array:
    return jnp.mean(jnp.square(ys.astype(jnp.float32)))
