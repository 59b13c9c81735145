"""Three ways to compute ``h_t = a_t * h_{t-1} + b_t`` over ``[B, T, H]`` on this machine, fwd and fwd+bwd.

- ``sequential``: ``lax.scan`` over time (``run_linear(method="sequential")`` is this loop);
- ``associative``: ``lax.associative_scan`` along the time axis (``rnn_jax.linear.linear_scan``);
- ``blocked``: the two-level parallel scan for multicore CPUs: chunks of ``C ~ sqrt(T)`` steps are scanned
  all at once by a ``C``-step loop (each step one vector operation over every chunk), the chunk totals
  by ``lax.associative_scan``, then one fix-up pass. Not in the library: it did not beat the sequential loop
  here (see ``docs/bench.md``); this script is how that was measured.

Times are median CPU time of the process over ``--reps`` calls after a warm-up call; every form's output
is checked against the sequential one.

Run: ``python experiments/linear_scan_forms.py --T 1024,4096,16384`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.linear import linear_scan


def _compose(earlier, later):
    return later[0] * earlier[0], later[0] * earlier[1] + later[1]


def sequential(a, b):
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    _, hs = lax.scan(step, jnp.zeros(a.shape[::2], a.dtype), (jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)))
    return jnp.swapaxes(hs, 0, 1)


def associative(a, b):
    return jax.vmap(lambda a, b: linear_scan(a, b, jnp.zeros(a.shape[1:], a.dtype)))(a, b)


def blocked(a, b):
    B, T, H = a.shape
    C = 1 << round(math.log2(T) / 2)
    n = T // C  # T a power of two here: chunks tile it

    def by_step(x):  # [B, T, H] -> [C, B, n, H]: step i of every chunk is one slice
        return jnp.transpose(x.reshape(B, n, C, H), (2, 0, 1, 3))

    def step(c, ab):
        c = _compose(c, ab)
        return c, c

    _, (A, Bs) = lax.scan(step, (jnp.ones((B, n, H), a.dtype), jnp.zeros((B, n, H), a.dtype)), (by_step(a), by_step(b)))
    _, PB = lax.associative_scan(_compose, (A[-1], Bs[-1]), axis=1)  # h0 = 0: the carry out of chunks 0..j
    h_in = jnp.concatenate([jnp.zeros((B, 1, H), a.dtype), PB[:, :-1]], axis=1)
    return jnp.transpose(A * h_in[None] + Bs, (1, 2, 0, 3)).reshape(B, T, H)


FORMS = {"sequential": sequential, "associative": associative, "blocked": blocked}


def cpu_ms(fn, args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.process_time() - start)
    return 1e3 * float(np.median(times))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", default="1024,4096,16384", help="comma-separated powers of two")
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--H", type=int, default=64)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    rows = []
    for T in (int(t) for t in args.T.split(",")):
        if T & (T - 1):
            parser.error(f"--T values must be powers of two, got {T}")
        k_a, k_b = jax.random.split(jax.random.key(T))
        a = jax.random.uniform(k_a, (args.B, T, args.H), minval=0.5, maxval=1.0)
        b = jax.random.normal(k_b, (args.B, T, args.H))
        ref = jax.jit(sequential)(a, b)
        for name, form in FORMS.items():
            fwd = jax.jit(form)
            fwd_bwd = jax.jit(jax.grad(lambda a, b, form=form: jnp.mean(form(a, b) ** 2), argnums=(0, 1)))
            err = float(jnp.max(jnp.abs(fwd(a, b) - ref)))
            row = dict(form=name, B=args.B, T=T, H=args.H, fwd_cpu_ms=cpu_ms(fwd, (a, b), args.reps))
            row.update(fwd_bwd_cpu_ms=cpu_ms(fwd_bwd, (a, b), args.reps), max_abs_diff=err)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
