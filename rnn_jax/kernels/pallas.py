"""The persistent recurrent kernels (forward and backward) and the differentiable layer around them.

Arrays here are padded and laid out for the kernel (:mod:`rnn_jax.kernels` pads and unpads):
``u [T, G, Np, Hp]`` the input projection per gate, ``W [G, Hp, Hp]`` the recurrent weight per gate,
``extra [Hp]`` (the GRU's ``b_hn``, zeros otherwise), ``carry0`` a tuple of ``K`` arrays ``[Np, Hp]``,
``lengths [Np]`` int32. The layer returns ``seq``: ``K`` arrays ``[T, Np, Hp]``, the carry after every
step (masked steps repeat the carry before them), from which the caller reads outputs and final carry.

One program of the grid owns ``block_n`` rows of the batch for the whole sequence: it loads ``W`` once,
keeps the carry in registers across a ``fori_loop`` over time and reads one ``[block_n, Hp]`` slice of
``u`` per gate and step. The backward kernel runs the same loop in the opposite order with ``W^T``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from rnn_jax.errors import UserError
from rnn_jax.kernels.gates import GATE_MATH

NUM_WARPS = 4
"""Warps per Triton program (the Pallas Triton default; not tuned: no GPU measurement yet)."""

NUM_STAGES = 1
"""Triton software-pipelining depth: 1, since the time loop's loads depend on nothing a deeper pipeline could
prefetch early and each stage would take another copy of the staged blocks in shared memory."""


class LayerConfig(NamedTuple):
    """Static description of one kernel layer (hashable: it keys the traced kernels)."""

    cell: str  # "vanilla" | "lstm" | "gru"
    reverse: bool
    block_n: int  # batch rows per program
    debug: bool = False  # pallas_call(debug=True): print the kernel's jaxpr and Triton module while lowering


def _load_carry(refs):
    return tuple(r[...].astype(jnp.float32) for r in refs)


def _dot(x, w):
    """``x w`` in float32; ``x`` is cast to the weight's dtype first (bf16 x bf16 -> f32 on tensor cores)."""
    return jnp.dot(x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _forward_kernel(cfg: LayerConfig, T: int, save: bool, u_ref, w_ref, extra_ref, len_ref, *refs):
    """Forward kernel body: ``carry_t = where(t < length, step(carry_{t-1}, u_t), carry_{t-1})``.

    Writes the carry after every step to ``seq``; with ``save`` also the recurrent products
    ``R_t[g] = h_{t-1} W[g]`` (the backward kernel's residuals).
    """
    math_ = GATE_MATH[cfg.cell]
    K, G = math_.carries, math_.gates
    carry0_refs, seq_refs = refs[:K], refs[K : 2 * K]
    r_ref = refs[2 * K] if save else None
    extra = extra_ref[...].astype(jnp.float32)[None, :]
    lengths = len_ref[...][:, None]
    ws = [w_ref[g] for g in range(G)]  # read once: the loop keeps them on chip

    def body(s, carry):
        t = T - 1 - s if cfg.reverse else s
        rs = [_dot(carry[0], w) for w in ws]
        us = [u_ref[t, g].astype(jnp.float32) for g in range(G)]
        new = math_.forward(us, rs, carry, extra)
        keep = t < lengths
        new = tuple(jnp.where(keep, n, c) for n, c in zip(new, carry))
        for ref, value in zip(seq_refs, new):
            ref[t] = value.astype(ref.dtype)
        if save:
            for g in range(G):
                r_ref[t, g] = rs[g]
        return new

    lax.fori_loop(0, T, body, _load_carry(carry0_refs))


def _backward_kernel(cfg: LayerConfig, T: int, u_ref, r_ref, wt_ref, extra_ref, len_ref, *refs):
    """Backward kernel body: the reverse recurrence with ``W^T``, writing the per-step gate gradients.

    ``d carry_{t-1} = direct(d carry_t) + sum_g dR_t[g] W[g]^T`` at real steps; masked steps pass the
    carry gradient through. ``dseq[t]`` (the gradient reaching the carry output of step ``t``) is added
    as the loop reaches ``t``. Writes ``dU`` (and ``dR`` for the GRU) and the initial carry's gradient.
    """
    math_ = GATE_MATH[cfg.cell]
    K, G = math_.carries, math_.gates
    prev_refs, dseq_refs = refs[:K], refs[K : 2 * K]
    du_ref = refs[2 * K]
    dr_ref = refs[2 * K + 1] if cfg.cell == "gru" else None
    dcarry0_refs = refs[len(refs) - K :]
    extra = extra_ref[...].astype(jnp.float32)[None, :]
    lengths = len_ref[...][:, None]
    wts = [wt_ref[g] for g in range(G)]  # read once: the loop keeps them on chip

    def body(s, dcarry):
        t = s if cfg.reverse else T - 1 - s
        d = tuple(dc + ref[t].astype(jnp.float32) for dc, ref in zip(dcarry, dseq_refs))
        prev = tuple(ref[t].astype(jnp.float32) for ref in prev_refs)
        us = [u_ref[t, g].astype(jnp.float32) for g in range(G)]
        rs = [r_ref[t, g] for g in range(G)]
        dus, drs, direct = math_.backward(us, rs, prev, extra, d)
        back = _dot(drs[0], wts[0])
        for g in range(1, G):
            back = back + _dot(drs[g], wts[g])
        keep = t < lengths
        new = (direct[0] + back,) + tuple(direct[1:])
        new = tuple(jnp.where(keep, n, dc) for n, dc in zip(new, d))
        for g in range(G):
            du_ref[t, g] = jnp.where(keep, dus[g], 0.0).astype(du_ref.dtype)
            if dr_ref is not None:
                dr_ref[t, g] = jnp.where(keep, drs[g], 0.0)
        return new

    zeros = tuple(jnp.zeros(r.shape, jnp.float32) for r in dcarry0_refs)
    final = lax.fori_loop(0, T, body, zeros)
    for ref, value in zip(dcarry0_refs, final):
        ref[...] = value.astype(ref.dtype)


# ---------------------------------------------------------------------------------------------------
# pallas_call: block specs, and the choice of interpret mode (CPU) or Triton (CUDA) by lowering platform
# ---------------------------------------------------------------------------------------------------


def _seq_spec(T, block_n, Hp):
    return pl.BlockSpec((T, block_n, Hp), lambda i: (0, i, 0))


def _gates_spec(T, G, block_n, Hp):
    return pl.BlockSpec((T, G, block_n, Hp), lambda i: (0, 0, i, 0))


def _rows_spec(block_n, Hp):
    return pl.BlockSpec((block_n, Hp), lambda i: (i, 0))


def _whole(shape):
    return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _platform_call(kernel, out_shape, grid, in_specs, out_specs, args, name, debug=False):
    """Run ``kernel`` in Pallas interpret mode when lowered for CPU and through Triton for CUDA.

    ``lax.platform_dependent`` resolves the choice when the platform being lowered for is known, so a
    function lowered for ``cuda`` on a CPU host (AOT) gets the Triton kernel. Triton rather than Mosaic
    GPU: Mosaic GPU's default lowering of ``dot_general`` rejects these ``[n, Hp] x [Hp, Hp]`` products,
    while Triton lowers them to ``tl.dot`` (tensor cores); ``tests/test_kernels.py`` lowers them for ``cuda``.
    """

    def build(interpret):
        params = None if interpret else pl_triton.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)
        call = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=grid,
            in_specs=in_specs,
            out_specs=out_specs,
            interpret=interpret,
            compiler_params=params,
            name=name,
            debug=debug,
        )
        return lambda *a: call(*a)

    return lax.platform_dependent(*args, cpu=build(True), cuda=build(False))


def forward(cfg: LayerConfig, u, W, extra, carry0, lengths, *, save: bool):
    """Run the forward kernel: returns ``seq`` (``K`` arrays ``[T, Np, Hp]``) and, with ``save``, ``R``."""
    math_ = GATE_MATH[cfg.cell]
    T, G, Np, Hp = u.shape
    bn = cfg.block_n
    out_shape = [jax.ShapeDtypeStruct((T, Np, Hp), c.dtype) for c in carry0]
    out_specs = [_seq_spec(T, bn, Hp) for _ in carry0]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((T, G, Np, Hp), jnp.float32))
        out_specs.append(_gates_spec(T, G, bn, Hp))
    in_specs = [_gates_spec(T, G, bn, Hp), _whole(W.shape), _whole(extra.shape), pl.BlockSpec((bn,), lambda i: (i,))]
    in_specs += [_rows_spec(bn, Hp) for _ in carry0]
    outs = _platform_call(
        partial(_forward_kernel, cfg, T, save),
        out_shape,
        (Np // bn,),
        in_specs,
        out_specs,
        (u, W, extra, lengths, *carry0),
        f"rnn_{cfg.cell}_forward",
        cfg.debug,
    )
    K = math_.carries
    return tuple(outs[:K]), (outs[K] if save else None)


def _previous_carries(seq, carry0, reverse):
    """The carry before each step: ``carry0`` then ``seq`` shifted by one step in the loop's order."""
    if reverse:
        return tuple(jnp.concatenate([s[1:], c[None]]) for s, c in zip(seq, carry0))
    return tuple(jnp.concatenate([c[None], s[:-1]]) for s, c in zip(seq, carry0))


def backward(cfg: LayerConfig, residuals, dseq):
    """Cotangents ``(du, dW, dextra, dcarry0)`` of the layer from its residuals and ``dseq``.

    The kernel writes the per-step gate gradients; the weight gradient is one large matmul after it:
    ``dW[g] = sum_t H_{t-1}^T dR_t[g]`` (and ``db_hn = sum dR[n]`` for the GRU).
    """
    u, W, extra, carry0, lengths, seq, R = residuals
    math_ = GATE_MATH[cfg.cell]
    T, G, Np, Hp = u.shape
    bn = cfg.block_n
    prev = _previous_carries(seq, carry0, cfg.reverse)
    out_shape = [jax.ShapeDtypeStruct(u.shape, u.dtype)]
    out_specs = [_gates_spec(T, G, bn, Hp)]
    if cfg.cell == "gru":
        out_shape.append(jax.ShapeDtypeStruct(u.shape, jnp.float32))
        out_specs.append(_gates_spec(T, G, bn, Hp))
    out_shape += [jax.ShapeDtypeStruct(c.shape, c.dtype) for c in carry0]
    out_specs += [_rows_spec(bn, Hp) for _ in carry0]
    in_specs = [_gates_spec(T, G, bn, Hp), _gates_spec(T, G, bn, Hp), _whole(W.shape), _whole(extra.shape)]
    in_specs += [pl.BlockSpec((bn,), lambda i: (i,))] + [_seq_spec(T, bn, Hp) for _ in range(2 * math_.carries)]
    outs = _platform_call(
        partial(_backward_kernel, cfg, T),
        out_shape,
        (Np // bn,),
        in_specs,
        out_specs,
        (u, R, jnp.swapaxes(W, 1, 2), extra, lengths, *prev, *dseq),
        f"rnn_{cfg.cell}_backward",
        cfg.debug,
    )
    du = outs[0]
    dr = outs[1].astype(jnp.float32) if cfg.cell == "gru" else du.astype(jnp.float32)
    dcarry0 = tuple(outs[len(outs) - math_.carries :])
    dW = jnp.einsum("tnh,tgnk->ghk", prev[0].astype(jnp.float32), dr).astype(W.dtype)
    dextra = jnp.sum(dr[:, 2], axis=(0, 1)) if cfg.cell == "gru" else jnp.zeros(extra.shape, jnp.float32)
    return du, dW, dextra.astype(extra.dtype), dcarry0


# ---------------------------------------------------------------------------------------------------
# The differentiable layer: reverse mode through the backward kernel, forward mode refused
# ---------------------------------------------------------------------------------------------------

FORWARD_MODE_MESSAGE = (
    'forward-mode autodiff (jax.jvp, jax.jacfwd) is not supported through impl="pallas": its derivative is '
    'defined for reverse mode only (the backward kernel); use impl="scan" for forward mode'
)


def _refuse_forward_mode(*_, **__):
    raise UserError(FORWARD_MODE_MESSAGE)


# The tangent of the layer's outputs: a primitive that is only ever transposed (reverse mode, by linear_call)
# and raises the one-line error where it would be evaluated (eagerly) or lowered (under jit): forward mode.
_forward_mode_p = Primitive("rnn_pallas_forward_mode_refused")
_forward_mode_p.multiple_results = True
_forward_mode_p.def_impl(_refuse_forward_mode)
_forward_mode_p.def_abstract_eval(lambda *avals: avals)
batching.primitive_batchers[_forward_mode_p] = lambda args, dims: (_forward_mode_p.bind(*args), dims)
mlir.register_lowering(_forward_mode_p, _refuse_forward_mode)


def _tangent_refused(cfg, live, residuals, tangents):
    """The forward-mode tangent map: only ever evaluated by ``jax.jvp``, where it raises."""
    del cfg, live, tangents
    seq = residuals[5]
    return tuple(_forward_mode_p.bind(*seq))


def _tangent_transpose(cfg, live, residuals, dseq):
    """Cotangents of the live (not symbolically zero) inputs ``[u, W, extra, *carry0]``."""
    du, dW, dextra, dcarry0 = backward(cfg, residuals, dseq)
    flat = [du, dW, dextra, *dcarry0]
    return tuple(flat[i] for i in live)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def layer(cfg: LayerConfig, u, W, extra, carry0, lengths):
    """The kernel layer: ``seq = forward(...)``, differentiable in reverse mode with respect to all but
    ``lengths``.

    A ``custom_jvp`` whose tangent is a ``linear_call``: reverse mode (``jax.grad``, ``jax.vjp``)
    transposes it into :func:`backward`; evaluating the tangent itself (forward mode) raises an error
    naming ``impl="scan"``.
    """
    return forward(cfg, u, W, extra, carry0, lengths, save=False)[0]


def _layer_jvp(cfg, primals, tangents):
    u, W, extra, carry0, lengths = primals
    seq, R = forward(cfg, u, W, extra, carry0, lengths, save=True)
    du, dW, dextra, dcarry0, _ = tangents
    flat = [du, dW, dextra, *dcarry0]
    # Only inputs that depend on what is differentiated enter the linear map (its transpose asserts it).
    live = tuple(i for i, t in enumerate(flat) if not isinstance(t, jax.custom_derivatives.SymbolicZero))
    if not live:
        return seq, tuple(jnp.zeros_like(s) for s in seq)
    residuals = (u, W, extra, carry0, lengths, seq, R)
    tangent = jax.custom_derivatives.linear_call(
        partial(_tangent_refused, cfg, live),
        partial(_tangent_transpose, cfg, live),
        residuals,
        tuple(flat[i] for i in live),
    )
    return seq, tangent


layer.defjvp(_layer_jvp, symbolic_zeros=True)
