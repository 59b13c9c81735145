"""Masked sequence cross-entropy and metrics against numpy; dtypes; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import losses
from rnn_jax.errors import UserError

B, T, V = 3, 7, 5


def _data(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    logits = 3.0 * jax.random.normal(k1, (B, T, V))
    targets = jax.random.randint(k2, (B, T), 0, V)
    return logits, targets, jnp.array([7, 4, 1])


def _numpy_ce(logits, targets, lengths):
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    per_seq = [-sum(logp[b, t, targets[b, t]] for t in range(lengths[b])) for b in range(len(lengths))]
    return np.mean(per_seq), np.sum(per_seq) / np.sum(lengths)


def test_sum_over_steps_and_per_token_mean_match_numpy():
    logits, targets, lengths = _data()
    got = losses.sequence_cross_entropy(logits, targets, lengths=lengths)
    want_sum, want_mean = _numpy_ce(logits, np.asarray(targets), np.asarray(lengths))
    np.testing.assert_allclose(got.sum_over_steps, want_sum, rtol=1e-5)
    np.testing.assert_allclose(got.per_token_mean, want_mean, rtol=1e-5)
    assert float(got.n_tokens) == 12.0
    by_mask = losses.sequence_cross_entropy(logits, targets, mask=losses.length_mask(lengths, T))
    np.testing.assert_allclose(by_mask.sum_over_steps, got.sum_over_steps, rtol=1e-6)
    # Unmasked, one sequence (with its batch axis): the lecture's L = sum_t L_t.
    one = losses.sequence_cross_entropy(logits[:1], targets[:1])
    np.testing.assert_allclose(
        one.sum_over_steps, jnp.sum(losses.token_cross_entropy(logits[0], targets[0])), rtol=1e-6
    )


def test_padding_cannot_leak_into_loss_or_gradient():
    logits, targets, lengths = _data(1)
    poisoned = logits.at[1, 5].set(jnp.nan).at[2, 3].set(jnp.inf)  # past lengths 4 and 1
    loss, grad = jax.value_and_grad(
        lambda z: losses.sequence_cross_entropy(z, targets, lengths=lengths).per_token_mean
    )(poisoned)
    np.testing.assert_allclose(loss, losses.sequence_cross_entropy(logits, targets, lengths=lengths).per_token_mean)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad[1, 4:]).max()) == 0.0
    empty = losses.sequence_cross_entropy(logits, targets, lengths=jnp.zeros((B,), jnp.int32))
    assert float(empty.per_token_mean) == 0.0 and float(empty.n_tokens) == 0.0


def test_low_precision_logits_give_a_float32_loss():
    logits, targets, lengths = _data(2)
    low = losses.sequence_cross_entropy(logits.astype(jnp.bfloat16), targets, lengths=lengths)
    assert low.per_token_mean.dtype == jnp.float32 and low.sum_over_steps.dtype == jnp.float32
    ref = losses.sequence_cross_entropy(logits.astype(jnp.bfloat16).astype(jnp.float32), targets, lengths=lengths)
    np.testing.assert_allclose(low.per_token_mean, ref.per_token_mean, rtol=1e-6)


def test_accuracy_and_exact_match_respect_the_mask():
    targets = jnp.array([[1, 2, 3, 0], [1, 2, 0, 0], [4, 4, 4, 4]])
    lengths = jnp.array([3, 2, 4])
    pred = jnp.array([[1, 2, 3, 9], [1, 0, 0, 0], [4, 4, 4, 4]])  # row 0 wrong only in padding
    np.testing.assert_allclose(losses.token_accuracy(pred, targets, lengths=lengths), 8 / 9, rtol=1e-6)
    np.testing.assert_allclose(losses.exact_match(pred, targets, lengths=lengths), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(losses.exact_match(pred, targets), 1 / 3, rtol=1e-6)
    logits = jax.nn.one_hot(pred, 10) * 5.0  # argmax of logits gives the same predictions
    np.testing.assert_allclose(losses.token_accuracy(logits, targets, lengths=lengths), 8 / 9, rtol=1e-6)


def test_bad_input_is_named():
    logits, targets, lengths = _data()
    with pytest.raises(ValueError, match="mask or lengths"):
        losses.sequence_cross_entropy(logits, targets, mask=losses.length_mask(lengths, T), lengths=lengths)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        losses.sequence_cross_entropy(logits, targets[:, :6])
    with pytest.raises(TypeError, match="integer"):
        losses.sequence_cross_entropy(logits, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match="batch shape"):
        losses.sequence_cross_entropy(logits, targets, lengths=lengths[:2])


# ---------------------------------------------------------------------------------------------------
# Classification (many to one) against numpy float64
# ---------------------------------------------------------------------------------------------------

NB, C = 7, 5


def _classes(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return 3.0 * jax.random.normal(k1, (NB, C)), jax.random.randint(k2, (NB,), 0, C)


def _numpy_classification(logits, labels, weights):
    z = np.asarray(logits, np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    nll = np.array([-logp[b, labels[b]] for b in range(len(labels))])
    right = (z.argmax(-1) == np.asarray(labels)).astype(np.float64)
    return (w * nll).sum() / w.sum(), (w * right).sum() / w.sum()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("jit", [False, True])
def test_classification_loss_and_accuracy_match_numpy(weighted, jit):
    logits, labels = _classes()
    weights = jnp.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 0.0]) if weighted else None
    loss_fn, acc_fn = losses.classification_cross_entropy, losses.classification_accuracy
    if jit:
        loss_fn, acc_fn = jax.jit(loss_fn), jax.jit(acc_fn)
    want_loss, want_acc = _numpy_classification(logits, np.asarray(labels), weights)
    got = loss_fn(logits, labels, weights=weights)
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want_loss, rtol=1e-6)
    np.testing.assert_allclose(acc_fn(logits, labels, weights=weights), want_acc, rtol=1e-6)
    # Integer predictions give the same accuracy as the logits they come from.
    np.testing.assert_allclose(acc_fn(jnp.argmax(logits, -1), labels, weights=weights), want_acc, rtol=1e-6)


def test_classification_gradient_matches_numpy_and_ignores_zero_weights():
    logits, labels = _classes(1)
    weights = jnp.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0, 0.0])
    poisoned = logits.at[1].set(jnp.nan)  # weight 0: must reach neither the loss nor the gradient
    grad = jax.grad(lambda z: losses.classification_cross_entropy(z, labels, weights=weights))(poisoned)
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    w = np.asarray(weights, np.float64)
    want = (p - np.eye(C)[np.asarray(labels)]) * (w / w.sum())[:, None]
    want[1] = 0.0
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
    low = losses.classification_cross_entropy(logits.astype(jnp.bfloat16), labels)
    assert low.dtype == jnp.float32
    ref = _numpy_classification(logits.astype(jnp.bfloat16).astype(jnp.float32), np.asarray(labels), None)[0]
    np.testing.assert_allclose(low, ref, rtol=1e-6)
    assert float(losses.classification_cross_entropy(logits, labels, weights=jnp.zeros(NB))) == 0.0


def test_classification_refuses_sequences_and_bad_weights():
    logits, targets, _ = _data()
    with pytest.raises(UserError, match=r"logits \[B, C\].*got \(3, 7, 5\) and \(3, 7\).*sequence_cross_entropy"):
        losses.classification_cross_entropy(logits, targets)
    c_logits, labels = _classes()
    with pytest.raises(UserError, match=r"weights must have the labels' shape \(7,\), got \(6,\)"):
        losses.classification_cross_entropy(c_logits, labels, weights=jnp.ones(6))
    with pytest.raises(TypeError, match="labels must be integer class ids, got dtype float32"):
        losses.classification_accuracy(c_logits, labels.astype(jnp.float32))


def test_sequence_reductions_refuse_classifier_shaped_input():
    """[B, C] logits with [B] labels would be one sequence of T = B steps: refused, with both fixes named."""
    logits, labels = _classes()
    for fn in (losses.sequence_cross_entropy, losses.exact_match):
        with pytest.raises(UserError, match=rf"{fn.__name__} needs a batch of sequences.*got targets of shape \(7,\)"):
            fn(logits, labels)
    with pytest.raises(UserError, match=r"use classification_cross_entropy.*add a batch axis \(logits\[None\]"):
        losses.sequence_cross_entropy(logits, labels)
    # One sequence with its batch axis: the lecture's sum over steps.
    one = losses.sequence_cross_entropy(logits[None], labels[None])
    np.testing.assert_allclose(one.sum_over_steps, jnp.sum(losses.token_cross_entropy(logits, labels)), rtol=1e-6)
    # The per-position functions do not depend on which axis is time: a classifier's numbers.
    want_loss, want_acc = _numpy_classification(logits, np.asarray(labels), None)
    np.testing.assert_allclose(jnp.mean(losses.token_cross_entropy(logits, labels)), want_loss, rtol=1e-6)
    np.testing.assert_allclose(losses.token_accuracy(logits, labels), want_acc, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Token ids outside [0, V)
# ---------------------------------------------------------------------------------------------------


def test_token_ids_outside_the_vocabulary_are_named_eagerly():
    logits, targets, lengths = _data()
    bad = targets.at[1, 2].set(V)
    fix = rf"outside the vocabulary \[0, {V}\): encode targets with the vocabulary of size {V}"
    for call in (
        lambda: losses.sequence_cross_entropy(logits, bad, lengths=lengths),
        lambda: losses.token_cross_entropy(logits, bad),
        lambda: jax.grad(lambda z: losses.sequence_cross_entropy(z, bad).per_token_mean)(logits),
    ):
        with pytest.raises(UserError, match=rf"targets hold the token id {V} at index \(1, 2\) \(1 id\(s\).*{fix}"):
            call()
    with pytest.raises(UserError, match=r"labels hold the token id -1 at index \(3,\)"):
        c_logits, labels = _classes()
        losses.classification_cross_entropy(c_logits, labels.at[3].set(-1))
    # Padded steps may hold any value (here -1 and V past each length): they are not checked.
    padded = jnp.where(losses.length_mask(lengths, T), targets, jnp.array([[-1], [V], [-1]]))
    np.testing.assert_allclose(
        losses.sequence_cross_entropy(logits, padded, lengths=lengths).per_token_mean,
        losses.sequence_cross_entropy(logits, targets, lengths=lengths).per_token_mean,
    )
    with pytest.raises(UserError, match=r"prime tokens hold the token id 9 at index \(1,\).*vocabulary \[0, 4\)"):
        losses.check_token_ids([0, 9, 2], 4, "prime tokens")
    with pytest.raises(TypeError, match="prime tokens must be integer token ids, got dtype float"):
        losses.check_token_ids(np.array([0.0, 1.0]), 4, "prime tokens")
    ids = np.array([0, 3])
    assert losses.check_token_ids(ids, 4, "ids") is ids


def test_under_jit_token_ids_are_not_checked():
    """Tracers have no values: the documented behaviour is no error (the check belongs before the jit)."""
    logits, targets, _ = _data()
    bad = targets.at[0, 0].set(V + 3)
    loss = jax.jit(lambda t: losses.sequence_cross_entropy(logits, t).per_token_mean)(bad)
    assert loss.shape == ()
    assert jax.jit(lambda t: losses.check_token_ids(t, V, "targets"))(bad).shape == bad.shape
