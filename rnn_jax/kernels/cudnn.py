"""cuDNN's LSTM layer on NVIDIA GPUs through ``jax.experimental.rnn``, behind ``run(..., impl="cudnn")``.

``jax.experimental.rnn.lstm`` is one custom call into ``cudnnRNNForward`` (and, differentiated, one into
``cudnnRNNBackwardData_v8`` + ``cudnnRNNBackwardWeights_v8``) for a whole layer. It is the GPU LSTM a JAX
user would pick instead of a scan. This module converts one of our LSTM layers into its terms::

    ours:  [i, f, g, o] = x_t W_x + h_{t-1} W_h + b           W_x [I, 4H], W_h [H, 4H], b [4H]
    cuDNN: [i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh   (the same gate order and equations)
    packed weights = (W_x^T, W_h^T, b, 0)   flattened in that order: W_ih [4H, I], W_hh [4H, H], b_ih, b_hh

and runs batch-major with ``seq_lengths``. What differs between the two, and how it is bridged:

* **Lengths.** cuDNN reads each row up to its length, writes zeros past it (``padding fill 0``) and returns
  the carry after the last real step, as our scan does. It needs every length >= 1: a length-0 row is run
  for one step and then replaced by its initial carry and zero outputs (exact in values and gradients,
  since nothing of that step reaches the result).
* **Reverse.** cuDNN's single direction runs forward only (its reverse direction exists only inside its
  bidirectional mode). Ours, with ``reverse=True``, reads ``x[L-1], ..., x[0]`` of each row starting from
  the initial carry (the padded steps come first and leave it alone). That is a forward run over each row
  flipped *within its length*, with the outputs flipped back: the same gather both ways.
* **Dtypes and precision.** jaxlib's kernel is built for float32 alone (``CUDNN_DATA_FLOAT``); other
  dtypes are refused. Matmul precision follows ``jax_default_matmul_precision`` as XLA's own matmuls
  do: unset or ``"high"``/``"tensorfloat32"`` lets cuDNN use TF32, ``"highest"``/``"float32"`` does not;
  ``"default"``/``"bfloat16"`` are refused by jax.experimental.rnn and so here.
* **Transformations.** Reverse mode only: ``jax.experimental.rnn.lstm`` is a ``custom_vjp``, so ``jax.jvp``
  raises JAX's "can't apply forward-mode autodiff (jvp) to a custom_vjp function" where it is lowered. Its
  primitives have no batching rule: ``jax.vmap`` raises "Batching rule for 'rnn_fwd' not implemented";
  ``run`` flattens every batch dimension into ``N`` instead, so it never needs one.

It runs only where jaxlib's CUDA plugin is loaded on a CUDA backend (:func:`available`): even tracing asks
cuDNN for the size of its reserve space. No GPU was at hand when this was written: ``tests/test_cudnn.py``
checks the conversion on CPU against ``jax.experimental.rnn.lstm_ref`` and the lowering with cuDNN's sizes
stood in; ``experiments/device_check.sh`` runs the tests marked ``gpu`` against the scan on a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import rnn as jax_rnn

from rnn_jax.cells import LSTMState, lstm_cell

__all__ = ["available", "unsupported_reason", "run_cudnn", "run_lstm_layer", "pack_lstm_weights"]

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32),)

# jax_default_matmul_precision values that jax.experimental.rnn maps onto cuDNN's math type (the others raise).
_PRECISIONS = (None, "highest", "float32", "high", "tensorfloat32", "bfloat16_3x")


def available() -> str | None:
    """``None`` where this process can run cuDNN's LSTM (a CUDA backend with jaxlib's cuDNN RNN), else
    one short reason."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"needs a GPU (cuDNN); this process runs on {backend}"
    from jaxlib import gpu_rnn  # the CUDA plugin's RNN entry points; absent without it

    if not hasattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes"):
        return "needs jaxlib's CUDA plugin with cuDNN (jax[cuda12]); it did not load"
    version = jax.devices()[0].client.platform_version.lower()
    if "rocm" in version:
        return "needs a CUDA GPU (cuDNN); this GPU runs ROCm"
    return None


def _is_builtin_lstm(cell) -> bool:
    from rnn_jax.kernels import kernel_cell_name  # the registry's cell test; imported late: it imports us

    return kernel_cell_name(cell) == "lstm" and cell.project is lstm_cell.project


def unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False):
    """Why cuDNN's LSTM cannot run this layer (a short sentence), or ``None`` when it can.

    Refused: cells other than the built-in LSTM (its step *and* its input projection ``x W_x + b``, which
    cuDNN computes itself; any output head runs after it); ``remat`` (cuDNN keeps its own reserve space);
    ``return_carries``; dtypes other than float32; a ``jax_default_matmul_precision`` that
    jax.experimental.rnn refuses; and a process without a CUDA GPU (:func:`available`). ``lengths`` and
    ``reverse`` are supported.
    """
    del lengths, reverse
    if not _is_builtin_lstm(cell):
        return "cuDNN runs the built-in LSTM cell only (its step and its input projection x W_x + b)"
    if remat not in (False, "none"):
        return f"remat={remat!r} is not supported by cuDNN (it keeps its own reserve space)"
    if return_carries:
        return "return_carries is not supported by cuDNN (it returns the final carry only)"
    for what, a in (("params", params.W_x), ("params", params.W_h), ("params", params.b), ("xs", xs_TNI)):
        if jnp.dtype(a.dtype) not in SUPPORTED_DTYPES:
            return f"{what} of dtype {jnp.dtype(a.dtype).name} are not supported by jax.experimental.rnn (float32 only)"
    precision = jax.config.jax_default_matmul_precision
    if precision not in _PRECISIONS:
        return f"jax_default_matmul_precision={precision!r} is not supported by jax.experimental.rnn"
    return available()


def pack_lstm_weights(params) -> jax.Array:
    """Our LSTM params as cuDNN's packed weight vector of one unidirectional layer:
    ``concat(W_x^T, W_h^T, b, 0)`` flattened (``W_ih [4H, I]``, ``W_hh [4H, H]``, ``b_ih = b``, ``b_hh = 0``),
    the layout ``jax.experimental.rnn.unpack_lstm_weights`` reads."""
    return jnp.concatenate([params.W_x.T.ravel(), params.W_h.T.ravel(), params.b, jnp.zeros_like(params.b)])


def _flip_within_lengths(a_NT, lengths_N):
    """``out[n, t] = a[n, L_n - 1 - t]`` for ``t < L_n``, ``a[n, t]`` past it: its own inverse."""
    T = a_NT.shape[1]
    t_T = jnp.arange(T)
    src_NT = jnp.where(t_T[None, :] < lengths_N[:, None], lengths_N[:, None] - 1 - t_T[None, :], t_T[None, :])
    return jnp.take_along_axis(a_NT, src_NT.reshape(src_NT.shape + (1,) * (a_NT.ndim - 2)), axis=1)


def _cudnn_lstm(x_NTI, h_1NH, c_1NH, weights, seq_lengths_N, input_size, hidden_size):
    return jax_rnn.lstm(x_NTI, h_1NH, c_1NH, weights, seq_lengths_N, input_size, hidden_size, 1, 0.0, False)


def run_lstm_layer(lstm_fn, cell, params, carry_N, xs_TNI, lengths_N=None, *, reverse=False):
    """:func:`run_cudnn` around any ``lstm_fn(x_NTI, h_1NH, c_1NH, weights, seq_lengths_N, I, H) ->
    (y_NTH, h_1NH, c_1NH)`` with cuDNN's conventions (the tests pass ``jax.experimental.rnn.lstm_ref``)."""
    T, N, I = xs_TNI.shape
    H = params.W_h.shape[0]
    if carry_N is None:
        carry_N = jax.tree.map(lambda z: jnp.zeros((N, *z.shape), z.dtype), cell.init_carry(params))
    # run() checks lengths in [0, T] where it can see them; clipping keeps a traced outlier from reading
    # past the buffer and gives the scan's answer (its mask treats < 0 as 0 and > T as T).
    lengths = jnp.full((N,), T, jnp.int32) if lengths_N is None else jnp.clip(jnp.asarray(lengths_N, jnp.int32), 0, T)
    x_NTI = jnp.swapaxes(xs_TNI, 0, 1)
    flip = (lambda a: jnp.flip(a, 1)) if lengths_N is None else (lambda a: _flip_within_lengths(a, lengths))
    if reverse:
        x_NTI = flip(x_NTI)
    steps_N = jnp.maximum(lengths, 1)  # cuDNN takes no empty sequence; length-0 rows are restored below
    y_NTH, h_1NH, c_1NH = lstm_fn(x_NTI, carry_N.h[None], carry_N.c[None], pack_lstm_weights(params), steps_N, I, H)
    if reverse:
        y_NTH = flip(y_NTH)
    empty_N1 = (lengths == 0)[:, None]
    final = LSTMState(jnp.where(empty_N1, carry_N.h, h_1NH[0]), jnp.where(empty_N1, carry_N.c, c_1NH[0]))
    ys = jax.vmap(jax.vmap(lambda h: cell.readout(params, h)))(jnp.swapaxes(y_NTH, 0, 1))
    if lengths_N is not None:  # cuDNN writes zeros past each length, but not for the length-0 rows run once
        mask_TN = jnp.arange(T)[:, None] < lengths[None, :]
        ys = jnp.where(mask_TN.reshape(T, N, *(1,) * (ys.ndim - 2)), ys, 0)
    return final, ys


def run_cudnn(cell, params, carry_N, xs_TNI, lengths_N=None, *, reverse=False):
    """Run one LSTM layer through cuDNN: ``(final_carry_N, ys_TNO)``, equal to
    ``rnn_jax.run(cell, params, carry_N, xs_TNI, lengths=lengths_N, reverse=reverse, time_major=True,
    impl="scan")`` (up to float32 rounding; TF32 unless the matmul precision says otherwise).

    Args:
      cell: the built-in LSTM cell (see :func:`unsupported_reason`).
      params: its :class:`~rnn_jax.cells.LSTMParams`, float32.
      carry_N: the initial :class:`~rnn_jax.cells.LSTMState` with one leading batch axis ``N``, or ``None``
        for zeros.
      xs_TNI: time-major inputs ``[T, N, I]``.
      lengths_N: optional int ``[N]``: steps ``t >= length`` keep the carry and output zeros.
      reverse: run from ``T-1`` down to ``0`` (padded steps first, leaving the initial carry alone).

    Returns:
      The final carry ``[N, H]`` each and the outputs ``[T, N, O]`` after the cell's readout.
    """
    if not _is_builtin_lstm(cell):
        raise ValueError(unsupported_reason(cell, params, xs_TNI))
    return run_lstm_layer(_cudnn_lstm, cell, params, carry_N, xs_TNI, lengths_N, reverse=reverse)
