"""The suites of ``rnn-jax bench``: one layer against its peers (:func:`measure_layers`), compile time against
``T`` (:func:`measure_compile`) and the linear cells' two scans (:func:`measure_linear`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from rnn_jax import linear
from rnn_jax.dtypes import DTYPES
from rnn_jax.errors import UserError
from rnn_jax.tools.bench.impls import DEFAULT_IMPLS, IMPL_ROW, jax_impl, python_loop_impl, run_impl
from rnn_jax.tools.bench.peers import (
    CUDNN_IMPL,
    FLAX_IMPLS,
    PEER_ROWS,
    TORCH_CELLS,
    check_cudnn_platform,
    torch_items,
    torch_module,
)
from rnn_jax.tools.bench.timing import (
    MODES,
    Shape,
    Timed,
    compile_jax,
    jax_device,
    matmul_flops,
    mean_square,
    n_threads,
    record,
    runner,
    time_rounds,
)


def _jax_items(impls, cell, s: Shape, dtype_name: str, modes, key, max_loop_T: int, log, skips) -> list[Timed]:
    """Compiled items of every JAX implementation of ``cell``; an ``impl=`` row that refuses this call is left
    out, its reason appended to ``skips`` (and logged)."""
    dtype = DTYPES[dtype_name]
    xs = jax.random.normal(jax.random.fold_in(key, 1), (s.B, s.T, s.I), dtype)
    items = []
    for impl in impls:
        if impl == "python loop" and s.T > max_loop_T:
            continue
        built = jax_impl(impl)(cell, s, dtype, key)
        if built is None:
            continue
        loss, params = built
        for mode in modes:
            fn = loss if mode == "fwd" else jax.grad(loss)
            try:
                compiled, compile_s, peak = compile_jax(fn, (params, xs))
            except UserError as err:  # an impl= that does not run this cell, e.g. custom_jvp for an LSTM
                if not impl.startswith(IMPL_ROW.format("")):
                    raise
                skips.append(f"{impl} skipped for {cell}: {err}")
                if log:
                    log(f"  {skips[-1]}")
                break
            meta = dict(impl=impl, lib=PEER_ROWS.get(impl, "jax"), mode=mode, device=jax_device())
            meta.update(compile_s=round(compile_s, 3), peak_mb=None if peak is None else round(peak, 2))
            meta.update(threads=n_threads())
            if impl == IMPL_ROW.format("pallas") and jax.default_backend() == "cpu":
                meta["interpret"] = True  # Pallas emulates the kernel on the CPU: exact, and no measure of it
            items.append(Timed(meta=meta, call=runner(compiled, params, xs)))
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
    ``peers``: ``"flax"`` adds every flax cell of each kind, ``"torch"`` torch's ``nn.RNN/LSTM/GRU``,
    ``"jax_cudnn"`` cuDNN's LSTM through ``jax.experimental.rnn`` (GPU only). ``cells``: built-in names or
    a user's cell as ``"module:attr"`` (it needs ``init``; the peers have no such cell). A
    :class:`UserError` says why when nothing at all can be timed.
    """
    if runs < 1:
        raise UserError(f"--runs must be at least 1, got {runs}")
    impls = list(impls) + [f"rnn_jax unroll={u}" for u in unrolls]
    if "flax" in peers:
        impls += [i for i in FLAX_IMPLS if i not in impls]
    if "torch" in peers and torch_module() is None:
        raise UserError("--peers torch needs PyTorch: pip install 'rnn-jax[bench]' (the CPU build is enough)")
    if "jax_cudnn" in peers:
        check_cudnn_platform()
        impls += [CUDNN_IMPL]
    key = jax.random.key(seed)
    groups, skips = [], []
    for s in shapes:
        for cell in cells:
            if log:
                log(f"B={s.B} T={s.T} I={s.I} H={s.H} {cell}: compiling")
            items = _jax_items(impls, cell, s, dtype, modes, key, max_loop_T, log, skips)
            if "torch" in peers and cell in TORCH_CELLS:
                items += torch_items(cell, s, dtype, modes, n_threads())
            for item in items:
                item.meta.update(cell=cell, B=s.B, T=s.T, I=s.I, H=s.H, dtype=dtype)
            groups.append(items)
    if not any(groups):
        raise UserError("nothing to time: " + ("; ".join(skips) or f"no implementation asked for runs {list(cells)}"))
    records = []
    for run_index in range(runs):
        for items in groups:
            records += _time_run(items, run_index, warmup=warmup, reps=reps, rounds=rounds, log=log)
    return records


def _time_run(items: list[Timed], run_index: int, *, warmup, reps, rounds, log) -> list[dict]:
    """One run of one shape and cell: fresh times for every item, one record each."""
    for item in items:
        item.wall.clear()
        item.cpu.clear()
    time_rounds(items, warmup=warmup, reps=reps, rounds=rounds)
    records = []
    for item in items:
        meta = dict(item.meta, run=run_index)
        records.append(record(meta, item, matmul_flops(meta["cell"], Shape(*(meta[k] for k in "BTIH")), meta["mode"])))
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
        for impl, builder in (("rnn_jax", run_impl), ("python loop", python_loop_impl)):
            if impl == "python loop" and T > max_loop_T:
                continue
            loss, params = builder(cell, s, DTYPES[dtype], key)
            _, seconds, peak = compile_jax(jax.grad(loss), (params, xs))
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
                    return mean_square(linear.run_linear(linear.LINEAR_CELLS[name], p, None, x, method=method)[1])

                for mode in modes:
                    fn = loss if mode == "fwd" else jax.grad(loss)
                    compiled, compile_s, peak = compile_jax(fn, (params, xs))
                    meta = dict(impl=f"run_linear {method}", lib="jax", cell=name, mode=mode, B=B, T=T, I=I, H=H)
                    meta.update(
                        dtype=dtype, compile_s=round(compile_s, 3), peak_mb=None if peak is None else round(peak, 2)
                    )
                    meta.update(device=jax_device(), threads=n_threads())
                    items.append(Timed(meta=meta, call=runner(compiled, params, xs)))
            time_rounds(items, warmup=warmup, reps=reps, rounds=rounds)
            records += [record(item.meta, item, None) for item in items]
    return records
