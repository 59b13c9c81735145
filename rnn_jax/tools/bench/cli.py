"""``rnn-jax bench [layers|compile|linear] ...``: the flags of each suite, and the command itself."""

from __future__ import annotations

import argparse
import shlex
import sys

from rnn_jax import linear
from rnn_jax.cells import resolve_cell
from rnn_jax.dtypes import DTYPES
from rnn_jax.errors import UserError
from rnn_jax.tools.bench.impls import IMPL_ROW, JAX_IMPLS, RUN_IMPLS
from rnn_jax.tools.bench.peers import CUDNN_IMPL, FLAX_IMPLS, torch_module
from rnn_jax.tools.bench.report import add_floors, plot, print_header, print_table, summarize, write_json
from rnn_jax.tools.bench.suites import measure_compile, measure_layers, measure_linear
from rnn_jax.tools.bench.timing import (
    GATES,
    MODES,
    conditions,
    gemm_rates,
    machine,
    parse_config,
    pin_threads,
    split_list,
)


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
PEERS = ("torch", "flax", "jax_cudnn")


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
    p.add_argument(
        "--cells", default="lstm,gru,vanilla", help="comma-separated: vanilla, lstm, gru, or your Cell as module:attr"
    )
    variants = ", ".join(i for i in JAX_IMPLS if i not in ("rnn_jax", CUDNN_IMPL) and i not in FLAX_IMPLS)
    impls = ", ".join(RUN_IMPLS)
    p.add_argument("--impls", default="auto", help=f"time rnn_jax.run with each impl=, comma-separated: {impls}")
    p.add_argument("--variants", default="", help=f"also time, comma-separated: {variants} (default: none)")
    p.add_argument(
        "--peers",
        default="",
        help="comma-separated: torch, flax (every flax cell of the kind), jax_cudnn (jax.experimental.rnn's cuDNN "
        "LSTM, GPU only) (default: none)",
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
    return [IMPL_ROW.format(i) if i != "auto" else "rnn_jax" for i in split_list(text, RUN_IMPLS, "impls")]


def _variants(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if CUDNN_IMPL in items:
        raise UserError(f"{CUDNN_IMPL!r} is a peer: ask for it with --peers jax_cudnn")
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


def _cells(text: str) -> list[str]:
    """``--cells``: built-in names and users' cells as ``module:attr``, each checked (importable, with an init)."""
    names = [t for t in (s.strip() for s in text.split(",")) if t]
    bad = [t for t in names if t not in GATES and ":" not in t]
    if bad or not names:
        raise UserError(
            f"unknown cells {bad}; expected some of {list(GATES)} or your own Cell as module:attr "
            f"(e.g. mypkg.cells:lngru)"
        )
    for name in names:
        if resolve_cell(name).init is None:
            raise UserError(f"the cell {name!r} has no init; the bench needs Cell(..., init=fn(key, I, H, dtype))")
    return names


def _layers(args) -> list[dict]:
    rows = _impl_rows(args.impls)
    return measure_layers(
        [parse_config(c) for c in (args.config or ["32,128,256,256"])],
        cells=_cells(args.cells),
        impls=rows + [v for v in _variants(args.variants) if v not in rows],
        peers=split_list(args.peers, list(PEERS), "peers"),
        modes=split_list(args.modes, list(MODES), "modes"),
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
        cells=split_list(args.cells, list(linear.LINEAR_CELLS), "cells"),
        B=B,
        I=I,
        H=H,
        modes=split_list(args.modes, list(MODES), "modes"),
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
    header.update(peers=bool(getattr(args, "peers", "")), interpret=any(r.get("interpret") for r in records))
    header.update(start=start, end=conditions())
    rows = summarize(records)
    if suite == "layers":
        header["gemm_gflops"] = gemm_rates(args.dtype, torch_module() if "torch" in args.peers else None)
        add_floors(rows, max(header["gemm_gflops"].values()))
    print_header(header)
    print()
    print_table(rows)
    if args.json:
        lines = [dict(header, kind="header")] + [dict(r, kind="raw") for r in records]
        write_json(lines + [dict(r, kind="summary") for r in rows], args.json)
    if getattr(args, "png", None):
        plot(rows, args.png)
    return 0
