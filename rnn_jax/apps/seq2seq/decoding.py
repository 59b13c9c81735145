"""Decoding the seq2seq model: greedy, and beam search that keeps the greedy hypothesis (never worse than greedy),
each batch to the length its longest source allows (:class:`~rnn_jax.apps.seq2seq.data.LengthBudget`)."""

from __future__ import annotations

import functools
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import decode, topologies
from rnn_jax.apps.seq2seq.data import LengthBudget
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError

__all__ = ["make_decoder", "decode_pairs", "check_vocab_fits_beam", "finished", "BATCH_TOKENS"]

BATCH_TOKENS = 256 * 64
"""Source tokens (rows x padded length) one decoding batch holds at most: long inputs go in fewer rows, so
the memory of a batch does not grow with the length of its sources."""


def _start(params, src_S, src_len):
    return topologies.decoder_start(params, src_S, src_len, pairdata.BOS)


def _finished(tokens_L, length):
    return (length > 0) & (tokens_L[jnp.maximum(length - 1, 0)] == pairdata.EOS)


def _greedy_one(params, src_S, src_len, *, max_len: int):
    ctx, state, logits = _start(params, src_S, src_len)
    out = decode.greedy(topologies.decoder_step_fn, ctx, state, logits, max_len=max_len, end_token=pairdata.EOS)
    return out.tokens, out.length, out.log_prob


def _beam_one(params, src_S, src_len, *, max_len: int, beam: int, length_penalty: float):
    """The best finished hypothesis among the ``K`` beams and the greedy one (see the module docstring)."""
    ctx, state, logits = _start(params, src_S, src_len)
    g = decode.greedy(topologies.decoder_step_fn, ctx, state, logits, max_len=max_len, end_token=pairdata.EOS)
    b = decode.beam_search(
        topologies.decoder_step_fn,
        ctx,
        state,
        logits,
        beam_width=beam,
        max_len=max_len,
        end_token=pairdata.EOS,
        length_penalty=length_penalty,
    )
    fin_b = jax.vmap(_finished)(b.tokens, b.lengths)
    # An unfinished hypothesis (no </s> within max_len) ranks below every finished one.
    i = jnp.argmax(jnp.where(fin_b, b.scores, b.scores - 1e9))
    fin_g = _finished(g.tokens, g.length)
    score_g = g.log_prob / g.length.astype(jnp.float32) ** length_penalty
    take_g = (fin_g & ~fin_b[i]) | ((fin_g == fin_b[i]) & (score_g > b.scores[i]))
    tokens = jnp.where(take_g, g.tokens, b.tokens[i])
    length = jnp.where(take_g, g.length, b.lengths[i])
    log_prob = jnp.where(take_g, g.log_prob, b.log_probs[i])
    return tokens, length, log_prob


def make_decoder(max_len: int | LengthBudget, beam: int = 1, length_penalty: float = 0.0):
    """``decoder(params, src [B, S], src_len [B]) -> (tokens [B, L], lengths [B], log_probs [B])``.

    ``beam == 1`` is greedy; ``beam > 1`` is beam search with the greedy hypothesis added (never worse).
    ``max_len``: a fixed ``L``, or a :class:`LengthBudget`, and then ``L = budget(S)`` for each batch (one
    compiled decoder per padded source length).
    """
    if not isinstance(beam, int) or beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {beam!r}")
    if isinstance(max_len, LengthBudget):
        budget = max_len
        return lambda params, src, src_len: _fixed_decoder(budget(src.shape[1]), beam, length_penalty)(
            params, src, src_len
        )
    return _fixed_decoder(max_len, beam, length_penalty)


@functools.lru_cache(maxsize=32)
def _fixed_decoder(max_len: int, beam: int, length_penalty: float):
    """The jitted decoder of one output length ``max_len``."""
    if beam == 1:
        one = partial(_greedy_one, max_len=max_len)
    else:
        one = partial(_beam_one, max_len=max_len, beam=beam, length_penalty=length_penalty)
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


def check_vocab_fits_beam(beam: int, tgt_vocab: pairdata.Vocab) -> None:
    """A beam no wider than the target vocabulary (``beam`` named as the config field), or a :class:`UserError`."""
    if isinstance(beam, int) and not isinstance(beam, bool) and beam > len(tgt_vocab):
        raise UserError(f"beam must be at most the target vocabulary size {len(tgt_vocab)}, got {beam}")
    decode.check_sampling_args(len(tgt_vocab), max_len=1, beam_width=beam)


def finished(ids: list[int]) -> bool:
    """Whether a decoded output (ids, ``</s>`` kept) ended with ``</s>``: ``False`` means decoding was cut."""
    return bool(ids) and ids[-1] == pairdata.EOS


def _rows(batch_size: int, padded_len: int) -> int:
    """Rows of a batch of sources ``padded_len`` long: ``batch_size``, halved until within :data:`BATCH_TOKENS`."""
    rows = batch_size
    while rows > 1 and rows * padded_len > BATCH_TOKENS:
        rows //= 2
    return rows


def decode_pairs(model_params, sources: list[list[int]], decoder, batch_size: int, pad_multiple: int = 8):
    """Decode every source (lists of ids) in length-sorted batches: ``(ids per source, log_probs)``.

    Each output keeps its ``</s>`` (:func:`finished` tells a cut one). Batches of long sources hold fewer
    rows (:data:`BATCH_TOKENS`).
    """
    order = np.argsort([len(s) for s in sources], kind="stable")
    out_tokens: list[Any] = [None] * len(sources)
    out_logp = np.zeros(len(sources), np.float64)
    start = 0
    while start < len(order):
        longest = len(sources[order[min(start + batch_size, len(order)) - 1]])  # sorted: the last is longest
        rows = _rows(batch_size, -(-longest // pad_multiple) * pad_multiple)
        idx = order[start : start + rows]
        start += rows
        b = pairdata.pad_batch([sources[i] for i in idx], None, batch_size=rows, pad_multiple=pad_multiple)
        tokens, lengths, logp = jax.device_get(decoder(model_params, b.src, b.src_len))
        for r, i in enumerate(idx):
            out_tokens[i] = tokens[r, : lengths[r]].tolist()
            out_logp[i] = logp[r]
    return out_tokens, out_logp
