"""Scan performance, the issue's figures in one run: layers against torch and flax, unroll, compile, linear.

Four suites of :mod:`rnn_jax.tools.bench`, written as JSON lines to ``runs/bench/`` and printed as tables:

1. one layer (LSTM and vanilla RNN), forward+backward, at the issue's CPU sizes (B=32, T=128,
   I=H=256) and (B=1, T=2048, I=H=32): the default path, ``run(..., impl="scan")``, the projection inside
   the step, flax ``nn.RNN`` cells and torch ``nn.RNN``/``nn.LSTM`` (when installed);
2. the default path's ``unroll`` swept over 1, 2, 4, 8 (figure ``docs/bench_unroll.png``);
3. compile time of the scan against T (64, 512, 4096), and of a Python loop under ``jit`` (up to 512);
4. the linear cells (minGRU, diagonal) by the sequential scan and by ``lax.associative_scan``.

Run: ``python experiments/bench_scan.py`` (about 10 minutes on 2 idle CPU cores); ``--threads 1``
pins the process to one core (torch and XLA then each use one thread), ``--smoke`` runs tiny sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from rnn_jax.tools import bench


@dataclasses.dataclass(frozen=True)
class Config:
    shapes: tuple[str, ...] = ("32,128,256,256", "1,2048,32,32")
    cells: tuple[str, ...] = ("lstm", "vanilla")
    impls: tuple[str, ...] = ("rnn_jax", "rnn_jax impl=scan", "scan inside")
    peers: tuple[str, ...] = ("torch", "flax")
    unrolls: tuple[int, ...] = (1, 2, 4, 8)
    unroll_shapes: tuple[str, ...] = ("32,128,256,256", "1,2048,32,32", "8,512,64,64")
    compile_Ts: tuple[int, ...] = (64, 512, 4096)
    compile_sizes: tuple[int, int, int] = (1, 32, 32)  # B, I, H
    max_loop_T: int = 512
    linear_Ts: tuple[int, ...] = (256, 1024, 4096)
    linear_sizes: tuple[int, int, int] = (8, 64, 64)  # B, I, H
    reps: int = 5
    rounds: int = 3
    out_dir: str = "runs/bench"
    png: str = "docs/bench_unroll.png"


SMOKE = Config(
    shapes=("2,16,8,8",),
    unroll_shapes=("2,16,8,8",),
    compile_Ts=(8, 32),
    max_loop_T=32,
    linear_Ts=(16, 64),
    linear_sizes=(2, 8, 8),
    reps=1,
    rounds=1,
    out_dir="runs/bench_smoke",
    png="runs/bench_smoke/unroll.png",
)


def _emit(name: str, records: list[dict], config: Config) -> None:
    path = os.path.join(config.out_dir, f"{name}.jsonl")
    if os.path.exists(path):
        os.remove(path)
    bench.write_json(records, path)
    print(f"\n## {name} ({path})")
    bench.print_table(bench.summarize(records))


def main(config: Config) -> dict[str, list[dict]]:
    print(f"# device: {bench.jax_device()}; threads: {bench.n_threads()}; load: {os.getloadavg()}")
    log = lambda line: print(line, flush=True)  # noqa: E731
    shapes = [bench.parse_config(s) for s in config.shapes]
    results = {
        "layers": bench.measure_layers(
            shapes,
            cells=config.cells,
            impls=config.impls,
            peers=[p for p in config.peers if p != "torch" or bench._torch() is not None],
            modes=("fwd_bwd",),
            reps=config.reps,
            rounds=config.rounds,
            log=log,
        ),
        "unroll": bench.measure_layers(
            [bench.parse_config(s) for s in config.unroll_shapes],
            cells=("lstm",),
            impls=("rnn_jax",),
            unrolls=config.unrolls,
            modes=("fwd_bwd",),
            reps=config.reps,
            rounds=config.rounds,
        ),
    }
    B, I, H = config.compile_sizes
    results["compile"] = bench.measure_compile(config.compile_Ts, B=B, I=I, H=H, max_loop_T=config.max_loop_T)
    B, I, H = config.linear_sizes
    results["linear"] = bench.measure_linear(
        config.linear_Ts, cells=("mingru", "diag"), B=B, I=I, H=H, reps=config.reps, rounds=config.rounds
    )
    for name, records in results.items():
        _emit(name, records, config)
    bench.plot(results["unroll"], config.png)
    print(f"# load after: {os.getloadavg()}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--threads", type=int, help="pin to this many CPUs (torch uses as many threads)")
    args = parser.parse_args()
    if args.threads:
        bench.pin_threads(args.threads)
    main(SMOKE if args.smoke else Config())
