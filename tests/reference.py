"""Independent float64 numpy references: the lecture's vanilla RNN with hand-written BPTT.

Written in the spirit of min-char-rnn.py: a forward pass that keeps every hidden state, then a backward
pass that walks the steps in reverse and *adds up* each step's contribution to the gradient of the shared
weights ("the gradient of W is the sum of its gradients at every step"). No JAX here.

Conventions match :mod:`rnn_jax.cells`: row vectors, weights stored input-major, so ``x @ W_xh`` is the
lecture's ``W_xh x``.
"""

from __future__ import annotations

import numpy as np


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def vanilla_forward_backward(params, h0, xs, targets):
    """Loss and gradients of the vanilla RNN with softmax cross-entropy summed over steps and batch.

    Args:
      params: dict with W_xh [I, H], W_hh [H, H], b_h [H], W_hy [H, O], b_y [O] (float64 arrays).
      h0: [B, H] initial hidden state.
      xs: [B, T, I] inputs.
      targets: [B, T] integer class of each step.

    Returns:
      (loss, grads) where grads has the params' keys plus ``h0`` and ``xs``.
    """
    W_xh, W_hh, b_h, W_hy, b_y = (np.asarray(params[k], np.float64) for k in ("W_xh", "W_hh", "b_h", "W_hy", "b_y"))
    xs = np.asarray(xs, np.float64)
    B, T, _ = xs.shape
    hs = {-1: np.asarray(h0, np.float64)}  # hs[t] is the hidden state after step t
    probs = {}
    loss = 0.0
    # Forward: h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h), y_t = W_hy h_t + b_y, loss += -log p_t[target].
    for t in range(T):
        hs[t] = np.tanh(xs[:, t] @ W_xh + hs[t - 1] @ W_hh + b_h)
        y = hs[t] @ W_hy + b_y
        probs[t] = softmax(y)
        loss += -np.log(probs[t][np.arange(B), targets[:, t]]).sum()

    # Backward: walk the steps in reverse. The same W is used at every step, so its gradient is the
    # sum of its gradients at every step.
    dW_xh, dW_hh, db_h = np.zeros_like(W_xh), np.zeros_like(W_hh), np.zeros_like(b_h)
    dW_hy, db_y = np.zeros_like(W_hy), np.zeros_like(b_y)
    dxs = np.zeros_like(xs)
    dh_next = np.zeros_like(hs[-1])  # gradient flowing into h_t from step t+1
    for t in reversed(range(T)):
        dy = probs[t].copy()
        dy[np.arange(B), targets[:, t]] -= 1.0  # d(-log softmax)/dy = p - onehot
        dW_hy += hs[t].T @ dy
        db_y += dy.sum(axis=0)
        dh = dy @ W_hy.T + dh_next  # from the output at t and from the future
        da = (1.0 - hs[t] ** 2) * dh  # back through tanh
        db_h += da.sum(axis=0)
        dW_xh += xs[:, t].T @ da
        dW_hh += hs[t - 1].T @ da
        dxs[:, t] = da @ W_xh.T
        dh_next = da @ W_hh.T
    grads = dict(W_xh=dW_xh, W_hh=dW_hh, b_h=db_h, W_hy=dW_hy, b_y=db_y, h0=dh_next, xs=dxs)
    return loss, grads


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_loop(params, h0, c0, xs):
    """Forward LSTM in float64 numpy, gate order i, f, g, o; returns (h_T, c_T, hs [B, T, H])."""
    W_x, W_h, b = (np.asarray(a, np.float64) for a in params)
    h, c = np.asarray(h0, np.float64), np.asarray(c0, np.float64)
    hs = []
    for t in range(xs.shape[1]):
        i, f, g, o = np.split(xs[:, t] @ W_x + h @ W_h + b, 4, axis=-1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = sigmoid(o) * np.tanh(c)
        hs.append(h)
    return h, c, np.stack(hs, axis=1)


def gru_loop(params, h0, xs):
    """Forward GRU in float64 numpy, gate order r, z, n; returns (h_T, hs [B, T, H])."""
    W_x, W_h, b, b_hn = (np.asarray(a, np.float64) for a in params)
    h = np.asarray(h0, np.float64)
    hs = []
    for t in range(xs.shape[1]):
        xr, xz, xn = np.split(xs[:, t] @ W_x + b, 3, axis=-1)
        hr, hz, hn = np.split(h @ W_h, 3, axis=-1)
        r, z = sigmoid(xr + hr), sigmoid(xz + hz)
        n = np.tanh(xn + r * (hn + b_hn))
        h = (1 - z) * n + z * h
        hs.append(h)
    return h, np.stack(hs, axis=1)
