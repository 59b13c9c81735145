"""The elementwise part of one step of each cell, forward and backward, as the kernels compute it.

Each function works on float32 blocks of shape ``[n, H]`` (a block of the batch), one per gate:
``us[g]`` is the input projection ``x_t W_x[g] + b[g]`` of gate ``g``, ``rs[g]`` the recurrent
product ``h_{t-1} W_h[g]``; the kernel does the matmuls and the loop, these functions the rest.
They are plain ``jax.numpy`` code, so the same function runs inside a Pallas kernel (Triton or
interpret mode) and outside one.

The backward functions return ``(dus, drs, dcarry)``: the gradient with respect to each gate's input
projection, with respect to each gate's recurrent product (the same arrays except for the GRU's
candidate gate, where ``r`` multiplies the recurrent product), and the part of the carry gradient that
does not pass through ``W_h`` (the kernel adds ``sum_g drs[g] W_h[g]^T`` to the ``h`` part).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class GateMath(NamedTuple):
    """How the kernels treat one cell: gate and carry counts and the elementwise step."""

    name: str
    gates: int  # G: matmul blocks of W_h
    carries: int  # K: carry arrays (h; or h, c)
    forward: Callable  # (us, rs, carry, extra) -> carry
    backward: Callable  # (us, rs, carry_prev, extra, dcarry) -> (dus, drs, dcarry_prev_direct)


def _sigmoid(a):
    return jax.nn.sigmoid(a)


def _vanilla_forward(us, rs, carry, extra):
    """``h_t = tanh(u_t + h_{t-1} W_hh)``."""
    del carry, extra
    return (jnp.tanh(us[0] + rs[0]),)


def _vanilla_backward(us, rs, carry, extra, dcarry):
    """``da = dh * (1 - h_t^2)``; the carry reaches ``h_{t-1}`` only through ``W_hh``."""
    del extra
    h = jnp.tanh(us[0] + rs[0])
    da = dcarry[0] * (1.0 - h * h)
    return [da], [da], (jnp.zeros_like(carry[0]),)


def _lstm_activations(us, rs):
    a = [u + r for u, r in zip(us, rs)]
    return _sigmoid(a[0]), _sigmoid(a[1]), jnp.tanh(a[2]), _sigmoid(a[3])


def _lstm_forward(us, rs, carry, extra):
    """``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``, ``h_t = sigmoid(o) tanh(c_t)``."""
    del extra
    i, f, g, o = _lstm_activations(us, rs)
    c = f * carry[1] + i * g
    return o * jnp.tanh(c), c


def _lstm_backward(us, rs, carry, extra, dcarry):
    """``dc = dc_t + dh o (1 - tanh(c_t)^2)``; gate gradients times each activation's slope."""
    del extra
    i, f, g, o = _lstm_activations(us, rs)
    c_prev = carry[1]
    c = f * c_prev + i * g
    tc = jnp.tanh(c)
    dh, dc_out = dcarry
    dc = dc_out + dh * o * (1.0 - tc * tc)
    da = [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)]
    return da, da, (jnp.zeros_like(dh), dc * f)


def _gru_activations(us, rs, extra):
    r = _sigmoid(us[0] + rs[0])
    z = _sigmoid(us[1] + rs[1])
    n = jnp.tanh(us[2] + r * (rs[2] + extra))
    return r, z, n


def _gru_forward(us, rs, carry, extra):
    """``h_t = (1 - z) n + z h_{t-1}`` with ``n = tanh(u_n + r (h_{t-1} W_hn + b_hn))``."""
    r, z, n = _gru_activations(us, rs, extra)
    return ((1.0 - z) * n + z * carry[0],)


def _gru_backward(us, rs, carry, extra, dcarry):
    """``dn = dh (1 - z)``, ``dz = dh (h_{t-1} - n)``; ``r`` scales the candidate's recurrent part."""
    r, z, n = _gru_activations(us, rs, extra)
    dh = dcarry[0]
    dan = dh * (1.0 - z) * (1.0 - n * n)
    dar = dan * (rs[2] + extra) * r * (1.0 - r)
    daz = dh * (carry[0] - n) * z * (1.0 - z)
    return [dar, daz, dan], [dar, daz, dan * r], (dh * z,)


GATE_MATH: dict[str, GateMath] = {
    "vanilla": GateMath("vanilla", 1, 1, _vanilla_forward, _vanilla_backward),
    "lstm": GateMath("lstm", 4, 2, _lstm_forward, _lstm_backward),
    "gru": GateMath("gru", 3, 1, _gru_forward, _gru_backward),
}
