"""Attention of a decoder over an encoder's memory: Bahdanau (additive) and Luong (multiplicative, "general").

:data:`ATTENTIONS` is the one spelling of the choices, used by :func:`~rnn_jax.topologies.encoder_decoder_init`
and by the seq2seq trainer's ``--attention``: ``"none"`` is a decoder without attention (``None`` is read
as ``"none"``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax.topologies.basic import Dense, dense_init

Array = jax.Array

__all__ = ["ATTENTIONS", "BahdanauParams", "LuongParams", "attention_init", "attend"]

ATTENTIONS = ("luong", "bahdanau", "none")


class BahdanauParams(NamedTuple):
    """Additive attention: ``score_s = v . tanh(q W_q + m_s W_m)`` with the previous decoder state ``q``."""

    W_q: Array  # [H, A]
    W_m: Array  # [M, A]
    v: Array  # [A]


class LuongParams(NamedTuple):
    """Multiplicative ("general") attention ``score_s = q W m_s`` with the current state ``q``, and the
    attentional state ``h~ = tanh([c; q] W_c + b_c)`` that makes the output and is fed to the next step."""

    W: Array  # [H, M]
    combine: Dense  # [M + H, H]


def attention_init(keys, attention, H: int, M: int, A: int, dtype):
    """Attention params drawn from the iterator ``keys``: Bahdanau (query, memory, ``v``), Luong, or None
    (``attention`` ``"none"`` or ``None``)."""
    if attention == "bahdanau":
        W_q, W_m = dense_init(next(keys), H, A, dtype).W, dense_init(next(keys), M, A, dtype).W
        return BahdanauParams(W_q=W_q, W_m=W_m, v=jax.nn.initializers.normal(1.0)(next(keys), (A,), dtype))
    if attention == "luong":
        return LuongParams(W=dense_init(next(keys), H, M, dtype).W, combine=dense_init(next(keys), M + H, H, dtype))
    return None


def attend(att, query_H, memory_SM, src_len) -> tuple[Array, Array]:
    """Attention of one query over the memory, masked by ``src_len``: ``(context [M], weights [S])``.

    ``weights = softmax(scores)`` over ``s < src_len`` only: padded positions get exactly 0 and the real
    ones sum to 1. Bahdanau: ``score_s = v . tanh(q W_q + m_s W_m)``; Luong: ``score_s = q W . m_s``.
    """
    if isinstance(att, BahdanauParams):
        scores_S = jnp.tanh(memory_SM @ att.W_m + (query_H @ att.W_q)[None, :]) @ att.v
    elif isinstance(att, LuongParams):
        scores_S = memory_SM @ (query_H @ att.W)
    else:
        raise TypeError(f"expected BahdanauParams or LuongParams, got {type(att).__name__}")
    real_S = jnp.arange(memory_SM.shape[0]) < src_len
    scores_S = jnp.where(real_S, scores_S.astype(jnp.float32), -jnp.inf)
    weights_S = jnp.where(real_S, jax.nn.softmax(scores_S), 0.0)  # exp(-inf) is 0 already; where keeps NaN out
    return (weights_S.astype(memory_SM.dtype) @ memory_SM), weights_S
