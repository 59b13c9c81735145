"""The encoder-decoder's pass over whole batches with teacher forcing, or scheduled sampling, and dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.errors import UserError
from rnn_jax.scan import run, vmap_batch
from rnn_jax.topologies.basic import step_impl
from rnn_jax.topologies.seq2seq import Seq2SeqOutput, Seq2SeqParams, _decoder_state, _decoder_step, encode

__all__ = ["encoder_decoder_apply"]


def _check_batch(name, a, batch):
    if tuple(jnp.shape(a)) != tuple(batch):
        raise ValueError(f"{name} must have the batch shape {tuple(batch)}, got {tuple(jnp.shape(a))}")


def _check_training_args(teacher_forcing, key, scheduled: str, dropout: float) -> tuple[bool, bool]:
    """``(forced, needs_key)``: whether every step reads the target, and whether a PRNG key is drawn from."""
    if scheduled not in ("argmax", "sample"):
        raise UserError(f"scheduled must be 'argmax' or 'sample', got {scheduled!r}")
    traced = isinstance(teacher_forcing, jax.core.Tracer)
    if not traced and not 0.0 <= float(teacher_forcing) <= 1.0:
        raise UserError(f"teacher_forcing must lie in [0, 1], got {teacher_forcing}")
    forced = not traced and float(teacher_forcing) == 1.0
    if not forced and key is None:
        raise UserError(f"teacher_forcing={teacher_forcing} < 1 flips a coin per step: pass a PRNG key")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout must lie in [0, 1), got {dropout}")
    if dropout > 0 and key is None:
        raise UserError(f"dropout={dropout} draws masks: pass a PRNG key")
    return forced, not forced or dropout > 0


def _example_keys(key, batch: tuple[int, ...], needs_key: bool, drop: bool):
    """``(coins, encoder, decoder)`` keys of the batch shape, ``None`` where nothing is drawn. Only dropout
    splits an example's key: without it the key itself draws the coins, so they depend on the key alone."""
    if not needs_key:
        return None, None, None
    keys = jax.random.split(key, int(np.prod(batch, dtype=int))).reshape(batch) if batch else key
    if not drop:
        return keys, None, None
    parts = vmap_batch(lambda k: jax.random.split(k, 3), len(batch))(keys)
    return parts[..., 0], parts[..., 1], parts[..., 2]


def _check_apply_inputs(src, src_len, tgt_in, tgt_len):
    """The arrays of :func:`encoder_decoder_apply`, checked for shared batch dims and non-empty sources."""
    src, tgt_in, src_len = jnp.asarray(src), jnp.asarray(tgt_in), jnp.asarray(src_len)
    batch = src.shape[:-1]
    if src.ndim < 1 or tgt_in.ndim != src.ndim or tgt_in.shape[-1] < 1:
        raise ValueError(f"src [..., S] and tgt_in [..., T] need the same batch dims, got {src.shape}, {tgt_in.shape}")
    _check_batch("tgt_in[..., 0]", tgt_in[..., 0], batch)
    _check_batch("src_len", src_len, batch)
    if not isinstance(src_len, jax.core.Tracer) and src_len.size and np.asarray(src_len).min() < 1:
        raise UserError(f"every source needs at least one token, got a source length of {np.asarray(src_len).min()}")
    if tgt_len is not None:
        tgt_len = jnp.asarray(tgt_len)
        _check_batch("tgt_len", tgt_len, batch)
    return src, src_len, tgt_in, tgt_len


def encoder_decoder_apply(
    params: Seq2SeqParams,
    src,
    src_len,
    tgt_in,
    *,
    tgt_len=None,
    teacher_forcing: float = 1.0,
    key=None,
    scheduled: str = "argmax",
    dropout: float = 0.0,
    impl: str = "auto",
    unroll: int | None = None,
) -> Seq2SeqOutput:
    """Encoder-decoder with teacher forcing: the decoder reads ``tgt_in`` (start token first) and predicts
    the next token at every step.

    With ``teacher_forcing = r < 1`` (scheduled sampling) each step ``t >= 1`` flips its own coin, drawn
    from ``key`` inside the scan: with probability ``r`` it reads ``tgt_in[t]``, otherwise the model's own
    prediction from step ``t-1`` (``scheduled="argmax"``, or ``"sample"`` from its softmax). No gradient
    flows through that choice. ``r`` may be a traced value (a schedule inside a jitted train step).

    Args:
      params: from :func:`encoder_decoder_init`.
      src: ``[..., S]`` source token ids; ``src_len``: ``[...]`` lengths (``>= 1``).
      tgt_in: ``[..., T]`` decoder inputs (``[BOS, y_1, ..., y_{T-1}]``).
      tgt_len: optional ``[...]`` lengths: steps past them output zeros (logits and attention weights).
      teacher_forcing: the probability of reading the target at each step.
      key: PRNG key, needed when ``teacher_forcing`` is not the constant 1 or ``dropout > 0``.
      dropout: the probability of zeroing a feature between stacked layers (encoder and decoder) and
        of the features the output layer reads (training; decoding uses no dropout).
      impl, unroll: :func:`rnn_jax.run`'s options. The encoder layers run over the whole batch with
        ``impl`` as given; the decoder's step (attention, fed-back tokens) is a plain function, so it runs
        with :func:`step_impl` of ``impl`` (``"scan"`` for ``"pallas"``).

    Returns:
      :class:`Seq2SeqOutput` ``(logits [..., T, V], attention [..., T, S] or None, inputs [..., T])``.
    """
    src, src_len, tgt_in, tgt_len = _check_apply_inputs(src, src_len, tgt_in, tgt_len)
    batch = src.shape[:-1]
    forced, needs_key = _check_training_args(teacher_forcing, key, scheduled, dropout)
    T = tgt_in.shape[-1]

    keys, k_enc, k_dec = _example_keys(key, batch, needs_key, dropout > 0)
    memory, summary = encode(params, src, src_len, dropout=dropout, key=k_enc, impl=impl, unroll=unroll)

    def one(memory_SM, summary_M, n_src, tgt_T, n_tgt, k, k_dec):
        drop_keys = None if k_dec is None else jax.random.split(k_dec, T)
        ctx, state = _decoder_state(params, memory_SM, summary_M, n_src)
        if forced:
            coins_T, draw_keys = jnp.ones((T,), bool), None
        else:
            k_coin, k_draw = jax.random.split(k)
            coins_T = jax.random.bernoulli(k_coin, teacher_forcing, (T,)).at[0].set(True)
            draw_keys = jax.random.split(k_draw, T)

        def step(c, carry, x):
            dec, prev_logits = carry
            t, target = x[0], x[1]
            own = (
                jnp.argmax(prev_logits)
                if scheduled == "argmax" or draw_keys is None
                else jax.random.categorical(draw_keys[t], prev_logits)
            )
            token = jnp.where(coins_T[t], target, lax.stop_gradient(own).astype(target.dtype))
            k_step = None if drop_keys is None else drop_keys[t]
            dec, logits, w_S = _decoder_step(c, dec, token, dropout=dropout, key=k_step)
            return (dec, logits.astype(jnp.float32)), (logits, w_S, token[None])

        V = params.out.b.shape[0]
        xs = jnp.stack([jnp.arange(T, dtype=tgt_T.dtype), tgt_T], axis=-1)
        carry = (state, jnp.zeros((V,), jnp.float32))
        _, (logits, w, toks) = run(step, ctx, carry, xs, lengths=n_tgt, impl=step_impl(impl), unroll=unroll)
        return logits, w, toks[:, 0]

    axes = [0, 0, 0, 0, None if tgt_len is None else 0] + [None if k is None else 0 for k in (keys, k_dec)]
    fn = vmap_batch(one, len(batch), in_axes=tuple(axes))
    logits, w, toks = fn(memory, summary, src_len.astype(jnp.int32), tgt_in.astype(jnp.int32), tgt_len, keys, k_dec)
    return Seq2SeqOutput(logits=logits, attention=w, inputs=toks)
