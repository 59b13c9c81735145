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
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import linear
from rnn_jax.cells import CELLS, Cell, identity_readout
from rnn_jax.errors import UserError
from rnn_jax.scan import IMPLS, run

__all__ = [
    "Shape",
    "parse_config",
    "JAX_IMPLS",
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

GATES = {"vanilla": 1, "lstm": 4, "gru": 3}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
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


def _split_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise UserError(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return items


# ---------------------------------------------------------------------------------------------------
# The machine and the clock
# ---------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
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
    return f"cpu: {_cpu_model()}" if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"


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
class _Timed:
    """One thing to time: ``call()`` runs it to completion; times accumulate over rounds."""

    meta: dict
    call: Callable[[], Any]
    wall: list = dataclasses.field(default_factory=list)
    cpu: list = dataclasses.field(default_factory=list)


def _time_rounds(items: list[_Timed], *, warmup: int, reps: int, rounds: int) -> None:
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


def _compile_jax(fn, args) -> tuple[Callable, float, float | None]:
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


def _matmul_flops(cell: str, s: Shape, mode: str) -> float:
    """Matmul FLOPs of one layer: ``x W_x`` and ``h W_h`` forward; ``dW_x``, ``dW_h``, ``dh`` backward."""
    GH = GATES[cell] * s.H
    fwd = 2.0 * s.B * s.T * GH * (s.I + s.H)
    return fwd if mode == "fwd" else fwd + 2.0 * s.B * s.T * GH * (s.I + 2 * s.H)


def _runner(compiled, *args) -> Callable[[], Any]:
    return lambda: jax.block_until_ready(compiled(*args))


def _record(meta: dict, item: _Timed, flops: float | None) -> dict:
    """One measurement: medians of ``item``'s times, and every raw time (``wall_ms_all``, ``cpu_ms_all``)."""
    ms = statistics.median(item.wall) * 1e3
    rec = dict(meta)
    rec.update(
        ms=round(ms, 4),
        us_per_step=round(ms * 1e3 / meta["T"], 3),
        cpu_ms=round(statistics.median(item.cpu) * 1e3, 4),
        gflops=None if flops is None else float(f"{flops / ms / 1e6:.4g}"),
        reps=len(item.wall),
        wall_ms_all=[round(t * 1e3, 4) for t in item.wall],
        cpu_ms_all=[round(t * 1e3, 4) for t in item.cpu],
    )
    return rec


# ---------------------------------------------------------------------------------------------------
# JAX implementations: each builds (loss(params, xs), params) for one cell and shape
# ---------------------------------------------------------------------------------------------------


def bench_cell(name: str) -> Cell:
    """The library cell timed as ``name``; the vanilla RNN without its output head, like torch's nn.RNN."""
    cell = CELLS[name]
    return dataclasses.replace(cell, readout=identity_readout) if name == "vanilla" else cell


def _params(name: str, key, s: Shape, dtype):
    return CELLS[name].init(key, s.I, s.H, dtype)  # the vanilla head W_hy goes unused: bench_cell drops it


def _mean_square(ys) -> jax.Array:
    return jnp.mean(jnp.square(ys.astype(jnp.float32)))


def _run_impl(name, s, dtype, key, **run_kwargs):
    cell = bench_cell(name)

    def loss(params, xs):
        return _mean_square(run(cell, params, None, xs, **run_kwargs)[1])

    return loss, _params(name, key, s, dtype)


def _inside_impl(name, s, dtype, key, **run_kwargs):
    """Input projection inside the step: a plain function, which ``run`` cannot hoist."""
    cell = bench_cell(name)

    def plain(params, carry, x):
        return cell(params, carry, x)

    def loss(params, xs):
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        return _mean_square(run(plain, params, carry, xs, **run_kwargs)[1])

    return loss, _params(name, key, s, dtype)


def _hoisted_impl(name, s, dtype, key, **run_kwargs):
    """Input projection of all steps as one matmul before the loop, on every backend."""
    cell = bench_cell(name)

    def step(params, carry, u):
        return cell.step(params, carry, u)

    def loss(params, xs):
        us = jax.vmap(jax.vmap(cell.project, (None, 0)), (None, 0))(params, xs)
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        return _mean_square(run(step, params, carry, us, **run_kwargs)[1])

    return loss, _params(name, key, s, dtype)


def _python_loop_impl(name, s, dtype, key):
    """A Python ``for`` loop over time under ``jit``: the program (and its compile time) grows with T."""
    cell = bench_cell(name)

    def loss(params, xs):
        carry = jax.tree.map(lambda z: jnp.zeros((s.B,) + z.shape, z.dtype), cell.init_carry(params))
        step = jax.vmap(cell, (None, 0, 0))
        ys = []
        for t in range(xs.shape[1]):
            carry, y = step(params, carry, xs[:, t])
            ys.append(y)
        return _mean_square(jnp.stack(ys, axis=1))

    return loss, _params(name, key, s, dtype)


def _flax_impl(name, s, dtype, key, cell_name):
    import flax.linen as nn

    wanted = {"vanilla": ("SimpleCell",), "lstm": ("LSTMCell", "OptimizedLSTMCell"), "gru": ("GRUCell",)}
    if cell_name not in wanted[name]:
        return None
    model = nn.RNN(getattr(nn, cell_name)(features=s.H, param_dtype=dtype, dtype=dtype))
    params = model.init(key, jnp.zeros((s.B, s.T, s.I), dtype))

    def loss(params, xs):
        return _mean_square(model.apply(params, xs))

    return loss, params


def _nnx_rnn_impl(name, s, dtype, key, ours: bool):
    """flax's ``nnx.OptimizedLSTMCell`` under ``rnn_jax.flax_interop.RNN`` (``ours``) or flax's ``nnx.RNN``."""
    from flax import nnx

    from rnn_jax.flax_interop import RNN

    if name != "lstm":
        return None
    cell = nnx.OptimizedLSTMCell(s.I, s.H, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(params=key))
    graphdef, params, rest = nnx.split((RNN if ours else nnx.RNN)(cell), nnx.Param, ...)

    def loss(params, xs):
        return _mean_square(nnx.merge(graphdef, params, rest, copy=True)(xs))  # copies: calls update the rngs

    return loss, params


JAX_IMPLS: dict[str, Callable] = {
    "rnn_jax": _run_impl,
    "rnn_jax remat=step": partial(_run_impl, remat="step"),
    "rnn_jax remat=sqrt": partial(_run_impl, remat="sqrt"),
    "scan inside": _inside_impl,
    "scan hoisted": _hoisted_impl,
    "python loop": _python_loop_impl,
    "flax LSTMCell": partial(_flax_impl, cell_name="LSTMCell"),
    "flax OptimizedLSTMCell": partial(_flax_impl, cell_name="OptimizedLSTMCell"),
    "flax SimpleCell": partial(_flax_impl, cell_name="SimpleCell"),
    "flax GRUCell": partial(_flax_impl, cell_name="GRUCell"),
    "flax_interop.RNN OptimizedLSTMCell": partial(_nnx_rnn_impl, ours=True),
    "nnx.RNN OptimizedLSTMCell": partial(_nnx_rnn_impl, ours=False),
}
"""Implementations by name: ``builder(cell, shape, dtype, key) -> (loss(params, xs), params)`` or ``None``
where the implementation has no such cell. ``rnn_jax unroll=U`` is added for every ``--unrolls`` value."""

DEFAULT_IMPLS = ("rnn_jax",)
RUN_IMPLS = IMPLS
"""``rnn_jax.run(..., impl=...)`` values ``--impls`` takes; ``auto`` is the row ``rnn_jax``."""
_IMPL_ROW = "rnn_jax impl={}"
FLAX_IMPLS = ("flax LSTMCell", "flax OptimizedLSTMCell", "flax SimpleCell", "flax GRUCell")


def _jax_impl(impl: str):
    if impl.startswith("rnn_jax unroll="):
        return partial(_run_impl, unroll=int(impl.split("=")[1]))
    if impl.startswith(_IMPL_ROW.format("")):
        return partial(_run_impl, impl=impl.split("=")[1])
    return JAX_IMPLS[impl]


# ---------------------------------------------------------------------------------------------------
# torch (optional)
# ---------------------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_items(cell: str, s: Shape, dtype_name: str, modes, threads: int) -> list[_Timed]:
    torch = _torch()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(threads)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    cls = {"vanilla": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    torch.manual_seed(0)
    module = cls(s.I, s.H).to(dev, tdtype)
    x = torch.randn(s.T, s.B, s.I, device=dev, dtype=tdtype)  # torch's native time-major layout
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    device = f"cuda: {torch.cuda.get_device_name()}" if dev == "cuda" else f"cpu: {_cpu_model()}"
    backend = "cudnn" if dev == "cuda" and torch.backends.cudnn.enabled else "aten"

    def fwd():
        with torch.no_grad():
            out, _ = module(x)
            out.float().pow(2).mean().item()
        sync()

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.float().pow(2).mean().backward()
        sync()

    items = []
    for mode in modes:
        meta = dict(impl=f"torch nn.{cls.__name__}", lib="torch", backend=backend, device=device, compile_s=0.0)
        meta.update(peak_mb=None, threads=torch.get_num_threads() if dev == "cpu" else None)
        items.append(_Timed(meta=dict(meta, mode=mode), call=fwd if mode == "fwd" else fwd_bwd))
    return items


# ---------------------------------------------------------------------------------------------------
# Suites
# ---------------------------------------------------------------------------------------------------


def _jax_items(impls, cell, s: Shape, dtype_name: str, modes, key, max_loop_T: int, log=None) -> list[_Timed]:
    dtype = DTYPES[dtype_name]
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.B, s.T, s.I), dtype)
    items = []
    for impl in impls:
        if impl == "python loop" and s.T > max_loop_T:
            continue
        built = _jax_impl(impl)(cell, s, dtype, key)
        if built is None:
            continue
        loss, params = built
        for mode in modes:
            fn = loss if mode == "fwd" else jax.grad(loss)
            try:
                compiled, compile_s, peak = _compile_jax(fn, (params, xs))
            except UserError as err:  # an impl= that does not run this cell, e.g. custom_jvp for an LSTM
                if not impl.startswith(_IMPL_ROW.format("")):
                    raise
                if log:
                    log(f"  {impl} skipped for {cell}: {err}")
                break
            meta = dict(impl=impl, lib="flax" if impl in FLAX_IMPLS else "jax", mode=mode, device=jax_device())
            meta.update(compile_s=round(compile_s, 3), peak_mb=None if peak is None else round(peak, 2))
            meta.update(threads=n_threads())
            items.append(_Timed(meta=meta, call=_runner(compiled, params, xs)))
    return items


def measure_layers(
    shapes: Sequence[Shape],
    *,
    cells: Sequence[str] = ("lstm", "gru", "vanilla"),
    impls: Sequence[str] = DEFAULT_IMPLS,
    peers: Sequence[str] = (),
    modes: Sequence[str] = MODES,
    unrolls: Sequence[int] = (),
    dtype: str = "float32",
    warmup: int = 2,
    reps: int = 5,
    rounds: int = 3,
    runs: int = 1,
    max_loop_T: int = 256,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Time every implementation on every shape and cell; one record (a dict) per measurement and run.

    Everything is compiled first. Then the whole comparison runs ``runs`` times: in each run, the items
    of one shape and cell are warmed up and timed in interleaved rounds, shape after shape. Records carry
    ``impl, lib, cell, mode, B, T, I, H, dtype, run, ms`` (median wall of the run), ``cpu_ms``,
    ``us_per_step``, ``gflops`` (matmul FLOPs per second), ``compile_s``, ``peak_mb`` (XLA's buffers,
    where reported), ``device``, ``threads`` and every raw time (``wall_ms_all``, ``cpu_ms_all``).
    ``peers``: ``"flax"`` adds every flax cell of each kind, ``"torch"`` torch's ``nn.RNN/LSTM/GRU``.
    """
    if runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    impls = list(impls) + [f"rnn_jax unroll={u}" for u in unrolls]
    if "flax" in peers:
        impls += [i for i in FLAX_IMPLS if i not in impls]
    if "torch" in peers and _torch() is None:
        raise UserError("--peers torch needs PyTorch: pip install 'rnn-jax[bench]' (the CPU build is enough)")
    key = jax.random.key(seed)
    groups = []
    for s in shapes:
        for cell in cells:
            if log:
                log(f"B={s.B} T={s.T} I={s.I} H={s.H} {cell}: compiling")
            items = _jax_items(impls, cell, s, dtype, modes, key, max_loop_T, log)
            if "torch" in peers:
                items += _torch_items(cell, s, dtype, modes, n_threads())
            for item in items:
                item.meta.update(cell=cell, B=s.B, T=s.T, I=s.I, H=s.H, dtype=dtype)
            groups.append(items)
    records = []
    for run_index in range(runs):
        for items in groups:
            records += _time_run(items, run_index, warmup=warmup, reps=reps, rounds=rounds, log=log)
    return records


def _time_run(items: list[_Timed], run_index: int, *, warmup, reps, rounds, log) -> list[dict]:
    """One run of one shape and cell: fresh times for every item, one record each."""
    for item in items:
        item.wall.clear()
        item.cpu.clear()
    _time_rounds(items, warmup=warmup, reps=reps, rounds=rounds)
    records = []
    for item in items:
        meta = dict(item.meta, run=run_index)
        records.append(
            _record(meta, item, _matmul_flops(meta["cell"], Shape(*(meta[k] for k in "BTIH")), meta["mode"]))
        )
        if log:
            r = records[-1]
            log(f"  run {run_index}  {r['cell']:<7} {r['impl']:<26} {r['mode']:<8} {r['ms']:10.3f} ms")
    return records


def measure_compile(
    Ts: Sequence[int],
    *,
    cell: str = "lstm",
    B: int = 1,
    I: int = 32,
    H: int = 32,
    max_loop_T: int = 512,
    dtype: str = "float32",
    seed: int = 0,
) -> list[dict]:
    """Compile time of ``jit(grad(loss))`` against ``T``: the scan (flat) and a Python loop (grows)."""
    key = jax.random.key(seed)
    records = []
    for T in Ts:
        s = Shape(B, T, I, H)
        xs = jax.random.normal(key, (B, T, I), DTYPES[dtype])
        for impl, builder in (("rnn_jax", _run_impl), ("python loop", _python_loop_impl)):
            if impl == "python loop" and T > max_loop_T:
                continue
            loss, params = builder(cell, s, DTYPES[dtype], key)
            _, seconds, peak = _compile_jax(jax.grad(loss), (params, xs))
            records.append(
                dict(impl=impl, lib="jax", cell=cell, mode="compile", B=B, T=T, I=I, H=H, dtype=dtype, ms=None)
                | dict(compile_s=round(seconds, 3), peak_mb=None if peak is None else round(peak, 2))
                | dict(device=jax_device(), threads=n_threads())
            )
    return records


def measure_linear(
    Ts: Sequence[int],
    *,
    cells: Sequence[str] = ("mingru",),
    B: int = 8,
    I: int = 64,
    H: int = 64,
    modes: Sequence[str] = MODES,
    dtype: str = "float32",
    warmup: int = 2,
    reps: int = 5,
    rounds: int = 3,
    seed: int = 0,
) -> list[dict]:
    """A linear cell by the sequential scan (``rnn_jax.run``) and by ``lax.associative_scan``."""
    key = jax.random.key(seed)
    inits = {"mingru": linear.mingru_init, "diag": linear.diag_init}
    records = []
    for T in Ts:
        for name in cells:
            params = inits[name](key, I, H, DTYPES[dtype])
            xs = jax.random.normal(jax.random.fold_in(key, 1), (B, T, I), DTYPES[dtype])
            items = []
            for method in linear.METHODS:

                def loss(p, x, method=method, name=name):
                    return _mean_square(linear.run_linear(linear.LINEAR_CELLS[name], p, None, x, method=method)[1])

                for mode in modes:
                    fn = loss if mode == "fwd" else jax.grad(loss)
                    compiled, compile_s, peak = _compile_jax(fn, (params, xs))
                    meta = dict(impl=f"run_linear {method}", lib="jax", cell=name, mode=mode, B=B, T=T, I=I, H=H)
                    meta.update(
                        dtype=dtype, compile_s=round(compile_s, 3), peak_mb=None if peak is None else round(peak, 2)
                    )
                    meta.update(device=jax_device(), threads=n_threads())
                    items.append(_Timed(meta=meta, call=_runner(compiled, params, xs)))
            _time_rounds(items, warmup=warmup, reps=reps, rounds=rounds)
            records += [_record(item.meta, item, None) for item in items]
    return records


# ---------------------------------------------------------------------------------------------------
# Output: table, JSON lines, figure
# ---------------------------------------------------------------------------------------------------

PEER_LIBS = ("torch", "flax")
_CASE = ("cell", "mode", "B", "T", "I", "H", "dtype")
_PER_RUN = ("run", "ms", "cpu_ms", "us_per_step", "gflops", "wall_ms_all", "cpu_ms_all")


class Ratio(NamedTuple):
    """A peer's time over ours, paired run by run (above 1: we are faster): median and spread over runs."""

    median: float
    lo: float
    hi: float
    runs: int

    @property
    def parity(self) -> bool:
        """The spread over several runs straddles 1.0: neither side is faster in every run."""
        return self.runs > 1 and self.lo <= 1.0 <= self.hi


def ratio_of_runs(peer_ms: Sequence[float], ms: Sequence[float]) -> Ratio:
    """``r_k = peer_ms[k] / ms[k]`` for each run ``k`` (both timed in the same interleaved run); their median,
    min and max."""
    if len(peer_ms) != len(ms) or not ms:
        raise ValueError(f"need one peer time per run of ours, got {len(peer_ms)} and {len(ms)}")
    ratios = [p / m for p, m in zip(peer_ms, ms)]
    return Ratio(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def format_ratio(ratio: Ratio | None) -> str:
    """``1.21x (1.15-1.30)``; ``parity 0.98x (0.95-1.04)`` when the spread straddles 1; ``-`` for none."""
    if ratio is None:
        return "-"
    text = f"{_rnum(ratio.median)}x" + (f" ({_rnum(ratio.lo)}-{_rnum(ratio.hi)})" if ratio.runs > 1 else "")
    return f"parity {text}" if ratio.parity else text


def _rnum(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.01 else f"{x:.2g}"


def _vs_peer(group: list[dict], by_run: dict, lib: str) -> tuple[Ratio | None, str | None]:
    """Ratio of ``group`` (one impl's records, one per run) against the fastest ``lib`` cell of each run."""
    if group[0].get("lib") == lib:
        return None, None
    theirs, ours, names = [], [], []
    for rec in group:
        peers = [p for p in by_run[_case(rec), rec.get("run", 0)] if p.get("lib") == lib and p.get("ms") is not None]
        if peers and rec.get("ms") is not None:
            fastest = min(peers, key=lambda p: p["ms"])
            theirs.append(fastest["ms"])
            ours.append(rec["ms"])
            names.append(fastest["impl"])
    if not ours:
        return None, None
    return ratio_of_runs(theirs, ours), max(sorted(set(names)), key=names.count)


def _case(rec: dict) -> tuple:
    return tuple(rec.get(k) for k in _CASE)


def summarize(records: list[dict]) -> list[dict]:
    """One row per implementation and case (cell, mode, shape, dtype), in the records' order.

    ``ms``/``cpu_ms``: medians over runs of each run's median, ``ms_min``/``ms_max`` their range, ``runs``;
    ``vs_torch``/``vs_flax``: a :class:`Ratio` against that library's fastest cell of the same kind in
    each run (``vs_flax_peer`` names the one fastest in most runs); ``None`` for the peer's own rows.
    """
    groups: dict[tuple, list[dict]] = {}
    by_run: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["impl"], _case(rec)), []).append(rec)
        by_run.setdefault((_case(rec), rec.get("run", 0)), []).append(rec)
    rows = []
    for group in groups.values():
        row = {k: v for k, v in group[0].items() if k not in _PER_RUN}
        ms = [r["ms"] for r in group if r.get("ms") is not None]
        row.update(runs=len(group), ms=None, ms_min=None, ms_max=None, cpu_ms=None, us_per_step=None, gflops=None)
        if ms:
            row.update(ms=statistics.median(ms), ms_min=min(ms), ms_max=max(ms))
            row.update(cpu_ms=statistics.median(r["cpu_ms"] for r in group), us_per_step=row["ms"] * 1e3 / row["T"])
            gflops = [r["gflops"] for r in group if r.get("gflops") is not None]
            row["gflops"] = statistics.median(gflops) if gflops else None
        for lib in PEER_LIBS:
            ratio, row[f"vs_{lib}_peer"] = _vs_peer(group, by_run, lib)
            row[f"vs_{lib}"] = None if ratio is None else dict(ratio._asdict(), parity=ratio.parity)
        rows.append(row)
    return rows


def _ratio(d: dict | None) -> Ratio | None:
    return None if d is None else Ratio(*(d[k] for k in Ratio._fields))


def _number(x: float) -> str:
    """Four significant digits, no exponent above 1000."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _cell_text(v) -> str:
    if v is None:
        return "-"
    return _number(v) if isinstance(v, float) else str(v)


def print_table(rows: list[dict], file=None) -> None:
    """A markdown table of :func:`summarize`'s rows; ``vs torch``/``vs flax``: the peer's time over this one."""
    file = sys.stdout if file is None else file
    several = any(r.get("runs", 1) > 1 for r in rows)
    cols = ["cell", "mode", "B", "T", "I", "H", "impl", "ms"] + (["ms min-max"] if several else [])
    cols += ["us/step", "cpu_ms", "GFLOP/s", "compile_s", "peak_MB", "vs torch", "vs flax"]
    lines = []
    for r in rows:
        row = [r["cell"], r["mode"], r["B"], r["T"], r["I"], r["H"], r["impl"], r.get("ms")]
        if several:
            row.append(None if r.get("ms_min") is None else f"{_number(r['ms_min'])}-{_number(r['ms_max'])}")
        row += [r.get("us_per_step"), r.get("cpu_ms"), r.get("gflops"), r.get("compile_s"), r.get("peak_mb")]
        row += [format_ratio(_ratio(r.get(f"vs_{lib}"))) for lib in PEER_LIBS]
        lines.append([_cell_text(v) for v in row])
    widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for line in lines:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |", file=file)


def write_json(records: list[dict], path: str) -> None:
    """Append one JSON object per record (JSON lines)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def plot(records: list[dict], path: str) -> None:
    """PNG: fwd+bwd time against T (one line per impl and cell), and against ``unroll``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_u) = plt.subplots(1, 2, figsize=(11, 4))
    timed = [r for r in records if r.get("ms") is not None and r["mode"] == "fwd_bwd"]
    for key in sorted({(r["impl"], r["cell"]) for r in timed}):
        pts = sorted((r["T"], r["ms"]) for r in timed if (r["impl"], r["cell"]) == key)
        if len({t for t, _ in pts}) > 1:
            ax_t.plot(*zip(*pts), marker="o", label=f"{key[1]}: {key[0]}")
    ax_t.set(xscale="log", yscale="log", xlabel="T (steps)", ylabel="ms (fwd+bwd)", title="time vs sequence length")
    for key in sorted({(r["cell"], r["B"], r["T"], r["I"], r["H"]) for r in timed}):
        pts = sorted(
            (int(r["impl"].split("=")[1]), r["ms"])
            for r in timed
            if r["impl"].startswith("rnn_jax unroll=") and (r["cell"], r["B"], r["T"], r["I"], r["H"]) == key
        )
        if len(pts) > 1:
            ax_u.plot(*zip(*pts), marker="o", label="{} B={} T={} I={} H={}".format(*key))
    ax_u.set(xscale="log", xlabel="unroll", ylabel="ms (fwd+bwd)", title="time vs unroll")
    for ax in (ax_t, ax_u):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{what} expects comma-separated positive integers, got {text!r}")
    return values


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help ends with its default; flags whose default is "none" say so in their help."""

    def _get_help_string(self, action):
        if action.default in (None, "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


SUITES = ("layers", "compile", "linear")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="params and inputs")
    p.add_argument(
        "--json", metavar="FILE", help="append JSON lines to FILE: header, raw records, table rows (default: none)"
    )
    p.add_argument("--threads", type=int, help="pin to this many CPUs; torch uses as many threads (default: all)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of params and inputs")


def _layers_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Time one recurrent layer per cell against torch and flax (the default suite).",
        epilog=f"Other suites: '{prog} compile --help' (compile time against T), "
        f"'{prog} linear --help' (linear cells, sequential against associative scan).",
        formatter_class=_Help,
    )
    p.add_argument("--config", action="append", metavar="B,T,I,H", help="sizes, repeatable (default: 32,128,256,256)")
    p.add_argument("--cells", default="lstm,gru,vanilla", help="comma-separated: vanilla, lstm, gru")
    variants = ", ".join(i for i in JAX_IMPLS if i != "rnn_jax" and i not in FLAX_IMPLS)
    impls = ", ".join(RUN_IMPLS)
    p.add_argument("--impls", default="auto", help=f"time rnn_jax.run with each impl=, comma-separated: {impls}")
    p.add_argument("--variants", default="", help=f"also time, comma-separated: {variants} (default: none)")
    p.add_argument(
        "--peers", default="", help="comma-separated: torch, flax (every flax cell of the kind; default: none)"
    )
    p.add_argument("--modes", default="fwd,fwd_bwd", help="comma-separated: fwd, fwd_bwd")
    p.add_argument(
        "--unrolls", default="", help="also time rnn_jax with these unroll values, e.g. 1,2,4,8 (default: none)"
    )
    p.add_argument(
        "--runs", type=int, default=1, help="repeat the whole interleaved comparison; ratios: median (min-max)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per implementation per run")
    p.add_argument("--reps", type=int, default=5, help="timed calls per implementation per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all implementations per run")
    p.add_argument("--max-loop-T", type=int, default=256, help="skip the 'python loop' variant above this T")
    p.add_argument("--png", metavar="FILE", help="figure: time vs T and time vs unroll (default: none)")
    _common(p)
    return p


def _compile_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Compile time against T: scan vs Python loop.", formatter_class=_Help
    )
    p.add_argument("--T", default="64,256,1024,4096", help="comma-separated sequence lengths")
    p.add_argument("--cell", default="lstm", choices=sorted(GATES), help="the cell")
    p.add_argument("--config", default="1,0,32,32", metavar="B,_,I,H", help="B and I, H (T comes from --T)")
    p.add_argument("--max-loop-T", type=int, default=512, help="skip the Python loop above this T")
    _common(p)
    return p


def _linear_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Linear cells: sequential scan vs lax.associative_scan.", formatter_class=_Help
    )
    p.add_argument("--T", default="256,1024,4096", help="comma-separated sequence lengths")
    p.add_argument("--cells", default="mingru,diag", help="comma-separated: mingru, diag")
    p.add_argument("--config", default="8,0,64,64", metavar="B,_,I,H", help="B and I, H (T comes from --T)")
    p.add_argument("--modes", default="fwd,fwd_bwd", help="comma-separated: fwd, fwd_bwd")
    p.add_argument("--reps", type=int, default=5, help="timed calls per method per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    _common(p)
    return p


def _impl_rows(text: str) -> list[str]:
    """``--impls auto,scan`` -> the rows ``rnn_jax`` (impl auto) and ``rnn_jax impl=scan``."""
    return [_IMPL_ROW.format(i) if i != "auto" else "rnn_jax" for i in _split_list(text, RUN_IMPLS, "impls")]


def _variants(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in JAX_IMPLS and not (t.startswith("rnn_jax unroll=") and t[15:].isdigit())]
    if bad:
        raise UserError(f"unknown variants {bad}; expected some of {list(JAX_IMPLS)} or 'rnn_jax unroll=U'")
    return items


def _sizes_without_T(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise UserError(f"--config expects B,T,I,H (T is ignored here), got {text!r}")
    B, _, I, H = (int(p) if p.strip() else 0 for p in parts)
    if min(B, I, H) < 1:
        raise UserError(f"--config needs positive B, I and H, got {text!r}")
    return B, I, H


def _layers(args) -> list[dict]:
    rows = _impl_rows(args.impls)
    return measure_layers(
        [parse_config(c) for c in (args.config or ["32,128,256,256"])],
        cells=_split_list(args.cells, list(GATES), "cells"),
        impls=rows + [v for v in _variants(args.variants) if v not in rows],
        peers=_split_list(args.peers, ["torch", "flax"], "peers"),
        modes=_split_list(args.modes, list(MODES), "modes"),
        unrolls=_ints(args.unrolls, "--unrolls") if args.unrolls else (),
        dtype=args.dtype,
        warmup=args.warmup,
        reps=args.reps,
        rounds=args.rounds,
        runs=args.runs,
        max_loop_T=args.max_loop_T,
        seed=args.seed,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )


def _compile(args) -> list[dict]:
    B, I, H = _sizes_without_T(args.config)
    Ts = _ints(args.T, "--T")
    return measure_compile(
        Ts, cell=args.cell, B=B, I=I, H=H, max_loop_T=args.max_loop_T, dtype=args.dtype, seed=args.seed
    )


def _linear(args) -> list[dict]:
    B, I, H = _sizes_without_T(args.config)
    return measure_linear(
        _ints(args.T, "--T"),
        cells=_split_list(args.cells, list(linear.LINEAR_CELLS), "cells"),
        B=B,
        I=I,
        H=H,
        modes=_split_list(args.modes, list(MODES), "modes"),
        dtype=args.dtype,
        reps=args.reps,
        rounds=args.rounds,
        seed=args.seed,
    )


_SUITE = {
    "layers": (_layers_parser, _layers),
    "compile": (_compile_parser, _compile),
    "linear": (_linear_parser, _linear),
}


def print_header(header: dict, file=None) -> None:
    """The conditions of a run, as markdown bullets above its table."""
    file = sys.stdout if file is None else file
    start, end = header["start"], header["end"]
    print(f"- command: `{header['command']}`", file=file)
    print(f"- machine: {header['machine']}; {header['dtype']}", file=file)
    print(
        f"- load average (1, 5, 15 min): {_load_text(start)} at {start['time']}; {_load_text(end)} at {end['time']}",
        file=file,
    )
    if header["suite"] == "layers":
        print(
            f"- ratios: the fastest peer cell of the same kind over this row, paired run by run; median (min-max) "
            f"over {header['runs']} run(s); parity: the spread straddles 1",
            file=file,
        )


def _load_text(cond: dict) -> str:
    return "n/a" if cond["load"] is None else " ".join(f"{x:.2f}" for x in cond["load"])


def cli_main(argv: list[str], prog: str = "rnn-jax bench") -> int:
    """``rnn-jax bench [layers|compile|linear] ...``: measure, print the conditions and a table, write JSON lines."""
    argv = list(argv)
    command = " ".join([prog, *(shlex.quote(a) for a in argv)])
    suite = argv.pop(0) if argv and argv[0] in SUITES else "layers"
    make_parser, measure = _SUITE[suite]
    args = make_parser(prog if suite == "layers" else f"{prog} {suite}").parse_args(argv)
    if args.threads is not None:
        pin_threads(args.threads)
    start = conditions()
    records = measure(args)
    header = dict(command=command, suite=suite, machine=machine(), dtype=args.dtype, runs=getattr(args, "runs", 1))
    header.update(start=start, end=conditions())
    rows = summarize(records)
    print_header(header)
    print()
    print_table(rows)
    if args.json:
        lines = [dict(header, kind="header")] + [dict(r, kind="raw") for r in records]
        write_json(lines + [dict(r, kind="summary") for r in rows], args.json)
    if getattr(args, "png", None):
        plot(rows, args.png)
    return 0
