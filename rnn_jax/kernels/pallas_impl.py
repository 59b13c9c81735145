"""``impl="pallas"``: persistent Pallas kernels for the vanilla, LSTM and GRU layers (the glue around them).

One layer, ``T`` steps, is one kernel launch per direction (forward; backward)::

    U = X W_x + b                                  one large matmul, outside the kernel
    for t in 0..T-1 (inside ONE kernel):           W_h read once and kept on chip, h (and c) in registers
        A_t = U_t + h_{t-1} W_h;  carry_t = cell(A_t, carry_{t-1})
    backward (ONE kernel, the reverse recurrence with W_h^T) writes the gate gradients dA [T, N, G*H];
    then dW_h = H_prev^T dA,  dW_x = X^T dA,  db = sum dA,  dX = dA W_x^T   one large matmul each, outside

Design choices, and why:

* **Triton, not Mosaic GPU.** Pallas's Triton backend lowers the in-kernel ``[n, H] x [H, H]`` products
  to ``tl.dot`` (tensor cores, float32 accumulation); Mosaic GPU's default lowering of ``dot_general``
  rejects them (``tests/test_kernels.py`` lowers the kernels for ``cuda``).
  Triton needs power-of-two blocks and ``tl.dot`` needs every side >= 16: ``H`` is zero-padded to
  ``Hp = max(16, 2^ceil(log2 H))`` and the batch to a multiple of :data:`BLOCK_N`. Zero-padded units
  stay exactly zero in all three cells (their pre-activations are 0: ``tanh 0 = 0``; LSTM
  ``c = 0.5 * 0 + 0.5 * tanh 0 = 0``; GRU ``n = 0``, ``h = 0.5 * 0 + 0.5 * 0``), and padded batch rows
  have length 0, so padding changes no value and no gradient.
* **A grid over blocks of the batch**: each program owns :data:`BLOCK_N` rows for the whole sequence,
  so programs never synchronise; ``W_h`` must fit on one multiprocessor (:data:`MAX_WEIGHT_BYTES`),
  larger layers are refused (:func:`unsupported_reason`) and run on the scan.
* **Interpret mode on CPU.** The kernels are chosen by the platform being lowered for
  (``lax.platform_dependent``): Pallas interpret mode on CPU (slow, exact: that is how the tests
  check them), Triton on CUDA. No TPU (Mosaic TPU) variant: refused on TPU.
* **bf16**: bf16 weights and inputs go to ``tl.dot`` as bf16 with float32 accumulation; the carry stays
  float32 in registers and is rounded to the carry's dtype only where it is stored.
* **Autodiff**: reverse mode through the backward kernel (a ``custom_jvp`` whose tangent is a
  ``linear_call`` transposed into the backward kernel); forward mode (``jax.jvp``) raises an error
  naming ``impl="scan"``. ``vmap`` of the gradient is not supported (``linear_call`` has no batching
  rule): flatten the batch into ``N`` instead, as :func:`run_pallas` does.

Their speed on a GPU is measured by ``experiments/device_check.sh`` (``docs/kernels.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.cells import LSTMState
from rnn_jax.kernels.cell_kind import kernel_cell_name
from rnn_jax.kernels.cell_kind import recurrent_weight as _recurrent_weight
from rnn_jax.kernels.gates import GATE_MATH
from rnn_jax.kernels.pallas import LayerConfig, layer

__all__ = ["run_pallas", "unsupported_reason", "available", "BLOCK_N", "MAX_WEIGHT_BYTES", "padded_hidden"]

BLOCK_N = 16
"""Batch rows per kernel program: the smallest side ``tl.dot`` accepts, so the most programs in flight."""

MAX_WEIGHT_BYTES = 128 * 1024
"""Largest padded ``W_h`` (``G * Hp * Hp * itemsize``) the kernels hold on chip: float32 vanilla up to H=128,
LSTM and GRU up to H=64; bfloat16 vanilla up to H=256, LSTM and GRU up to H=128. Compiled for sm_90 without
a GPU (``experiments/device_check_compile.py``, triton 3.9): every accepted kernel fits the 227 KiB of shared
memory a Hopper program may use (at most 144 KiB), every refused one does not (at least 264 KiB)."""

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def available() -> str | None:
    """Usable wherever this module imports (Pallas interpret mode on CPU, Triton on CUDA)."""
    return None


def padded_hidden(H: int) -> int:
    """``Hp``: ``H`` rounded up to a power of two, at least 16 (Triton blocks, ``tl.dot``)."""
    return max(16, 1 << (H - 1).bit_length())


def unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False):
    """Why the kernel cannot run this layer (a short sentence), or ``None`` when it can.

    Refused: cells other than the built-in vanilla, LSTM and GRU steps; ``remat`` (the kernel stores
    one ``[T, G, N, H]`` residual and nothing else: use the scan to trade compute for memory);
    ``return_carries``; dtypes other than float32 and bfloat16; a padded ``W_h`` larger than
    :data:`MAX_WEIGHT_BYTES`; a TPU backend (no Mosaic TPU variant). ``lengths`` and ``reverse`` are
    supported.
    """
    del xs_TNI, lengths, reverse
    name = kernel_cell_name(cell)
    if name is None:
        return "the kernel runs the built-in vanilla, LSTM and GRU cells only"
    if remat not in (False, "none"):
        return f"remat={remat!r} is not supported by the kernel"
    if return_carries:
        return "return_carries is not supported by the kernel"
    W = _recurrent_weight(name, params)
    if jnp.dtype(W.dtype) not in SUPPORTED_DTYPES:
        return f"dtype {jnp.dtype(W.dtype).name} is not supported by the kernel (float32 or bfloat16)"
    H, Hp, G = W.shape[0], padded_hidden(W.shape[0]), GATE_MATH[name].gates
    size = G * Hp * Hp * jnp.dtype(W.dtype).itemsize
    if size > MAX_WEIGHT_BYTES:
        return (
            f"H={H} does not fit on chip: the {name} kernel holds W_h as {G} x {Hp} x {Hp} "
            f"{jnp.dtype(W.dtype).name} ({size // 1024} KiB > {MAX_WEIGHT_BYTES // 1024} KiB)"
        )
    if jax.default_backend() == "tpu":
        return "the kernel has no TPU (Mosaic TPU) variant"
    return None


def _pad_to(a, shape):
    return jnp.pad(a, [(0, s - d) for s, d in zip(shape, a.shape)])


def _kernel_inputs(name, cell, params, carry_N, xs_TNI, lengths_N):
    """Project and pad: ``u [T, G, Np, Hp]``, ``W [G, Hp, Hp]``, ``extra [Hp]``, carries, lengths."""
    T, N = xs_TNI.shape[:2]
    W = _recurrent_weight(name, params)
    H, G = W.shape[0], GATE_MATH[name].gates
    Hp, Np = padded_hidden(H), -(-N // BLOCK_N) * BLOCK_N
    u = jax.vmap(jax.vmap(lambda x: cell.project(params, x)))(xs_TNI)  # [T, N, G*H]: one large matmul
    u = _pad_to(jnp.transpose(u.reshape(T, N, G, H), (0, 2, 1, 3)), (T, G, Np, Hp))
    W_g = _pad_to(jnp.transpose(W.reshape(H, G, H), (1, 0, 2)), (G, Hp, Hp))
    extra = _pad_to(params.b_hn, (Hp,)) if name == "gru" else jnp.zeros((Hp,), W.dtype)
    carries = (carry_N.h, carry_N.c) if name == "lstm" else (carry_N,)
    carries = tuple(_pad_to(c, (Np, Hp)) for c in carries)
    lengths = jnp.full((N,), T, jnp.int32) if lengths_N is None else jnp.asarray(lengths_N, jnp.int32)
    return u, W_g, extra, carries, _pad_to(lengths, (Np,))


def run_pallas(cell, params, carry_N, xs_TNI, lengths_N=None, *, reverse=False):
    """Run one layer through the kernel: ``(final_carry_N, ys_TNO)``, equal to
    ``rnn_jax.run(cell, params, carry_N, xs_TNI, lengths=lengths_N, reverse=reverse, time_major=True)``.

    Args:
      cell: the built-in vanilla, LSTM or GRU cell (see :func:`unsupported_reason`).
      params: its params.
      carry_N: the initial carry with one leading batch axis ``N`` (LSTM: :class:`~rnn_jax.cells.LSTMState`),
        or ``None`` for zeros.
      xs_TNI: time-major inputs ``[T, N, I]``.
      lengths_N: optional int ``[N]``: steps ``t >= length`` keep the carry and output zeros.
      reverse: run from ``T-1`` down to ``0`` (padded steps first, leaving the initial carry alone).

    Returns:
      The final carry ``[N, ...]`` and the outputs ``[T, N, O]`` after the cell's readout.
    """
    name = kernel_cell_name(cell)
    if name is None:
        raise ValueError(unsupported_reason(cell, params, xs_TNI))
    T, N = xs_TNI.shape[:2]
    H = _recurrent_weight(name, params).shape[0]
    if carry_N is None:
        carry_N = jax.tree.map(lambda z: jnp.zeros((N, *z.shape), z.dtype), cell.init_carry(params))
    u, W, extra, carries, lengths = _kernel_inputs(name, cell, params, carry_N, xs_TNI, lengths_N)
    seq = layer(LayerConfig(name, bool(reverse), BLOCK_N), u, W, extra, carries, lengths)
    seq = tuple(s[:, :N, :H] for s in seq)
    last = tuple(s[0 if reverse else T - 1] for s in seq)
    final = LSTMState(*last) if name == "lstm" else last[0]
    ys = jax.vmap(jax.vmap(lambda h: cell.readout(params, h)))(seq[0])
    if lengths_N is not None:
        mask = jnp.arange(T)[:, None] < jnp.asarray(lengths_N)[None, :]
        ys = jnp.where(mask.reshape(mask.shape + (1,) * (ys.ndim - 2)), ys, 0)
    return final, ys
