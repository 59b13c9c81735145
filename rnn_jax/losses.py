"""Masked sequence losses and metrics, and the classification loss of a many-to-one model.

Sequences: logits ``[B..., T, V]``, integer targets ``[B..., T]``, and which steps are real either as a
boolean ``mask [B..., T]`` or as ``lengths [B...]`` (steps ``t < length`` are real). ``B...`` is one or more
batch dimensions. Logits may come in any float dtype; the loss is computed in float32.

Which axis is time is read from the rank, so the rule is: **the sequence reductions**
(:func:`sequence_cross_entropy`, :func:`exact_match`) **need at least one batch axis**: 3-D or more logits,
2-D or more targets. A single sequence is given as ``logits[None], targets[None]``, and 2-D logits with 1-D
targets are refused, because a classifier's ``[B, C]`` logits and ``[B]`` labels have exactly that shape and
would otherwise be read as one sequence of ``T = B`` steps (its ``sum_over_steps`` summed over the examples).
Classification has its own loss, :func:`classification_cross_entropy` (``[B, C]`` logits, ``[B]`` labels),
and :func:`classification_accuracy`. The per-position functions (:func:`token_cross_entropy`,
:func:`token_accuracy`) take any leading shape, since their result does not depend on which axis is time.
Inside a ``vmap`` over examples a sequence is 2-D: call :func:`token_cross_entropy` there and reduce, or
vmap over batches of one.

Token ids. Targets at real steps must lie in ``[0, V)``; :func:`check_token_ids` raises a
:class:`~rnn_jax.errors.UserError` naming the first id out of range where the values are concrete (eager
calls, ``jax.grad`` without ``jit``). Under ``jit`` or ``vmap`` the ids are tracers and cannot be checked:
an id out of range then gives the loss ``logsumexp(y)`` or NaN (the label's logit is read as a fill value),
and an embedding lookup clamps it to the nearest row, silently. Check ids where they enter, before the
jitted step: the applications call :func:`check_token_ids` on their encoded data and primes.

The lecture's loss for one sequence is the **sum over steps** of the per-step cross-entropy,
``L = sum_t L_t`` with ``L_t = -log softmax(y_t)[target_t]``. :func:`sequence_cross_entropy` returns it
averaged over the sequences of the batch (``sum_over_steps``), together with the **per-token mean**
(``per_token_mean``: total loss over all real tokens / number of real tokens), which does not grow with the
sequence length and is what perplexity is made of (``ppl = exp(per_token_mean)``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from rnn_jax.errors import UserError

Array = jax.Array

__all__ = [
    "SequenceLoss",
    "length_mask",
    "check_token_ids",
    "token_cross_entropy",
    "sequence_cross_entropy",
    "token_accuracy",
    "exact_match",
    "classification_cross_entropy",
    "classification_accuracy",
]


class SequenceLoss(NamedTuple):
    """Both reductions of a masked sequence cross-entropy (float32 scalars) and the token count.

    Attributes:
      sum_over_steps: the lecture's ``L = sum_t L_t`` per sequence, averaged over the batch
        (``sum_{b,t} m_bt L_bt / B``).
      per_token_mean: ``sum_{b,t} m_bt L_bt / sum_{b,t} m_bt`` (0 when there is no real token).
      n_tokens: ``sum_{b,t} m_bt``, the number of real tokens (float32, ready for weighted averages).
    """

    sum_over_steps: Array
    per_token_mean: Array
    n_tokens: Array


def length_mask(lengths, T: int) -> Array:
    """``mask[..., t] = t < lengths[...]``: a ``[..., T]`` boolean mask of the real steps."""
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    return lax.broadcast_in_dim(jnp.arange(T), lengths.shape + (T,), (lengths.ndim,)) < lengths[..., None]


def _traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def check_token_ids(ids, vocab_size: int, what: str, *, mask=None):
    """Raise :class:`~rnn_jax.errors.UserError` if a token id lies outside ``[0, vocab_size)``; return ``ids``.

    Args:
      ids: integer token ids of any shape (a NumPy or JAX array, or a nested list).
      vocab_size: ``V``, the size of the vocabulary the ids index (an embedding's rows, the logits' last axis).
      what: what the ids are, for the message (e.g. ``"targets"``, ``"prime tokens"``).
      mask: optional booleans of ``ids``' shape: only positions where it is True are checked (padding may
        hold any value).

    The check reads the values, so it runs only where they are concrete; under ``jit`` or ``vmap`` (tracers)
    it returns ``ids`` unchecked: call it before the jitted function, where the data enters.
    """
    if _traced(ids, mask):
        return ids
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be integer token ids, got dtype {a.dtype}; encode them with the vocabulary")
    bad = (a < 0) | (a >= vocab_size)
    if mask is not None:
        bad &= np.broadcast_to(np.asarray(mask, bool), a.shape)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise UserError(
            f"{what} hold the token id {int(a[first])} at index {first} ({int(bad.sum())} id(s) out of range), "
            f"outside the vocabulary [0, {vocab_size}): encode {what} with the vocabulary of size {vocab_size} "
            "that the model was built with (and mask padded steps)"
        )
    return ids


def _resolve_mask(shape_T, mask, lengths) -> Array:
    """The ``[..., T]`` float32 weights of the real steps, from ``mask``, ``lengths`` or neither (all real)."""
    if mask is not None and lengths is not None:
        raise UserError("give mask or lengths, not both")
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != shape_T[:-1]:
            raise UserError(f"lengths must have the batch shape {shape_T[:-1]}, got {lengths.shape}")
        mask = length_mask(lengths, shape_T[-1])
    if mask is None:
        return jnp.ones(shape_T, jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != shape_T:
        raise UserError(f"mask must have the targets' shape {shape_T}, got {mask.shape}")
    return mask.astype(jnp.float32)


def _check_targets(logits, targets):
    if jnp.ndim(logits) < 2 or jnp.shape(logits)[:-1] != jnp.shape(targets):
        raise UserError(
            f"logits must be [..., T, V] and targets [..., T] with the same leading shape, "
            f"got logits {jnp.shape(logits)} and targets {jnp.shape(targets)}"
        )
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {jnp.result_type(targets)}")


def _check_batched(fn: str, targets):
    """The sequence reductions read the last target axis as time: they need a batch axis before it."""
    if jnp.ndim(targets) < 2:
        raise UserError(
            f"{fn} needs a batch of sequences, targets [B..., T] (logits [B..., T, V]), got targets of shape "
            f"{jnp.shape(targets)}: for one label per example (a classifier's [B, C] logits and [B] labels) use "
            "classification_cross_entropy / classification_accuracy; for one sequence add a batch axis "
            "(logits[None], targets[None])"
        )


def token_cross_entropy(logits, targets) -> Array:
    """``L_t = logsumexp(y_t) - y_t[target_t]`` at every position, ``[...]`` float32, unmasked.

    Per position, so any leading shape works (``[B, T, V]``, one sequence ``[T, V]``, or ``[B, C]``);
    concrete ``targets`` must lie in ``[0, V)`` (:func:`check_token_ids`).
    """
    _check_targets(logits, targets)
    check_token_ids(targets, jnp.shape(logits)[-1], "targets")
    return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits, jnp.float32), targets)


def sequence_cross_entropy(logits, targets, *, mask=None, lengths=None) -> SequenceLoss:
    """Masked cross-entropy of a batch of sequences: the lecture's sum over steps and the per-token mean.

    Args:
      logits: ``[B..., T, V]`` in any float dtype (computed in float32); at least one batch axis (see the
        module docstring: ``[B, C]`` classifier logits are refused, a single sequence is ``logits[None]``).
      targets: ``[B..., T]`` integer ids in ``[0, V)`` at real steps (any value at padded steps).
      mask: optional ``[B..., T]`` booleans, True at real steps.
      lengths: optional ``[B...]`` integers (instead of ``mask``): steps ``t < length`` are real.

    Returns:
      :class:`SequenceLoss` ``(sum_over_steps, per_token_mean, n_tokens)``.
    """
    _check_targets(logits, targets)
    _check_batched("sequence_cross_entropy", targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    real = weights > 0
    check_token_ids(targets, jnp.shape(logits)[-1], "targets", mask=real)
    # Padded steps are replaced before the softmax, not just weighted by 0 after it: a NaN or inf there
    # must leak neither into the loss nor into its gradient (0 * NaN is NaN). Their targets become 0 so
    # that any padding value is a valid label.
    safe = jnp.where(real[..., None], jnp.asarray(logits, jnp.float32), 0.0)
    losses = optax.softmax_cross_entropy_with_integer_labels(safe, jnp.where(real, targets, 0))
    total = jnp.sum(jnp.where(real, losses * weights, 0.0))
    n_tokens = jnp.sum(weights)
    n_sequences = losses.size // losses.shape[-1] if losses.size else 1
    return SequenceLoss(
        sum_over_steps=total / max(n_sequences, 1),
        per_token_mean=total / jnp.maximum(n_tokens, 1.0),
        n_tokens=n_tokens,
    )


def _predictions(predictions_or_logits, targets) -> Array:
    """Integer predictions ``[..., T]``: logits ``[..., T, V]`` are reduced with argmax."""
    p = jnp.asarray(predictions_or_logits)
    if jnp.issubdtype(p.dtype, jnp.inexact):
        _check_targets(p, targets)
        return jnp.argmax(p, axis=-1)
    if p.shape != jnp.shape(targets):
        raise UserError(f"predictions {p.shape} and targets {jnp.shape(targets)} must have the same shape")
    return p


def token_accuracy(predictions_or_logits, targets, *, mask=None, lengths=None) -> Array:
    """Fraction of real steps predicted right (float32): ``sum m [pred = target] / sum m`` (0 if no step).

    Per position, so any leading shape works; for one label per example :func:`classification_accuracy`
    says so by its name.
    """
    pred = _predictions(predictions_or_logits, targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    correct = jnp.sum(jnp.where(pred == targets, weights, 0.0))
    return correct / jnp.maximum(jnp.sum(weights), 1.0)


def exact_match(predictions_or_logits, targets, *, mask=None, lengths=None) -> Array:
    """Fraction of sequences whose every real step is right (float32); padded steps are ignored.

    ``targets`` is ``[B..., T]`` with at least one batch axis (as for :func:`sequence_cross_entropy`).
    To compare decoded sequences of their own lengths, include the end token in the target's real steps:
    a prediction that stops early or late then differs at that step.
    """
    _check_batched("exact_match", targets)
    pred = _predictions(predictions_or_logits, targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    all_right = jnp.all((pred == targets) | (weights == 0), axis=-1)
    return jnp.mean(all_right.astype(jnp.float32))


# ---------------------------------------------------------------------------------------------------
# Classification (many to one)
# ---------------------------------------------------------------------------------------------------


def _check_classes(logits_or_predictions, labels, weights, fn: str) -> Array | None:
    """Shapes ``[B, C]`` (or ``[B]`` predictions) and ``[B]``; the ``[B]`` float32 weights (``None``: equal)."""
    shape, B = jnp.shape(logits_or_predictions), jnp.shape(labels)
    if jnp.issubdtype(jnp.result_type(logits_or_predictions), jnp.inexact):
        right = len(shape) == 2 and shape[:1] == B
    else:
        right = shape == B
    if len(B) != 1 or not right:
        raise UserError(
            f"{fn} takes logits [B, C] (or integer predictions [B]) and labels [B], got {shape} and {B}: for "
            "sequences use sequence_cross_entropy / token_accuracy"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {jnp.result_type(labels)}")
    if weights is None:
        return None
    if jnp.shape(weights) != B:
        raise UserError(f"weights must have the labels' shape {B}, got {jnp.shape(weights)}")
    return jnp.asarray(weights, jnp.float32)


def _weighted_mean(values_B, weights_B) -> Array:
    """``sum_b w_b v_b / sum_b w_b`` (0 when the weights sum to 0); the plain mean without weights."""
    if weights_B is None:
        return jnp.mean(values_B)
    return jnp.sum(weights_B * values_B) / jnp.where(jnp.sum(weights_B) > 0, jnp.sum(weights_B), 1.0)


def classification_cross_entropy(logits_BC, labels_B, *, weights=None) -> Array:
    """Mean cross-entropy of a batch of classifications (a many-to-one model's loss), float32.

    ``L = sum_b w_b (logsumexp(y_b) - y_b[label_b]) / sum_b w_b``, the log-softmax in float32 whatever
    the logits' dtype; ``w_b = 1`` without ``weights``; 0 when the weights sum to 0.

    Args:
      logits_BC: ``[B, C]`` in any float dtype.
      labels_B: ``[B]`` integer class ids in ``[0, C)`` (checked where concrete: :func:`check_token_ids`).
      weights: optional ``[B]`` non-negative weights (e.g. 0 for padding examples of a fixed-size batch).
    """
    w = _check_classes(logits_BC, labels_B, weights, "classification_cross_entropy")
    check_token_ids(labels_B, jnp.shape(logits_BC)[-1], "labels", mask=None if w is None else w > 0)
    z, labels = jnp.asarray(logits_BC, jnp.float32), labels_B
    if w is not None:  # examples of weight 0 are replaced before the softmax: a NaN there reaches no gradient
        z, labels = jnp.where((w > 0)[:, None], z, 0.0), jnp.where(w > 0, labels_B, 0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), labels[:, None], axis=-1)[:, 0]
    return _weighted_mean(nll, w)


def classification_accuracy(logits_or_predictions, labels_B, *, weights=None) -> Array:
    """Fraction of examples classified right (float32): ``sum_b w_b [argmax y_b = label_b] / sum_b w_b``.

    Takes ``[B, C]`` logits (reduced with argmax) or ``[B]`` integer predictions, ``[B]`` labels and
    optional ``[B]`` weights; 0 when the weights sum to 0.
    """
    w = _check_classes(logits_or_predictions, labels_B, weights, "classification_accuracy")
    p = jnp.asarray(logits_or_predictions)
    pred = jnp.argmax(p, axis=-1) if jnp.issubdtype(p.dtype, jnp.inexact) else p
    return _weighted_mean((pred == labels_B).astype(jnp.float32), w)
