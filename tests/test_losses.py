"""Masked sequence cross-entropy and metrics against numpy; dtypes; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import losses as Ls

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
    got = Ls.sequence_cross_entropy(logits, targets, lengths=lengths)
    want_sum, want_mean = _numpy_ce(logits, np.asarray(targets), np.asarray(lengths))
    np.testing.assert_allclose(got.sum_over_steps, want_sum, rtol=1e-5)
    np.testing.assert_allclose(got.per_token_mean, want_mean, rtol=1e-5)
    assert float(got.n_tokens) == 12.0
    by_mask = Ls.sequence_cross_entropy(logits, targets, mask=Ls.length_mask(lengths, T))
    np.testing.assert_allclose(by_mask.sum_over_steps, got.sum_over_steps, rtol=1e-6)
    # Unmasked, one sequence: the lecture's L = sum_t L_t.
    one = Ls.sequence_cross_entropy(logits[0], targets[0])
    np.testing.assert_allclose(one.sum_over_steps, jnp.sum(Ls.token_cross_entropy(logits[0], targets[0])), rtol=1e-6)


def test_padding_cannot_leak_into_loss_or_gradient():
    logits, targets, lengths = _data(1)
    poisoned = logits.at[1, 5].set(jnp.nan).at[2, 3].set(jnp.inf)  # past lengths 4 and 1
    loss, grad = jax.value_and_grad(lambda z: Ls.sequence_cross_entropy(z, targets, lengths=lengths).per_token_mean)(
        poisoned
    )
    np.testing.assert_allclose(loss, Ls.sequence_cross_entropy(logits, targets, lengths=lengths).per_token_mean)
    assert np.all(np.isfinite(grad)) and float(jnp.abs(grad[1, 4:]).max()) == 0.0
    empty = Ls.sequence_cross_entropy(logits, targets, lengths=jnp.zeros((B,), jnp.int32))
    assert float(empty.per_token_mean) == 0.0 and float(empty.n_tokens) == 0.0


def test_low_precision_logits_give_a_float32_loss():
    logits, targets, lengths = _data(2)
    low = Ls.sequence_cross_entropy(logits.astype(jnp.bfloat16), targets, lengths=lengths)
    assert low.per_token_mean.dtype == jnp.float32 and low.sum_over_steps.dtype == jnp.float32
    ref = Ls.sequence_cross_entropy(logits.astype(jnp.bfloat16).astype(jnp.float32), targets, lengths=lengths)
    np.testing.assert_allclose(low.per_token_mean, ref.per_token_mean, rtol=1e-6)


def test_accuracy_and_exact_match_respect_the_mask():
    targets = jnp.array([[1, 2, 3, 0], [1, 2, 0, 0], [4, 4, 4, 4]])
    lengths = jnp.array([3, 2, 4])
    pred = jnp.array([[1, 2, 3, 9], [1, 0, 0, 0], [4, 4, 4, 4]])  # row 0 wrong only in padding
    np.testing.assert_allclose(Ls.token_accuracy(pred, targets, lengths=lengths), 8 / 9, rtol=1e-6)
    np.testing.assert_allclose(Ls.exact_match(pred, targets, lengths=lengths), 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(Ls.exact_match(pred, targets), 1 / 3, rtol=1e-6)
    logits = jax.nn.one_hot(pred, 10) * 5.0  # argmax of logits gives the same predictions
    np.testing.assert_allclose(Ls.token_accuracy(logits, targets, lengths=lengths), 8 / 9, rtol=1e-6)


def test_bad_input_is_named():
    logits, targets, lengths = _data()
    with pytest.raises(ValueError, match="mask or lengths"):
        Ls.sequence_cross_entropy(logits, targets, mask=Ls.length_mask(lengths, T), lengths=lengths)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        Ls.sequence_cross_entropy(logits, targets[:, :6])
    with pytest.raises(TypeError, match="integer"):
        Ls.sequence_cross_entropy(logits, targets.astype(jnp.float32))
    with pytest.raises(ValueError, match="batch shape"):
        Ls.sequence_cross_entropy(logits, targets, lengths=lengths[:2])
