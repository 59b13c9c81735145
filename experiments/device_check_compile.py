"""Compile the Pallas kernels' Triton IR for a Hopper GPU on a machine without one: shared memory and registers.

Lowering (``tests/test_kernels.py``) proves that Pallas accepts the kernels; whether Triton then fits them on a
multiprocessor (at most 227 KiB of shared memory per program on an H100/H200, 255 registers per thread before
spilling) is decided by Triton's compiler, which needs no GPU. This script lowers the forward and backward kernel
of each cell for ``cuda`` (``LayerConfig(debug=True)`` prints the Triton module), compiles it with the ``triton``
package for ``sm_90`` and reads the resources from the cubin (``cuobjdump -res-usage``, shipped with triton).

    pip install triton          # not a project dependency: use a scratch environment or --target directory
    python experiments/device_check_compile.py                   # the default sizes around the on-chip bound
    python experiments/device_check_compile.py cases=lstm:64:float32,gru:128:bfloat16 num_warps=8

Results (triton 3.9.0, jax 0.10.2, num_warps 4; the bound in ``rnn_jax.kernels.MAX_WEIGHT_BYTES`` follows them):
see ``docs/kernels.md``. The triton version inside jaxlib (which compiles the kernels on a real GPU) differs, so
these are leads for the device check, not its result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from rnn_jax import kernels
from rnn_jax.cells import CELLS, GRUParams, LSTMParams, VanillaParams
from rnn_jax.kernels.gates import GATE_MATH
from rnn_jax.kernels.pallas import NUM_STAGES, NUM_WARPS, LayerConfig, layer

SHARED_LIMIT = 227 * 1024
"""Shared memory one program may use on a Hopper multiprocessor (bytes)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Which kernels to compile: ``cases`` as ``cell:H:dtype`` (comma-separated on the command line)."""

    cases: tuple[str, ...] = (
        "vanilla:128:float32",
        "vanilla:256:float32",
        "vanilla:256:bfloat16",
        "lstm:64:float32",
        "lstm:128:float32",
        "lstm:128:bfloat16",
        "gru:64:float32",
        "gru:128:bfloat16",
    )
    T: int = 8
    num_warps: int = NUM_WARPS
    num_stages: int = NUM_STAGES
    arch: int = 90


def triton_modules(cell: str, H: int, dtype, T: int = 8) -> dict[str, str]:
    """The Triton IR (text, locations stripped) of the forward and backward kernel, lowered for ``cuda``."""
    G, K = GATE_MATH[cell].gates, GATE_MATH[cell].carries
    Hp, Np = kernels.padded_hidden(H), kernels.BLOCK_N
    cfg = LayerConfig(cell, False, kernels.BLOCK_N, debug=True)
    args = (
        jax.ShapeDtypeStruct((T, G, Np, Hp), dtype),
        jax.ShapeDtypeStruct((G, Hp, Hp), dtype),
        jax.ShapeDtypeStruct((Hp,), dtype),
        tuple(jax.ShapeDtypeStruct((Np, Hp), dtype) for _ in range(K)),
        jax.ShapeDtypeStruct((Np,), jnp.int32),
    )

    def loss(u, W, extra, carry0, lengths):
        return sum(jnp.sum(s.astype(jnp.float32)) for s in layer(cfg, u, W, extra, carry0, lengths))

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(*args).lower(lowering_platforms=("cuda",))
    return _modules(printed.getvalue())


def _modules(text: str) -> dict[str, str]:
    """``{name: module}`` for every ``module @name {...}`` printed by ``pallas_call(debug=True)``."""
    modules, lines, name = {}, None, None
    for line in text.splitlines():
        if line.startswith("module @"):
            lines, name = [], line.split("@")[1].split()[0]
        if lines is not None:
            line = re.sub(r' "[^"]*"\(#loc\d*\)| loc\(#loc\d*\)', "", line.replace(" [unknown]", ""))
            lines.append(line)
            if line.startswith("}"):
                modules[name], lines = "\n".join(lines) + "\n", None
    return modules


def compile_report(ttir: str, config: Config) -> dict:
    """Compile one module with triton for ``sm_<arch>`` as Pallas does (``num_warps``, ``num_stages``): dynamic
    shared memory, registers, stack (spills)."""
    import triton  # noqa: PLC0415 (optional: only this script needs it)
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ttir"
        src.write_text(ttir)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        compiled = triton.compile(str(src), target=GPUTarget("cuda", config.arch, 32), options=options)
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage.stdout))
    return {"shared": compiled.metadata.shared, **{k.lower(): int(v) for k, v in fields.items()}}


def main(config: Config) -> list[dict]:
    rows = []
    print("| cell | dtype | H | kernel | shared KiB | fits | registers | stack bytes | kernel takes it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case in config.cases:
        cell, H, dtype = case.split(":")
        W = jax.ShapeDtypeStruct((int(H), GATE_MATH[cell].gates * int(H)), jnp.dtype(dtype))
        params = _abstract_params(cell, W)
        accepted = kernels.unsupported_reason(CELLS[cell], params, None) is None
        for name, ttir in triton_modules(cell, int(H), jnp.dtype(dtype), config.T).items():
            r = compile_report(ttir, config)
            rows.append({"cell": cell, "dtype": dtype, "H": int(H), "kernel": name, "accepted": accepted, **r})
            fits = "yes" if r["shared"] <= SHARED_LIMIT else "no"
            print(f"| {cell} | {dtype} | {H} | {name} | {r['shared'] / 1024:.0f} | {fits} | {r.get('reg')} "
                  f"| {r.get('stack')} | {'yes' if accepted else 'no'} |", flush=True)  # fmt: skip
    return rows


def _abstract_params(cell: str, W):
    """Params with the recurrent weight ``W`` (what :func:`rnn_jax.kernels.unsupported_reason` reads)."""
    if cell == "vanilla":
        return VanillaParams(None, W, None, None, None)
    return LSTMParams(None, W, None) if cell == "lstm" else GRUParams(None, W, None, None)


def _parse(argv: list[str]) -> Config:
    given = dict(arg.split("=", 1) for arg in argv)
    unknown = set(given) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise SystemExit(f"unknown settings {sorted(unknown)}; known: cases, T, num_warps, num_stages, arch")
    kw = {k: tuple(v.split(",")) if k == "cases" else int(v) for k, v in given.items()}
    return Config(**kw)


if __name__ == "__main__":
    main(_parse(sys.argv[1:]))
