"""The vanilla RNN's weight gradient after the loop, with forward-mode autodiff kept: a ``jax.custom_jvp``.

The rule's tangent puts every term that does not pass through the recurrence into big matmuls outside
the loop, ``E = X dW_x + H_prev dW_h + db + dX W_x``, so the tangent loop only carries
``dh_t = (1 - h_t^2) * (E_t + dh_{t-1} W_h)``. Reverse mode transposes that: the backward loop computes
``dE_t`` with one ``[B, H] @ [H, H]`` product per step, and ``dW_h = H_prev^T dE``, ``dW_x = X^T dE``
become one matmul each after it. Unlike a ``custom_vjp``, ``jax.jvp`` still works.

A prototype, not in the library yet (``docs/bench.md``, "Next steps"): it prints the gradients' largest
relative difference from ``rnn_jax.run``'s autodiff, checks ``jax.jvp`` against the plain forward, and
times both (wall ms, median of interleaved repeats).

Run: ``python experiments/vanilla_custom_jvp.py --config 32,128,256,256`` (and ``1,2048,32,32``).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import rnn_jax as R
from rnn_jax.tools.bench import bench_cell


def forward(W_x, W_h, b, xs):
    """``h_t = tanh(x_t W_x + h_{t-1} W_h + b)`` from ``h_0 = 0`` over a time-major ``[T, B, I]``."""

    def step(h, x):
        h = jnp.tanh(x @ W_x + h @ W_h + b[None, :])
        return h, h

    return lax.scan(step, jnp.zeros((xs.shape[1], W_h.shape[0]), xs.dtype), xs)[1]


@jax.custom_jvp
def vanilla(W_x, W_h, b, xs):
    return forward(W_x, W_h, b, xs)


@vanilla.defjvp
def _vanilla_jvp(primals, tangents):
    W_x, W_h, b, xs = primals
    dW_x, dW_h, db, dxs = tangents
    hs = forward(W_x, W_h, b, xs)
    h_prev = jnp.concatenate([jnp.zeros_like(hs[:1]), hs[:-1]])
    E = xs @ dW_x + h_prev @ dW_h + db[None, None, :] + dxs @ W_x  # everything outside the recurrence

    def step(dh, inputs):
        e, slope = inputs
        dh = slope * (e + dh @ W_h)
        return dh, dh

    _, dhs = lax.scan(step, jnp.zeros_like(hs[0]), (E, 1 - hs * hs))
    return hs, dhs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="32,128,256,256", help="B,T,I,H")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    B, T, I, H = (int(v) for v in args.config.split(","))
    params = R.vanilla_init(jax.random.key(0), I, H, 1)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))
    cell = bench_cell("vanilla")  # without the output head, as timed by the bench

    def library(p, xs):
        return jnp.mean(R.run(cell, p, None, xs)[1] ** 2)

    def prototype(p, xs):
        return jnp.mean(vanilla(p.W_xh, p.W_hh, p.b_h, jnp.swapaxes(xs, 0, 1)) ** 2)

    forms = {"rnn_jax.run (autodiff)": jax.jit(jax.grad(library)), "custom_jvp": jax.jit(jax.grad(prototype))}
    want, got = forms["rnn_jax.run (autodiff)"](params, xs), forms["custom_jvp"](params, xs)
    names = ("W_xh", "W_hh", "b_h")
    grad_err = max(
        float(jnp.max(jnp.abs(getattr(got, n) - getattr(want, n))) / jnp.max(jnp.abs(getattr(want, n)))) for n in names
    )
    # Forward mode: the rule's tangent against jax.jvp of the plain forward.
    xs_T = jnp.swapaxes(xs, 0, 1)
    primals = (params.W_xh, params.W_hh, params.b_h, xs_T)
    tangents = tuple(jax.random.normal(jax.random.key(2 + i), a.shape) for i, a in enumerate(primals))
    _, t_proto = jax.jvp(vanilla, primals, tangents)
    _, t_plain = jax.jvp(forward, primals, tangents)
    jvp_err = float(jnp.max(jnp.abs(t_proto - t_plain)) / jnp.max(jnp.abs(t_plain)))
    times = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, fn in forms.items():
            for _ in range(args.reps):
                start = time.perf_counter()
                jax.block_until_ready(fn(params, xs))
                times[name].append(time.perf_counter() - start)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    row = dict(B=B, T=T, I=I, H=H, grad_rel_err=grad_err, jvp_rel_err=jvp_err, ms=ms)
    row["speedup"] = ms["rnn_jax.run (autodiff)"] / ms["custom_jvp"]
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
