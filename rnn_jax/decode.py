"""Compiled decoding: priming, greedy, temperature / top-k / top-p sampling, and beam search.

Every function here works on **one example**; batch with ``jax.vmap`` over the carries, logits and keys.
Nothing is jitted inside: jit the function that calls them (the caller knows which arguments are static).

The model is seen through a *token step*::

    step_fn(params, carry, token) -> (carry, logits_V)      # token: int32 scalar

(embed the token, run the cell or stack, apply the output head). ``carry`` may be any pytree. Decoding
loops go through :func:`rnn_jax.run` with a plain-function cell (one ``lax.scan``): the step draws a token
from the current logits and feeds it back, so no Python loop runs per token.

Conventions:

- The first token is drawn from the ``logits_V`` you pass (the prediction after the prefix: see
  :func:`prime`); each drawn token is then fed back through ``step_fn``.
- ``end_token``: once drawn, the sequence is done; it counts in ``length``, its carry is kept, and every
  later position holds ``end_token`` again (0 when there is no end token).
- ``log_prob`` is always under the *untempered* model: ``sum_t log softmax(logits_t)[token_t]``.
- Temperature ``tau``: ``p(v) ~ exp(logits_v / tau)``; ``tau = 0`` means greedy (argmax). Top-k keeps the
  ``k`` largest logits; top-p (nucleus) keeps the smallest set of most likely tokens whose mass reaches
  ``p`` (the most likely token is always kept). They apply in that order: temperature, top-k, top-p.
- Beam search scores a finished hypothesis by ``log_prob / length ** length_penalty`` (``alpha = 0``: the
  plain log-probability; ``alpha = 1``: the per-token mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.errors import UserError
from rnn_jax.losses import check_token_ids
from rnn_jax.scan import run

Array = jax.Array
StepFn = Callable[[Any, Any, Array], tuple[Any, Array]]

__all__ = [
    "Decoded",
    "BeamResult",
    "prime",
    "sample",
    "greedy",
    "beam_search",
    "check_sampling_args",
    "check_prime",
    "one_hot_step",
]


class Decoded(NamedTuple):
    """A decoded sequence (one example).

    Attributes:
      tokens: ``[max_len]`` int32; positions after the end token hold ``end_token`` (0 without one).
      length: int32 scalar, the tokens generated, counting the end token if one was drawn.
      log_prob: float32 scalar, ``sum log p(token)`` of the generated tokens under the untempered model.
      carry: the carry after feeding the last generated token (the end token included).
    """

    tokens: Array
    length: Array
    log_prob: Array
    carry: Any


class BeamResult(NamedTuple):
    """The ``K`` final beams of :func:`beam_search` (one example), best score first.

    Attributes:
      tokens: ``[K, max_len]`` int32, padded after the end token with ``end_token``.
      lengths: ``[K]`` int32, counting the end token.
      log_probs: ``[K]`` float32, the model's log-probability of each hypothesis.
      scores: ``[K]`` float32, ``log_probs / lengths ** length_penalty``.
    """

    tokens: Array
    lengths: Array
    log_probs: Array
    scores: Array


# ---------------------------------------------------------------------------------------------------
# Validation at the boundary
# ---------------------------------------------------------------------------------------------------


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_sampling_args(
    vocab_size: int,
    *,
    max_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    beam_width: int | None = None,
) -> None:
    """Raise :class:`~rnn_jax.errors.UserError` naming the first bad decoding argument.

    Traced values (inside ``jit``) cannot be checked and are let through; ``max_len``, ``top_k`` and
    ``beam_width`` fix array shapes, so they must be Python integers.
    """
    if not _is_int(vocab_size) or vocab_size < 1:
        raise UserError(f"the vocabulary size must be a positive integer, got {vocab_size!r}")
    if not _is_int(max_len) or max_len < 1:
        raise UserError(f"max length must be an integer >= 1, got {max_len!r}")
    if _concrete(temperature):
        t = float(np.asarray(temperature))
        if not t >= 0 or math.isinf(t):  # also rejects NaN
            raise UserError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= vocab_size):
        raise UserError(f"top-k must be an integer between 1 and the vocabulary size {vocab_size}, got {top_k!r}")
    if top_p is not None and _concrete(top_p):
        p = float(np.asarray(top_p))
        if not 0.0 < p <= 1.0:
            raise UserError(f"top-p must lie in (0, 1], got {top_p!r}")
    if beam_width is not None and (not _is_int(beam_width) or not 1 <= beam_width <= vocab_size):
        raise UserError(
            f"beam width must be an integer between 1 and the vocabulary size {vocab_size}, got {beam_width!r}"
        )


def check_prime(text_or_tokens, vocab) -> np.ndarray:
    """Encode a prime, naming every symbol that is not in the vocabulary.

    Args:
      text_or_tokens: a string (each character a symbol), a sequence of symbols, or a sequence / array of
        integer token ids.
      vocab: a mapping ``symbol -> id``, or a sequence of symbols (the id is the position), e.g. ``"helo"``.

    Returns:
      ``[P]`` int32 token ids, ``P >= 1``.
    """
    index = dict(vocab) if isinstance(vocab, Mapping) else {s: i for i, s in enumerate(vocab)}
    size = len(index)
    if isinstance(text_or_tokens, (np.ndarray, jax.Array)) and np.issubdtype(text_or_tokens.dtype, np.integer):
        items = np.asarray(text_or_tokens).reshape(-1).tolist()
    else:
        items = list(text_or_tokens)
    if not items:
        raise UserError("the prime is empty: give at least one symbol to start from")
    if all(_is_int(s) for s in items) and not any(s in index for s in items):
        bad = sorted({s for s in items if not 0 <= s < size})
        if bad:
            raise UserError(f"prime token ids {bad} are outside the vocabulary of size {size} (ids 0..{size - 1})")
        return np.asarray(items, np.int32)
    bad = sorted({s for s in items if s not in index}, key=str)
    if bad:
        shown = list(index) if size <= 80 else f"{size} symbols"
        raise UserError(f"prime contains symbols outside the vocabulary: {bad}; the vocabulary is {shown}")
    return np.asarray([index[s] for s in items], np.int32)


def _check_logits(logits_V) -> int:
    if jnp.ndim(logits_V) != 1:
        raise ValueError(
            f"logits must be one example's [V] vector, got shape {jnp.shape(logits_V)}; vmap over the batch"
        )
    return int(jnp.shape(logits_V)[0])


# ---------------------------------------------------------------------------------------------------
# Token steps
# ---------------------------------------------------------------------------------------------------


def one_hot_step(cell, vocab_size: int) -> StepFn:
    """The token step of a cell whose output is the logits: ``cell(params, carry, one_hot(token))``.

    The one-hot vector takes the dtype of the params' first leaf (so bf16 params stay bf16).
    """

    def step_fn(params, carry, token):
        dtype = jax.tree.leaves(params)[0].dtype
        return cell(params, carry, jax.nn.one_hot(token, vocab_size, dtype=dtype))

    return step_fn


def prime(step_fn: StepFn, params, carry, tokens_P) -> tuple[Any, Array]:
    """Feed a prefix through ``step_fn`` (one scan); return the carry and the logits after the last token.

    ``h_P, logits = step(... step(step(h_0, x_1), x_2) ..., x_P)``. ``tokens_P`` is ``[P]``, ``P >= 1``.
    Concrete tokens must lie in ``[0, V)``, ``V`` the size of the step's logits (the tokens it is fed are
    drawn from them): :func:`rnn_jax.losses.check_token_ids`; traced ones (under ``jit``) are not checked.
    """
    tokens_P = jnp.asarray(tokens_P)
    if tokens_P.ndim != 1 or tokens_P.shape[0] < 1:
        raise UserError(f"the prime must be a non-empty [P] vector of token ids, got shape {tokens_P.shape}")
    if not jnp.issubdtype(tokens_P.dtype, jnp.integer):
        raise TypeError(f"prime tokens must be integers, got dtype {tokens_P.dtype}")
    if _concrete(tokens_P):
        _, logits_V = jax.eval_shape(step_fn, params, carry, tokens_P[0].astype(jnp.int32))  # shapes only
        check_token_ids(tokens_P, logits_V.shape[-1], "prime tokens")

    def cell(p, c, x_1):
        return step_fn(p, c, x_1[0])

    carry, logits_PV = run(cell, params, carry, tokens_P.astype(jnp.int32)[:, None])
    return carry, logits_PV[-1]


# ---------------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------------


def _keep_mask(keep_sorted_V, order_V):
    """Scatter a mask given in sorted order back to vocabulary order."""
    return jnp.zeros(keep_sorted_V.shape, bool).at[order_V].set(keep_sorted_V)


def _filter(logits_V, top_k, top_p):
    """Set to ``-inf`` the logits outside the top-k set and outside the nucleus of mass ``top_p``."""
    V = logits_V.shape[0]
    if top_k is not None and top_k < V:
        _, idx = lax.top_k(logits_V, top_k)  # ties go to the lower index, as in argmax
        logits_V = jnp.where(jnp.zeros((V,), bool).at[idx].set(True), logits_V, -jnp.inf)
    if top_p is not None:
        order = jnp.argsort(-logits_V, stable=True)  # most likely first, ties to the lower index
        probs = jax.nn.softmax(logits_V)[order]
        mass_before = jnp.cumsum(probs) - probs  # mass of the strictly more likely tokens: 0 for the first
        logits_V = jnp.where(_keep_mask(mass_before < top_p, order), logits_V, -jnp.inf)
    return logits_V


def _draw(key, logits_V, temperature, top_k, top_p):
    """One token from float32 logits: argmax at temperature 0, else a draw from the filtered softmax."""
    argmax = jnp.argmax(logits_V).astype(jnp.int32)
    if _concrete(temperature) and float(np.asarray(temperature)) == 0.0:
        return argmax
    t = jnp.asarray(temperature, jnp.float32)
    scaled = logits_V / jnp.where(t > 0, t, 1.0)
    drawn = jax.random.categorical(key, _filter(scaled, top_k, top_p)).astype(jnp.int32)
    return jnp.where(t > 0, drawn, argmax)  # a traced temperature of 0 is greedy too


def sample(
    step_fn: StepFn,
    params,
    carry,
    logits_V,
    key,
    *,
    max_len: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    end_token: int | None = None,
) -> Decoded:
    """Sample ``max_len`` tokens, each fed back as the next input, stopping at ``end_token``.

    ``token_t ~ filter(softmax(logits_t / tau))``, ``carry_t, logits_{t+1} = step_fn(params, carry_{t-1},
    token_t)``. The loop is one scan over ``jax.random.split(key, max_len)``; after the end token a done
    flag freezes the carry and the log-probability and pads the tokens.

    Args:
      step_fn: ``(params, carry, token) -> (carry, logits_V)``.
      carry: the carry after the prefix; ``logits_V``: the prediction made there (see :func:`prime`).
      key: PRNG key (unused when ``temperature == 0``).
      max_len: tokens to generate at most (a Python int).
      temperature: ``>= 0``; ``0`` is greedy.
      top_k: keep only the ``k`` most likely tokens (``1 <= k <= V``).
      top_p: keep the nucleus of probability mass ``p`` (``0 < p <= 1``).
      end_token: token id that ends the sequence, or ``None`` to always generate ``max_len`` tokens.
    """
    V = _check_logits(logits_V)
    check_sampling_args(V, max_len=max_len, temperature=temperature, top_k=top_k, top_p=top_p)
    _check_end_token(end_token, V)
    fill = jnp.int32(0 if end_token is None else end_token)
    keys = jax.random.split(key, max_len)

    def cell(p, state, t_1):
        c, logits, done, length, logp = state
        token = jnp.where(done, fill, _draw(keys[t_1[0]], logits, temperature, top_k, top_p))
        logp = logp + jnp.where(done, 0.0, jax.nn.log_softmax(logits)[token])
        new_c, new_logits = step_fn(p, c, token)
        c = jax.tree.map(lambda n, o: jnp.where(done, o, n), new_c, c)
        logits = jnp.where(done, logits, new_logits.astype(jnp.float32))
        length = length + jnp.where(done, 0, 1).astype(jnp.int32)
        if end_token is not None:
            done = done | (token == end_token)
        return (c, logits, done, length, logp), token[None]

    state = (carry, logits_V.astype(jnp.float32), jnp.bool_(False), jnp.int32(0), jnp.float32(0.0))
    (carry, _, _, length, logp), tokens = run(cell, params, state, jnp.arange(max_len, dtype=jnp.int32)[:, None])
    return Decoded(tokens=tokens[:, 0], length=length, log_prob=logp, carry=carry)


def greedy(step_fn: StepFn, params, carry, logits_V, *, max_len: int, end_token: int | None = None) -> Decoded:
    """Greedy decoding, ``token_t = argmax logits_t``: :func:`sample` at temperature 0."""
    return sample(
        step_fn, params, carry, logits_V, jax.random.key(0), max_len=max_len, temperature=0.0, end_token=end_token
    )


def _check_end_token(end_token, V):
    if end_token is not None and (not _is_int(end_token) or not 0 <= end_token < V):
        raise UserError(f"end token must be a token id in [0, {V}), got {end_token!r}")


# ---------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------


def beam_search(
    step_fn: StepFn,
    params,
    carry,
    logits_V,
    *,
    beam_width: int,
    max_len: int,
    end_token: int | None,
    length_penalty: float = 0.0,
) -> BeamResult:
    """Beam search over ``K = beam_width`` hypotheses, compiled as one scan of ``max_len`` steps.

    At each step every live beam ``k`` proposes its ``V`` extensions with ``log_prob_k + log p(v | beam_k)``;
    a finished beam proposes only itself, unchanged (the end token again, at no cost). The ``K`` best of the
    ``K * V`` candidates survive, ranked by ``score = log_prob / length ** length_penalty`` (with the length
    each candidate would have: a finished beam keeps its own length). The search starts from a single live
    beam (the others at ``-inf``), so the first step picks ``K`` distinct first tokens.

    The carry may be any pytree; the beams are its leading axis (``step_fn`` is vmapped over them). Width 1
    is greedy decoding. Beam search is a heuristic: a wider beam usually, not always, finds a likelier
    sequence; with ``K = V`` and ``max_len <= 2`` it is exact.

    Returns:
      :class:`BeamResult` with the ``K`` beams, best score first.
    """
    V = _check_logits(logits_V)
    check_sampling_args(V, max_len=max_len, beam_width=beam_width)
    _check_end_token(end_token, V)
    if _concrete(length_penalty) and not float(np.asarray(length_penalty)) >= 0:
        raise UserError(f"length penalty must be >= 0, got {length_penalty!r}")
    K = beam_width
    fill = 0 if end_token is None else end_token
    alpha = jnp.asarray(length_penalty, jnp.float32)
    vocab = jnp.arange(V)
    step_K = jax.vmap(step_fn, in_axes=(None, 0, 0))

    def cell(p, state, t_1):
        c_K, logits_KV, done_K, len_K, logp_K, tokens_KL = state
        # Candidates: live beams extend by every token; a finished beam only by `fill`, at no cost.
        extend_KV = logp_K[:, None] + jax.nn.log_softmax(logits_KV, axis=-1)
        stay_KV = jnp.where(vocab[None, :] == fill, logp_K[:, None], -jnp.inf)
        cand_logp_KV = jnp.where(done_K[:, None], stay_KV, extend_KV)
        cand_len_K = jnp.where(done_K, len_K, len_K + 1)
        cand_score_KV = cand_logp_KV / (cand_len_K.astype(jnp.float32) ** alpha)[:, None]
        _, flat = lax.top_k(cand_score_KV.reshape(-1), K)
        parent, token = flat // V, (flat % V).astype(jnp.int32)
        logp_K = cand_logp_KV.reshape(-1)[flat]
        len_K = cand_len_K[parent]
        tokens_KL = tokens_KL[parent].at[:, t_1[0]].set(token)
        was_done = done_K[parent]
        done_K = was_done | (token == end_token) if end_token is not None else was_done
        c_K = jax.tree.map(lambda a: a[parent], c_K)
        new_c_K, new_logits_KV = step_K(p, c_K, token)
        keep = lambda n, o: jnp.where(lax.expand_dims(was_done, range(1, jnp.ndim(o))), o, n)  # noqa: E731
        c_K = jax.tree.map(keep, new_c_K, c_K)
        logits_KV = keep(new_logits_KV.astype(jnp.float32), logits_KV[parent])
        return (c_K, logits_KV, done_K, len_K, logp_K, tokens_KL), None

    state = (
        jax.tree.map(lambda a: jnp.broadcast_to(a, (K,) + jnp.shape(a)), carry),
        jnp.broadcast_to(logits_V.astype(jnp.float32), (K, V)),
        jnp.zeros((K,), bool),
        jnp.zeros((K,), jnp.int32),
        jnp.full((K,), -jnp.inf, jnp.float32).at[0].set(0.0),  # one live beam to start from
        jnp.full((K, max_len), fill, jnp.int32),
    )
    (_, _, _, len_K, logp_K, tokens_KL), _ = run(cell, params, state, jnp.arange(max_len, dtype=jnp.int32)[:, None])
    scores = logp_K / len_K.astype(jnp.float32) ** alpha
    order = jnp.argsort(-scores, stable=True)
    return BeamResult(tokens=tokens_KL[order], lengths=len_K[order], log_probs=logp_K[order], scores=scores[order])
