"""Masked sequence losses and metrics.

Shapes: logits ``[..., T, V]``, integer targets ``[..., T]``, and which steps are real either as a boolean
``mask [..., T]`` or as ``lengths [...]`` (steps ``t < length`` are real). ``...`` is any number of batch
dimensions (none for one sequence). Logits may come in any float dtype; the loss is computed in float32.

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
import optax
from jax import lax

Array = jax.Array

__all__ = [
    "SequenceLoss",
    "length_mask",
    "token_cross_entropy",
    "sequence_cross_entropy",
    "token_accuracy",
    "exact_match",
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


def _resolve_mask(shape_T, mask, lengths) -> Array:
    """The ``[..., T]`` float32 weights of the real steps, from ``mask``, ``lengths`` or neither (all real)."""
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both")
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != shape_T[:-1]:
            raise ValueError(f"lengths must have the batch shape {shape_T[:-1]}, got {lengths.shape}")
        mask = length_mask(lengths, shape_T[-1])
    if mask is None:
        return jnp.ones(shape_T, jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != shape_T:
        raise ValueError(f"mask must have the targets' shape {shape_T}, got {mask.shape}")
    return mask.astype(jnp.float32)


def _check_targets(logits, targets):
    if jnp.ndim(logits) < 2 or jnp.shape(logits)[:-1] != jnp.shape(targets):
        raise ValueError(
            f"logits must be [..., T, V] and targets [..., T] with the same leading shape, "
            f"got logits {jnp.shape(logits)} and targets {jnp.shape(targets)}"
        )
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise TypeError(f"targets must be integer token ids, got dtype {jnp.result_type(targets)}")


def token_cross_entropy(logits, targets) -> Array:
    """``L_t = logsumexp(y_t) - y_t[target_t]`` at every step, ``[..., T]`` float32, unmasked."""
    _check_targets(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits, jnp.float32), targets)


def sequence_cross_entropy(logits, targets, *, mask=None, lengths=None) -> SequenceLoss:
    """Masked cross-entropy of a batch of sequences: the lecture's sum over steps and the per-token mean.

    Args:
      logits: ``[..., T, V]`` in any float dtype (computed in float32).
      targets: ``[..., T]`` integer ids (any value at padded steps: they are masked out).
      mask: optional ``[..., T]`` booleans, True at real steps.
      lengths: optional ``[...]`` integers (instead of ``mask``): steps ``t < length`` are real.

    Returns:
      :class:`SequenceLoss` ``(sum_over_steps, per_token_mean, n_tokens)``.
    """
    _check_targets(logits, targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    # Padded steps are replaced before the softmax, not just weighted by 0 after it: a NaN or inf there
    # must leak neither into the loss nor into its gradient (0 * NaN is NaN).
    real = (weights > 0)[..., None]
    losses = token_cross_entropy(jnp.where(real, jnp.asarray(logits, jnp.float32), 0.0), targets)
    total = jnp.sum(jnp.where(weights > 0, losses * weights, 0.0))
    n_tokens = jnp.sum(weights)
    n_sequences = max(1, losses.size // losses.shape[-1]) if losses.ndim > 1 else 1
    return SequenceLoss(
        sum_over_steps=total / n_sequences,
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
        raise ValueError(f"predictions {p.shape} and targets {jnp.shape(targets)} must have the same shape")
    return p


def token_accuracy(predictions_or_logits, targets, *, mask=None, lengths=None) -> Array:
    """Fraction of real steps predicted right (float32): ``sum m [pred = target] / sum m`` (0 if no step)."""
    pred = _predictions(predictions_or_logits, targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    correct = jnp.sum(jnp.where(pred == targets, weights, 0.0))
    return correct / jnp.maximum(jnp.sum(weights), 1.0)


def exact_match(predictions_or_logits, targets, *, mask=None, lengths=None) -> Array:
    """Fraction of sequences whose every real step is right (float32); padded steps are ignored.

    To compare decoded sequences of their own lengths, include the end token in the target's real steps:
    a prediction that stops early or late then differs at that step.
    """
    pred = _predictions(predictions_or_logits, targets)
    weights = _resolve_mask(jnp.shape(targets), mask, lengths)
    all_right = jnp.all((pred == targets) | (weights == 0), axis=-1)
    return jnp.mean(all_right.astype(jnp.float32))
