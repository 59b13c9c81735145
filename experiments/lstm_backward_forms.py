"""Where the CPU time of an LSTM's backward pass goes: autodiff's per-step weight gradient against a
hand-written backward that forms the weight gradients once per chunk of ``k`` steps.

Autodiff of ``lax.scan`` accumulates ``dW_h += h_{t-1}^T da_t`` and ``dW_x += x_t^T da_t`` at every step:
two rank-``B`` matmuls whose ``[H, 4H]`` outputs are read and written again per step (on XLA:CPU these
are plain dots with the batch as the contracting dimension, plus an add). The ``chunked`` form is a
``jax.custom_vjp`` whose backward loop computes only ``da_t`` and ``dh_{t-1} = da_t W_h^T``; after every
``k`` steps it adds ``H_chunk^T dA_chunk`` and ``X_chunk^T dA_chunk`` (contracting ``k*B`` rows, once).
``k = T`` is the "one large matmul after the backward scan" form.

The hand-written form is not in the library: a ``custom_vjp`` takes forward-mode autodiff (``jax.jvp``,
``jax.hessian``) away from every caller of ``rnn_jax.run``, and the gain measured here did not make it
faster than torch on 2 cores (``docs/bench.md``). This script is how that was measured.

With ``I = H`` it also times the layer's matmuls alone (the floor quoted in ``docs/bench.md``).

Run: ``python experiments/lstm_backward_forms.py --config 32,128,256,256 --chunks 1,8,16,128``.
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


def _forward(Wx, Wh, b, xs):
    """Time-major LSTM from zero state: the pre-activations, hidden and cell states of every step."""
    zeros = jnp.zeros((xs.shape[1], Wh.shape[0]), xs.dtype)

    def step(carry, x):
        h, c = carry
        a = x @ Wx + h @ Wh + b[None, :]
        i, f, g, o = jnp.split(a, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), (a, h, c)

    _, (A, Hs, Cs) = lax.scan(step, (zeros, zeros), xs)
    return A, Hs, Cs


def chunked_lstm(k: int):
    """``xs [T, B, I] -> hs [T, B, H]`` with weight gradients formed once per ``k`` steps."""

    @jax.custom_vjp
    def lstm(Wx, Wh, b, xs):
        return _forward(Wx, Wh, b, xs)[1]

    def fwd(Wx, Wh, b, xs):
        A, Hs, Cs = _forward(Wx, Wh, b, xs)
        return Hs, (Wx, Wh, xs, A, Hs, Cs)

    def bwd(res, dHs):
        Wx, Wh, xs, A, Hs, Cs = res
        T, B, _ = xs.shape
        zero = jnp.zeros((1,) + Hs.shape[1:], Hs.dtype)
        H_prev, C_prev = jnp.concatenate([zero, Hs[:-1]]), jnp.concatenate([zero, Cs[:-1]])

        def step(carry, inputs):  # one step back: da_t and the carry's cotangent
            dh, dc = carry
            dh_out, a, c_prev, c = inputs
            i, f, g, o = jnp.split(a, 4, axis=-1)
            si, sf, tg, so = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
            dh = dh + dh_out
            tc = jnp.tanh(c)
            dc = dc + dh * so * (1 - tc * tc)
            da = jnp.concatenate(
                [
                    dc * tg * si * (1 - si),
                    dc * c_prev * sf * (1 - sf),
                    dc * si * (1 - tg * tg),
                    dh * tc * so * (1 - so),
                ],
                axis=-1,
            )
            return (da @ Wh.T, dc * sf), da

        def chunk(carry, inputs):
            dh, dc, dWx, dWh, db = carry
            dh_out, a, c_prev, c, h_prev, x = inputs
            (dh, dc), dA = lax.scan(step, (dh, dc), (dh_out, a, c_prev, c), reverse=True)
            dA = dA.reshape(k * B, -1)
            dWh = dWh + h_prev.reshape(k * B, -1).T @ dA
            dWx = dWx + x.reshape(k * B, -1).T @ dA
            return (dh, dc, dWx, dWh, db + dA.sum(0)), None

        def by_chunk(a):
            return a.reshape((T // k, k) + a.shape[1:])

        zeros = jnp.zeros((B, Wh.shape[0]), xs.dtype)
        init = (zeros, zeros, jnp.zeros_like(Wx), jnp.zeros_like(Wh), jnp.zeros(Wh.shape[1], xs.dtype))
        inputs = tuple(map(by_chunk, (dHs, A, C_prev, Cs, H_prev, xs)))
        (_, _, dWx, dWh, db), _ = lax.scan(chunk, init, inputs, reverse=True)
        return dWx, dWh, db, None

    lstm.defvjp(fwd, bwd)
    return lstm


def matmul_floor(B: int, T: int, H: int):
    """The ``6 T`` products of ``B x H x 4H`` that one fwd+bwd of an LSTM layer (I = H) does, alone in one
    ``lax.scan`` (``h W`` then ``a W^T``, so each feeds the next): a lower bound for any exact implementation."""
    W = jax.random.normal(jax.random.key(2), (H, 4 * H)) / H

    @jax.jit
    def products(h, W):
        def step(h, _):
            return (h @ W) @ W.T, None

        return lax.scan(step, h, None, length=3 * T)[0]

    return products, (jnp.ones((B, H)), W)


def measure(fn, args, reps: int) -> tuple[float, float]:
    jax.block_until_ready(fn(*args))
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="32,128,256,256", help="B,T,I,H")
    parser.add_argument("--chunks", default="1,8,16,128", help="values of k (each must divide T)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    B, T, I, H = (int(v) for v in args.config.split(","))
    params = R.lstm_init(jax.random.key(0), I, H)
    xs = jax.random.normal(jax.random.key(1), (B, T, I))

    def library(p, xs):  # the library's default path (autodiff through rnn_jax.run)
        return jnp.mean(R.run(R.lstm_cell, p, None, xs)[1] ** 2)

    forms = {"rnn_jax.run (autodiff)": jax.jit(jax.grad(library))}
    for k in (int(v) for v in args.chunks.split(",")):
        if T % k:
            parser.error(f"chunk {k} does not divide T={T}")
        lstm = chunked_lstm(k)

        def chunked(p, xs, lstm=lstm):
            return jnp.mean(lstm(p.W_x, p.W_h, p.b, jnp.swapaxes(xs, 0, 1)) ** 2)

        forms[f"chunked k={k}"] = jax.jit(jax.grad(chunked))
    reference = forms["rnn_jax.run (autodiff)"](params, xs)
    if I == H:
        floor, floor_args = matmul_floor(B, T, H)
        wall, cpu = measure(floor, floor_args, args.reps)
        print(json.dumps(dict(form="matmul floor (6T products alone)", B=B, T=T, I=I, H=H, ms=wall, cpu_ms=cpu)))
    for name, fn in forms.items():
        grads = fn(params, xs)
        err = max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in zip(grads, reference, strict=True))
        assert err < 1e-4, f"{name}: gradients differ from autodiff by {err:.1e} (relative)"
    times = {name: [] for name in forms}
    for _ in range(args.rounds):  # interleaved, so a change of machine load falls on every form alike
        for name, fn in forms.items():
            times[name].append(measure(fn, (params, xs), args.reps))
    rows = []
    base = float(np.median([c for _, c in times["rnn_jax.run (autodiff)"]]))
    for name, ts in times.items():
        wall, cpu = float(np.median([w for w, _ in ts])), float(np.median([c for _, c in ts]))
        row = dict(form=name, B=B, T=T, I=I, H=H, ms=wall, cpu_ms=cpu, speedup_cpu=base / cpu)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
