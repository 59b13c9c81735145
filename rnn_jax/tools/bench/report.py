"""What ``rnn-jax bench`` prints and writes: ratios against the peers, the table, the header, JSON lines and
the figure."""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from typing import NamedTuple

from rnn_jax.tools.bench.timing import FLOOR_GEMM, Shape, matmul_flops

PEER_LIBS = ("torch", "flax", "jax_cudnn")
INTERPRET_MARK = " *"
"""Follows the impl of a row whose Pallas kernel ran in interpret mode (on the CPU); the header says what it means."""
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


def add_floors(rows: list[dict], gflops: float) -> None:
    """Give each row its matmul floor at ``gflops`` (the best large-GEMM rate measured here): ``floor_ms``, the
    row's matmul FLOPs at that rate, and ``x_floor = ms / floor_ms`` (1.0 would be the hardware's matmul speed)."""
    for r in rows:
        flops = matmul_flops(r["cell"], Shape(r["B"], r["T"], r["I"], r["H"]), r["mode"])
        if flops is None or not gflops:
            continue
        r["floor_ms"] = flops / (gflops * 1e6)
        r["x_floor"] = None if r.get("ms") is None else r["ms"] / r["floor_ms"]


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
    """A markdown table of :func:`summarize`'s rows; ``vs torch``/``vs flax``/``vs jax_cudnn``: the peer's
    time over this one, a column for each peer library that was timed."""
    file = sys.stdout if file is None else file
    several = any(r.get("runs", 1) > 1 for r in rows)
    peers = [lib for lib in PEER_LIBS if any(r.get("lib") == lib for r in rows)]
    cols = ["cell", "mode", "B", "T", "I", "H", "impl", "ms"] + (["ms min-max"] if several else [])
    cols += ["us/step", "cpu_ms", "GFLOP/s", "compile_s", "peak_MB"]
    floors = any(r.get("floor_ms") is not None for r in rows)
    cols += (["floor_ms", "x floor"] if floors else []) + [f"vs {lib}" for lib in peers]
    lines = []
    for r in rows:
        impl = r["impl"] + (INTERPRET_MARK if r.get("interpret") else "")
        row = [r["cell"], r["mode"], r["B"], r["T"], r["I"], r["H"], impl, r.get("ms")]
        if several:
            row.append(None if r.get("ms_min") is None else f"{_number(r['ms_min'])}-{_number(r['ms_max'])}")
        row += [r.get("us_per_step"), r.get("cpu_ms"), r.get("gflops"), r.get("compile_s"), r.get("peak_mb")]
        if floors:
            x_floor = r.get("x_floor")
            row += [r.get("floor_ms"), None if x_floor is None else f"{_rnum(x_floor)}x"]
        row += [format_ratio(_ratio(r.get(f"vs_{lib}"))) for lib in peers]
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
    if header["suite"] == "layers" and header.get("peers", True):
        print(
            f"- ratios: the fastest peer cell of the same kind over this row, paired run by run; median (min-max) "
            f"over {header['runs']} run(s); parity: the spread straddles 1",
            file=file,
        )
    if header.get("gemm_gflops"):
        M, K, N = FLOOR_GEMM
        rates = ", ".join(f"{lib} {rate:g}" for lib, rate in header["gemm_gflops"].items())
        print(
            f"- matmul floor: each row's matmul FLOPs at the best rate of one ({M}x{K}) @ ({K}x{N}) GEMM here "
            f"(GFLOP/s: {rates}); x floor = ms / floor_ms",
            file=file,
        )
    if header.get("interpret"):
        print(
            f"-{INTERPRET_MARK}: the Pallas kernel in interpret mode (no GPU): Pallas emulates it on the CPU, exact "
            f"but slow; these times say nothing of the kernel's speed",
            file=file,
        )


def _load_text(cond: dict) -> str:
    return "n/a" if cond["load"] is None else " ".join(f"{x:.2f}" for x in cond["load"])
