"""Decoding against Python loops and exhaustive enumeration; sampling filters; bad arguments."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax as R
from rnn_jax import decode, losses
from rnn_jax.errors import UserError

V, L = 4, 5  # vocabulary, steps of the table model

# Jitted once per module, so that tests sharing a configuration share a compile (step_fn is static).
greedy = jax.jit(decode.greedy, static_argnums=0, static_argnames=("max_len", "end_token"))
# temperature and top_p are traced
sample = jax.jit(decode.sample, static_argnums=0, static_argnames=("max_len", "top_k", "end_token"))
beam = jax.jit(decode.beam_search, static_argnums=0, static_argnames=("beam_width", "max_len", "end_token"))


# A hand-built model whose next logits depend on the step and the token just fed: carry = step count.
def table_step(table_LVV, t, token):
    return t + 1, table_LVV[jnp.minimum(t, table_LVV.shape[0] - 1), token]


def _table(seed, scale=2.0, n_vocab=V, n_steps=L):
    table = scale * jax.random.normal(jax.random.key(seed), (n_steps + 1, n_vocab, n_vocab))
    return table[1:], table[0, 0]  # (step table, logits of the first token)


def _log_prob(table, logits0, seq):
    """log p(seq) under the table model, by hand."""
    total, logits, t = 0.0, np.asarray(logits0, np.float64), 0
    for tok in seq:
        total += logits[tok] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        logits = np.asarray(table[min(t, table.shape[0] - 1), tok], np.float64)
        t += 1
    return total


def _brute_force(table, logits0, max_len, end, alpha=0.0):
    """The best (score, seq) over every complete sequence: ending at `end`, or reaching max_len without it."""
    n_vocab = logits0.shape[0]
    best = (-np.inf, None)
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(n_vocab), repeat=n):
            if end in seq[:-1] or (n < max_len and seq[-1] != end):
                continue
            score = _log_prob(table, logits0, seq) / n**alpha
            best = max(best, (score, seq))
    return best


def _greedy_loop(table, logits0, max_len, end):
    seq, logits, t = [], np.asarray(logits0), 0
    while len(seq) < max_len:
        tok = int(np.argmax(logits))
        seq.append(tok)
        if tok == end:
            break
        logits, t = np.asarray(table[min(t, table.shape[0] - 1), tok]), t + 1
    return seq


# ---------------------------------------------------------------------------------------------------
# Greedy, sampling, priming
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", [None, 0])
def test_greedy_equals_python_loop(end):
    table, logits0 = _table(1)
    out = greedy(table_step, table, jnp.int32(0), logits0, max_len=L, end_token=end)
    want = _greedy_loop(table, logits0, L, end)
    n = len(want)
    assert out.tokens.dtype == jnp.int32 and out.tokens.shape == (L,)
    assert out.tokens[:n].tolist() == want and int(out.length) == n
    assert out.tokens[n:].tolist() == [0 if end is None else end] * (L - n)
    np.testing.assert_allclose(out.log_prob, _log_prob(table, logits0, want), rtol=1e-5)
    assert int(out.carry) == n  # the carry has seen every generated token and no more


def test_end_token_freezes_each_sequence_under_vmap_and_jit():
    """A batch with per-sequence done flags: each row equals decoding it alone."""
    table, _ = _table(2)
    logits_BV = table[0, :3]  # three different starting distributions
    keys = jax.random.split(jax.random.key(7), 3)
    fn = jax.jit(jax.vmap(lambda l, k: decode.sample(table_step, table, jnp.int32(0), l, k, max_len=L, end_token=0)))
    out = fn(logits_BV, keys)
    for b in range(3):
        one = sample(table_step, table, jnp.int32(0), logits_BV[b], keys[b], max_len=L, end_token=0)
        assert out.tokens[b].tolist() == one.tokens.tolist() and int(out.length[b]) == int(one.length)
        np.testing.assert_allclose(out.log_prob[b], one.log_prob, rtol=1e-6)
        seq = one.tokens[: int(one.length)].tolist()
        assert 0 not in seq[:-1] and (seq[-1] == 0 or len(seq) == L)
        np.testing.assert_allclose(one.log_prob, _log_prob(table, logits_BV[b], seq), rtol=1e-5)


@pytest.mark.slow
def test_sampling_filters_that_reduce_to_greedy():
    table, logits0 = _table(3)
    want = greedy(table_step, table, jnp.int32(0), logits0, max_len=L).tokens.tolist()
    for seed in range(3):
        k = jax.random.key(seed)
        # Temperature and p are traced here: a traced 0 must be greedy, as is the Python 0 that greedy() uses.
        for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 0.0, "top_p": 1.0}, {"temperature": 2.0, "top_k": 1}):
            got = sample(table_step, table, jnp.int32(0), logits0, k, max_len=L, **kw).tokens.tolist()
            assert got == want, kw


def test_fixed_key_reproducible_and_keys_differ():
    table, logits0 = _table(4, scale=0.5)  # flat enough that different keys give different samples

    def draw(k):
        return sample(table_step, table, jnp.int32(0), logits0, k, max_len=L, temperature=1.5, top_p=0.95).tokens

    a, b = draw(jax.random.key(11)), draw(jax.random.key(11))
    assert a.tolist() == b.tolist()
    others = {tuple(draw(jax.random.key(s)).tolist()) for s in range(12, 20)}
    assert len(others) > 1


@pytest.mark.slow
def test_first_token_frequencies_match_the_filtered_distribution():
    """Temperature, then top-k, then top-p: the empirical frequencies match the filtered softmax."""
    logits = jnp.array([2.0, 1.0, 0.5, -1.0])
    keys = jax.random.split(jax.random.key(5), 4000)

    def freq(top_k=None, top_p=None):
        def first(k):
            return sample(
                table_step, _table(0)[0], jnp.int32(0), logits, k, max_len=1, temperature=0.7, top_k=top_k, top_p=top_p
            )

        return np.bincount(np.asarray(jax.vmap(first)(keys).tokens[:, 0]), minlength=4) / len(keys)

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    z = np.asarray(logits) / 0.7
    np.testing.assert_allclose(freq(top_p=1.0), softmax(z), atol=0.03)  # temperature alone
    p2 = softmax(z[:2])
    np.testing.assert_allclose(freq(top_k=2), np.r_[p2, 0, 0], atol=0.03)
    # Nucleus 0.8 of softmax(z) = [0.74, 0.18, 0.09, 0.01]: tokens 0 and 1 (0.74 < 0.8 needs the second).
    assert softmax(z)[0] < 0.8 < softmax(z)[:2].sum()
    np.testing.assert_allclose(freq(top_p=0.8), np.r_[p2, 0, 0], atol=0.03)


@pytest.mark.slow
def test_prime_equals_python_loop_and_composes_with_an_lstm_carry():
    """prime feeds a prefix through a real cell stack (LSTMState carry) exactly like a Python loop."""
    H = 5
    k = jax.random.split(jax.random.key(8), 2)
    params = {"lstm": R.lstm_init(k[0], V, H), "W": jax.random.normal(k[1], (H, V))}

    def step(p, c, tok):
        c, h = R.lstm_cell(p["lstm"], c, jax.nn.one_hot(tok, V))
        return c, h @ p["W"]

    c0 = R.LSTMState(jnp.full((H,), 0.1), jnp.zeros((H,)))
    prefix = jnp.array([3, 1, 2])
    carry, logits = decode.prime(step, params, c0, prefix)
    c = c0
    for tok in prefix:
        c, want = step(params, c, tok)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.c, c.c, rtol=1e-5, atol=1e-6)
    # Beam width 1 equals greedy for this pytree carry too, with and without a length penalty.
    g = greedy(step, params, carry, logits, max_len=6, end_token=2)
    for alpha in (0.0, 0.7):
        b = beam(step, params, carry, logits, beam_width=1, max_len=6, end_token=2, length_penalty=alpha)
        assert b.tokens[0].tolist() == g.tokens.tolist() and int(b.lengths[0]) == int(g.length)
        np.testing.assert_allclose(b.log_probs[0], g.log_prob, rtol=1e-5)


@pytest.mark.slow
def test_the_lecture_hello_example():
    """Lecture 10's char-level example: a vanilla RNN on "hello" (vocabulary h, e, l, o) learns the next
    character and, primed with "h", samples "hello" back."""
    vocab = "helo"
    ids = jnp.asarray(decode.check_prime("hello", vocab))
    params = R.vanilla_init(jax.random.key(0), len(vocab), 8, len(vocab))
    optimizer = optax.adam(0.05)

    def loss(p):  # the lecture's loss: the sum over steps of the per-step cross-entropy
        _, logits = R.run(R.vanilla_cell, p, None, jax.nn.one_hot(ids[:-1], len(vocab)))
        return losses.sequence_cross_entropy(logits[None], ids[None, 1:]).sum_over_steps, logits

    @jax.jit
    def train(p):
        def update(state, _):
            p, opt = state
            (value, _), g = jax.value_and_grad(loss, has_aux=True)(p)
            updates, opt = optimizer.update(g, opt, p)
            return (optax.apply_updates(p, updates), opt), value

        (p, _), curve = jax.lax.scan(update, (p, optimizer.init(p)), length=300)
        return p, curve

    params, curve = train(params)
    final, logits = loss(params)
    assert float(final) < 0.05 * float(curve[0])
    assert jnp.argmax(logits, -1).tolist() == ids[1:].tolist()  # "hell" -> "ello": the l's are told apart
    step = decode.one_hot_step(R.vanilla_cell, len(vocab))
    carry, first = decode.prime(step, params, jnp.zeros((8,)), decode.check_prime("h", vocab))
    out = greedy(step, params, carry, first, max_len=4)
    assert "h" + "".join(vocab[i] for i in out.tokens.tolist()) == "hello"


# ---------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", [None, 0])
def test_beam_width_one_equals_greedy(end):
    table, logits0 = _table(9)
    g = greedy(table_step, table, jnp.int32(0), logits0, max_len=L, end_token=end)
    b = beam(table_step, table, jnp.int32(0), logits0, beam_width=1, max_len=L, end_token=end)
    assert b.tokens.shape == (1, L)
    assert b.tokens[0].tolist() == g.tokens.tolist() and int(b.lengths[0]) == int(g.length)
    np.testing.assert_allclose(b.log_probs[0], g.log_prob, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_full_width_beam_equals_exhaustive_search_on_two_steps(alpha):
    """With K = V and max_len = 2 every two-step prefix is a candidate, so beam search is exact."""
    for seed in range(4):
        table, logits0 = _table(20 + seed, scale=1.5)
        best_score, best_seq = _brute_force(table, logits0, 2, end=0, alpha=alpha)
        b = beam(table_step, table, jnp.int32(0), logits0, beam_width=V, max_len=2, end_token=0, length_penalty=alpha)
        n = int(b.lengths[0])
        assert tuple(b.tokens[0, :n].tolist()) == best_seq
        np.testing.assert_allclose(b.scores[0], best_score, rtol=1e-5)


def test_beam_finds_the_exhaustive_best_where_greedy_is_trapped():
    """Greedy takes the likelier first token into a flat continuation; the beam keeps the runner-up."""
    n_vocab, end, max_len = 3, 0, 4
    logits0 = jnp.log(jnp.array([0.05, 0.5, 0.45]))
    flat, sure = jnp.log(jnp.full((3,), 1 / 3)), jnp.log(jnp.array([0.96, 0.02, 0.02]))
    row = {0: sure, 1: flat, 2: sure}  # after token 1 the model is unsure; after 2 it ends at once
    table = jnp.stack([jnp.stack([row[v] for v in range(n_vocab)])] * max_len)
    best_score, best_seq = _brute_force(table, logits0, max_len, end)
    g = greedy(table_step, table, jnp.int32(0), logits0, max_len=max_len, end_token=end)
    b = beam(table_step, table, jnp.int32(0), logits0, beam_width=n_vocab, max_len=max_len, end_token=end)
    assert best_seq == (2, 0)
    assert tuple(b.tokens[0, : int(b.lengths[0])].tolist()) == best_seq
    np.testing.assert_allclose(b.log_probs[0], best_score, rtol=1e-5)
    assert float(g.log_prob) < best_score - 0.5


def test_beam_results_are_consistent_and_not_worse_than_greedy():
    """Every returned beam's log-prob is the model's; scores are sorted; finished beams are padded."""
    for seed in range(3):
        table, logits0 = _table(30 + seed)
        alpha = 0.6
        b = beam(table_step, table, jnp.int32(0), logits0, beam_width=3, max_len=L, end_token=0, length_penalty=alpha)
        assert b.tokens.shape == (3, L) and b.lengths.dtype == jnp.int32
        assert np.all(np.diff(np.asarray(b.scores)) <= 0)
        for k in range(3):
            n = int(b.lengths[k])
            seq = b.tokens[k, :n].tolist()
            assert 0 not in seq[:-1] and (seq[-1] == 0 or n == L) and b.tokens[k, n:].tolist() == [0] * (L - n)
            np.testing.assert_allclose(b.log_probs[k], _log_prob(table, logits0, seq), rtol=1e-5)
            np.testing.assert_allclose(b.scores[k], b.log_probs[k] / n**alpha, rtol=1e-6)
        plain = beam(table_step, table, jnp.int32(0), logits0, beam_width=3, max_len=L, end_token=0)
        g = greedy(table_step, table, jnp.int32(0), logits0, max_len=L, end_token=0)
        assert float(plain.log_probs[0]) >= float(g.log_prob) - 1e-5


def test_beam_search_jits_and_vmaps():
    table, _ = _table(40)
    fn = jax.jit(
        jax.vmap(lambda l: decode.beam_search(table_step, table, jnp.int32(0), l, beam_width=2, max_len=L, end_token=0))
    )
    out = fn(table[0, :3])
    assert out.tokens.shape == (3, 2, L) and out.scores.shape == (3, 2)
    one = beam(table_step, table, jnp.int32(0), table[0, 1], beam_width=2, max_len=L, end_token=0)
    assert out.tokens[1].tolist() == one.tokens.tolist()


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.5}, "-0.5"),
        ({"top_k": 0}, "top-k"),
        ({"top_k": V + 1}, "5"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "1.5"),
        ({"max_len": 0}, "max length"),
    ],
)
def test_bad_sampling_arguments_name_the_value(kwargs, message):
    table, logits0 = _table(0)
    kw = {"max_len": L} | kwargs
    with pytest.raises(UserError, match=message):
        decode.sample(table_step, table, jnp.int32(0), logits0, jax.random.key(0), **kw)


@pytest.mark.parametrize("width", [0, V + 1])
def test_bad_beam_width_names_the_value(width):
    table, logits0 = _table(0)
    with pytest.raises(UserError, match=f"beam width .* got {width}"):
        decode.beam_search(table_step, table, jnp.int32(0), logits0, beam_width=width, max_len=L, end_token=0)


def test_prime_outside_the_vocabulary_names_the_symbols():
    assert decode.check_prime("hel", "helo").tolist() == [0, 1, 2]
    assert decode.check_prime([3, 0], "helo").tolist() == [3, 0]
    with pytest.raises(UserError, match=r"\['x', 'z'\]"):
        decode.check_prime("hexz", "helo")
    with pytest.raises(UserError, match=r"\[7\]"):
        decode.check_prime(np.array([1, 7]), {"h": 0, "e": 1})
    with pytest.raises(UserError, match="empty"):
        decode.check_prime("", "helo")


def test_prime_token_ids_outside_the_logits_vocabulary_are_named():
    """prime checks concrete ids against V, the size of the step's logits (an embedding would clamp them)."""
    table, _ = _table(3)
    with pytest.raises(UserError, match=rf"prime tokens hold the token id {V} at index \(2,\).*\[0, {V}\): encode"):
        decode.prime(table_step, table, jnp.int32(0), jnp.array([1, 0, V]))
    with pytest.raises(UserError, match=r"prime tokens hold the token id -2 at index \(0,\)"):
        decode.prime(table_step, table, jnp.int32(0), np.array([-2]))
    # Under jit the ids are tracers: not checked (documented), the call runs.
    _, logits = jax.jit(decode.prime, static_argnums=0)(table_step, table, jnp.int32(0), jnp.array([1, V]))
    assert logits.shape == (V,)
