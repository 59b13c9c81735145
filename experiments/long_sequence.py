"""BPTT through a vanilla RNN (H=256) over T=100,000 steps, batch 1, with sqrt(T) checkpointing.

Three things, written to ``runs/long_sequence/`` and printed:

1. peak memory of ``value_and_grad`` against ``T`` for ``remat`` in ``none, step, sqrt``, with the
   input projection hoisted out of the loop (``run``'s default) and inside it: XLA's compiled memory
   analysis for every row, and the measured rise of peak RSS for those that fit (:mod:`rnn_jax.tools.memory`);
2. compiled-only rows at longer ``T`` (nothing is run), to show where each option stops fitting;
3. the gradients with ``remat="sqrt"`` against the plain ones at the longest measured ``T`` (both fit).

Run: ``python experiments/long_sequence.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax
import numpy as np

from rnn_jax.dtypes import COMPUTE_DTYPES, DTYPES
from rnn_jax.tools.memory import bptt_loss, format_table, make_problem, memory_table


@dataclasses.dataclass(frozen=True)
class Config:
    hidden: int = 256
    vocab: int = 32
    batch: int = 1
    dtype: str = "float32"
    measured_Ts: tuple[int, ...] = (1_000, 10_000, 100_000)
    compiled_only_Ts: tuple[int, ...] = (1_000_000, 10_000_000)
    grad_check_T: int = 100_000
    max_gib: float = 16.0
    out_dir: str = "runs/long_sequence"


def gradient_check(config: Config) -> dict:
    """``value_and_grad`` with ``remat="none"`` and ``"sqrt"`` on the same sequence: how far apart?"""
    problem = make_problem(
        config.grad_check_T, hidden=config.hidden, vocab=config.vocab, batch=config.batch, dtype=DTYPES[config.dtype]
    )
    results = {}
    for remat in ("none", "sqrt"):
        fn = jax.jit(jax.value_and_grad(lambda p, x, y, r=remat: bptt_loss(p, x, y, remat=r)))
        results[remat] = jax.device_get(fn(*problem))
    (loss_a, grads_a), (loss_b, grads_b) = results["none"], results["sqrt"]
    rel = {
        name: float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))
        for name, a, b in zip(grads_a._fields, grads_a, grads_b)
    }
    return {"T": config.grad_check_T, "loss_none": float(loss_a), "loss_sqrt": float(loss_b), "max_rel_diff": rel}


def main(config: Config) -> dict:
    os.makedirs(config.out_dir, exist_ok=True)
    problem = dict(hidden=config.hidden, vocab=config.vocab, batch=config.batch, dtype=DTYPES[config.dtype])
    rows = []
    for hoist in (True, False):
        rows += memory_table(config.measured_Ts, hoist=hoist, measure=True, max_bytes=config.max_gib * 2**30, **problem)
    for hoist in (True, False):
        rows += memory_table(config.compiled_only_Ts, hoist=hoist, **problem)
    grads = gradient_check(config)
    header = (
        f"vanilla RNN H={config.hidden}, I=O={config.vocab}, batch {config.batch}, {config.dtype}, "
        f"backend {jax.default_backend()}, {jax.device_count()} device(s)"
    )
    report = "\n".join(
        [
            header,
            format_table(rows),
            "",
            f"gradients at T={grads['T']:,}: loss none {grads['loss_none']:.6f}, sqrt {grads['loss_sqrt']:.6f}; "
            "max |g_sqrt - g_none| / max |g_none| per param: "
            + ", ".join(f"{k} {v:.1e}" for k, v in grads["max_rel_diff"].items()),
        ]
    )
    print(report)
    with open(os.path.join(config.out_dir, "report.md"), "w") as f:
        f.write(report + "\n")
    result = {
        "config": dataclasses.asdict(config),
        "rows": [r._asdict() | {"compiled_bytes": r.compiled_bytes} for r in rows],
        "gradients": grads,
    }
    with open(os.path.join(config.out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=Config.hidden)
    parser.add_argument("--measured-T", type=int, nargs="+", default=list(Config.measured_Ts))
    parser.add_argument("--compiled-only-T", type=int, nargs="*", default=list(Config.compiled_only_Ts))
    parser.add_argument("--grad-check-T", type=int, default=Config.grad_check_T)
    parser.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default=Config.dtype)
    parser.add_argument("--out-dir", default=Config.out_dir)
    a = parser.parse_args()
    main(
        Config(
            hidden=a.hidden,
            dtype=a.dtype,
            measured_Ts=tuple(a.measured_T),
            compiled_only_Ts=tuple(a.compiled_only_T),
            grad_check_T=a.grad_check_T,
            out_dir=a.out_dir,
        )
    )
