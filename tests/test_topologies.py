"""The lecture's topologies against Python loops and per-sequence runs; attention masking; scheduled sampling."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R
from rnn_jax import decode, losses, topologies
from rnn_jax.errors import UserError
from rnn_jax.scan import IMPLS
from rnn_jax.topologies.seq2seq import _layers

B, T, I, H = 3, 7, 4, 5
S, V_SRC, V_TGT, E = 6, 7, 9, 3


def _close(a, b, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **({"rtol": 1e-5, "atol": 1e-6} | kw)), a, b)


def test_one_to_one_and_one_to_many_equal_python_loops():
    params = R.vanilla_init(jax.random.key(1), I, H, I)  # O = I so that outputs can be fed back
    x_BI = jax.random.normal(jax.random.key(2), (B, I))
    h0 = jnp.full((B, H), 0.2)
    c, y = topologies.one_to_one(R.vanilla_cell, params, h0, x_BI)
    c_ref, y_ref = jax.vmap(R.vanilla_cell, (None, 0, 0))(params, h0, x_BI)
    _close((c, y), (c_ref, y_ref))

    feedback = jnp.tanh
    c, ys = topologies.one_to_many(R.vanilla_cell, params, h0, x_BI, steps=4, feedback=feedback)
    assert ys.shape == (B, 4, I)
    for b in range(B):
        h, x = h0[b], x_BI[b]
        for t in range(4):
            h, y = R.vanilla_cell(params, h, x)
            _close(ys[b, t], y)
            x = feedback(y)
        _close(c[b], h)


def test_many_to_one_with_lengths_equals_each_sequence_alone():
    """The summary of a padded batch equals the cell run by hand over each sequence's real steps alone."""
    params = R.lstm_init(jax.random.key(3), I, H)
    xs = jax.random.normal(jax.random.key(4), (B, T, I))
    lengths = jnp.array([7, 3, 1])
    summarise = jax.jit(topologies.many_to_one, static_argnums=0, static_argnames="pool")
    carry, last = summarise(R.lstm_cell, params, None, xs, lengths=lengths, pool="last")
    _, mean = summarise(R.lstm_cell, params, None, xs, lengths=lengths, pool="mean")
    assert last.shape == mean.shape == (B, H)
    for b in range(B):
        c, ys = R.lstm_cell.init_carry(params), []
        for t in range(int(lengths[b])):  # the unpadded sequence, alone
            c, y = R.lstm_cell(params, c, xs[b, t])
            ys.append(y)
        _close(last[b], ys[-1])
        _close(last[b], c.h)  # "last" is the final hidden state
        _close(carry.c[b], c.c)
        _close(mean[b], jnp.mean(jnp.stack(ys), axis=0))
    _, empty = summarise(R.lstm_cell, params, None, xs, lengths=jnp.array([0, 2, 0]), pool="mean")
    assert float(jnp.abs(empty[0]).max()) == 0.0 and float(jnp.abs(empty[2]).max()) == 0.0


def test_run_is_the_synchronised_many_to_many():
    params = R.gru_init(jax.random.key(5), I, H)
    xs = jax.random.normal(jax.random.key(6), (B, T, I))
    _, ys = R.run(R.gru_cell, params, None, xs, lengths=jnp.array([7, 2, 5]))
    assert ys.shape == (B, T, H) and float(jnp.abs(ys[1, 2:]).max()) == 0.0


# ---------------------------------------------------------------------------------------------------
# Encoder-decoder
# ---------------------------------------------------------------------------------------------------

SRC_LEN = jnp.array([6, 2, 4])
apply = jax.jit(topologies.encoder_decoder_apply)  # one module-level jit: tests of one configuration share a compile


def _init(seed=0, **kw):
    """An encoder-decoder of the test sizes; ``kw`` goes to ``encoder_decoder_init``."""
    return topologies.encoder_decoder_init(
        jax.random.key(seed), src_vocab=V_SRC, tgt_vocab=V_TGT, embed_size=E, hidden_size=H, **kw
    )


def _seq2seq(attention, cell="lstm", bidirectional=True, seed=0):
    params = _init(seed, cell=cell, bidirectional=bidirectional, attention=attention)
    k1, k2 = jax.random.split(jax.random.key(seed + 100))
    src = jax.random.randint(k1, (B, S), 0, V_SRC)
    tgt_in = jax.random.randint(k2, (B, T), 0, V_TGT)
    return params, src, tgt_in


@pytest.mark.parametrize(
    ("attention", "cell", "bidirectional"),
    [pytest.param("bahdanau", "gru", True, marks=pytest.mark.slow), ("luong", "lstm", False)],
)
def test_attention_is_masked_by_source_length_and_padding_is_ignored(attention, cell, bidirectional):
    params, src, tgt_in = _seq2seq(attention, cell, bidirectional)
    out = apply(params, src, SRC_LEN, tgt_in)
    assert out.logits.shape == (B, T, V_TGT) and out.attention.shape == (B, T, S)
    for b in range(B):
        n = int(SRC_LEN[b])
        assert float(jnp.abs(out.attention[b, :, n:]).max(initial=0.0)) == 0.0  # exactly zero
        np.testing.assert_allclose(out.attention[b, :, :n].sum(-1), 1.0, rtol=1e-5)
    # Whatever sits in the padding changes nothing.
    scrambled = jnp.where(losses.length_mask(SRC_LEN, S), src, (src + 3) % V_SRC)
    _close(apply(params, scrambled, SRC_LEN, tgt_in), out)


def test_attention_gradient_is_finite_and_ignores_padding():
    """Masking with -inf must not put NaN into the gradient, and padded memory gets none of it."""
    params, _, _ = _seq2seq("bahdanau", "gru", True)
    memory = jax.random.normal(jax.random.key(9), (S, 2 * H))
    query = jax.random.normal(jax.random.key(10), (H,))

    def f(att, m):
        context, weights = topologies.attend(att, query, m, 2)
        return jnp.sum(context**2) + weights[0]

    g_att, g_mem = jax.jit(jax.grad(f, argnums=(0, 1)))(params.attention, memory)  # jit: one compile, not per op
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(g_att))
    assert float(jnp.abs(g_mem[2:]).max()) == 0.0 and float(jnp.abs(g_mem[:2]).max()) > 0


@pytest.mark.slow
def test_teacher_forcing_ratio_and_scheduled_sampling():
    params, src, tgt_in = _seq2seq("luong", "lstm", False)
    forced = apply(params, src, SRC_LEN, tgt_in)
    assert forced.inputs.tolist() == tgt_in.tolist()
    _close(apply(params, src, SRC_LEN, tgt_in, teacher_forcing=1.0, key=jax.random.key(0)), forced)
    # Ratio 0: after the start token the decoder reads its own argmax from the step before.
    free = apply(params, src, SRC_LEN, tgt_in, teacher_forcing=0.0, key=jax.random.key(0))
    assert free.inputs[:, 0].tolist() == tgt_in[:, 0].tolist()
    assert free.inputs[:, 1:].tolist() == jnp.argmax(free.logits[:, :-1], -1).tolist()
    # Ratio 0.5: a coin per step, from the key, inside the scan.
    mixed = apply(params, src, SRC_LEN, tgt_in, teacher_forcing=0.5, key=jax.random.key(3))
    from_target = mixed.inputs[:, 1:] == tgt_in[:, 1:]
    from_model = mixed.inputs[:, 1:] == jnp.argmax(mixed.logits[:, :-1], -1)
    assert bool(jnp.all(from_target | from_model))
    assert bool(jnp.any(from_target & ~from_model)) and bool(jnp.any(from_model & ~from_target))
    again = apply(params, src, SRC_LEN, tgt_in, teacher_forcing=0.5, key=jax.random.key(3))
    assert again.inputs.tolist() == mixed.inputs.tolist()
    # scheduled="sample": the fed-back token is drawn from the model's softmax, not its argmax.
    sampling = jax.jit(topologies.encoder_decoder_apply, static_argnames="scheduled")
    drawn = sampling(params, src, SRC_LEN, tgt_in, teacher_forcing=0.0, key=jax.random.key(4), scheduled="sample")
    assert drawn.inputs[:, 0].tolist() == tgt_in[:, 0].tolist()
    assert bool(jnp.any(drawn.inputs[:, 1:] != jnp.argmax(drawn.logits[:, :-1], -1)))


@pytest.mark.slow
def test_decoder_step_fn_agrees_with_teacher_forcing_and_decodes():
    """Greedy decoding through decoder_step_fn, re-read with teacher forcing, predicts the same tokens."""
    params, src, _ = _seq2seq("bahdanau", "gru", True)
    bos, eos, max_len = 1, 2, 5

    def decode_one(src_S, n):
        ctx, state, logits = topologies.decoder_start(params, src_S, n, bos)
        g = decode.greedy(topologies.decoder_step_fn, ctx, state, logits, max_len=max_len)
        b = decode.beam_search(
            topologies.decoder_step_fn, ctx, state, logits, beam_width=3, max_len=max_len, end_token=eos
        )
        return g, b

    g, b = jax.jit(jax.vmap(decode_one))(src, SRC_LEN)
    assert b.tokens.shape == (B, 3, max_len)
    tgt_in = jnp.concatenate([jnp.full((B, 1), bos), g.tokens[:, :-1]], axis=1)
    out = apply(params, src, SRC_LEN, tgt_in)
    assert jnp.argmax(out.logits, -1).tolist() == g.tokens.tolist()
    logp = jnp.take_along_axis(jax.nn.log_softmax(out.logits), g.tokens[..., None], -1)[..., 0].sum(-1)
    _close(logp, g.log_prob, rtol=1e-4)


def _reference_seq2seq_one(params, src_S, n_src, tgt_T):
    """One example of a (stacked) encoder-decoder by hand: Python loops over steps and layers."""
    cell = topologies.cell_of(_layers(params.decoder)[0])
    hid = topologies.hidden_of

    def over(layer, xs):  # one direction of one layer over the real steps, in order
        c, out = cell.init_carry(layer), []
        for x in xs:
            c, y = cell(layer, c, x)
            out.append(y)
        return c, out

    xs = [params.src_embed[src_S[s]] for s in range(n_src)]
    for layer in _layers(params.encoder):
        if isinstance(layer, topologies.Bidirectional):
            c_fw, fw = over(layer.fw, xs)
            c_bw, bw = over(layer.bw, xs[::-1])
            xs = [jnp.concatenate([f, b]) for f, b in zip(fw, bw[::-1], strict=True)]
            summary = jnp.concatenate([hid(c_fw), hid(c_bw)])
        else:
            c, xs = over(layer, xs)
            summary = hid(c)
    memory = jnp.stack(xs)  # [n_src, M]: the real steps only

    def attend(q):
        att = params.attention
        if isinstance(att, topologies.BahdanauParams):
            scores = jnp.tanh(memory @ att.W_m + (q @ att.W_q)[None, :]) @ att.v
        else:
            scores = memory @ (q @ att.W)
        w = jax.nn.softmax(scores)
        return w @ memory, w

    layers, bridges = _layers(params.decoder), _layers(params.bridge)
    carries = [
        topologies.carry_from_hidden(cell, l, jnp.tanh(summary @ b.W + b.b))
        for l, b in zip(layers, bridges, strict=True)
    ]
    feed = jnp.zeros((H,))
    logits, weights = [], []
    for t in range(len(tgt_T)):
        e = params.tgt_embed[tgt_T[t]]
        if params.attention is None:
            x = e
        elif isinstance(params.attention, topologies.BahdanauParams):
            ctx, w = attend(hid(carries[-1]))
            x = jnp.concatenate([e, ctx])
        else:
            x = jnp.concatenate([e, feed])
        for i, layer in enumerate(layers):
            carries[i], x = cell(layer, carries[i], x)
        if params.attention is None:
            out, w = x @ params.out.W + params.out.b, None
        elif isinstance(params.attention, topologies.BahdanauParams):
            out = jnp.concatenate([x, ctx]) @ params.out.W + params.out.b
        else:
            ctx, w = attend(x)
            comb = params.attention.combine
            feed = jnp.tanh(jnp.concatenate([ctx, x]) @ comb.W + comb.b)
            out = feed @ params.out.W + params.out.b
        logits.append(out)
        weights.append(w)
    return jnp.stack(logits), None if params.attention is None else jnp.stack(weights)


@pytest.mark.slow
def test_without_attention_the_weights_are_none_and_the_logits_a_hand_written_loop():
    params = _init(5, cell="gru", bidirectional=True, attention=None, encoder_layers=2, decoder_layers=2)
    _, src, tgt_in = _seq2seq("luong")
    out = apply(params, src, SRC_LEN, tgt_in)
    assert out.attention is None and out.logits.shape == (B, T, V_TGT)
    for b in range(B):
        logits, weights = _reference_seq2seq_one(params, src[b], int(SRC_LEN[b]), tgt_in[b])
        assert weights is None
        _close(out.logits[b], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("attention", "cell", "bidirectional"), [("luong", "lstm", True), ("bahdanau", "gru", False)])
def test_stacked_encoder_decoder_equals_a_hand_written_loop(attention, cell, bidirectional):
    kw = dict(cell=cell, bidirectional=bidirectional, attention=attention)
    params = _init(7, encoder_layers=2, decoder_layers=3, **kw)
    assert type(params.encoder) is tuple and len(params.encoder) == 2
    assert type(params.decoder) is tuple and len(params.decoder) == 3 and len(params.bridge) == 3
    _, src, tgt_in = _seq2seq(attention, cell, bidirectional)
    out = apply(params, src, SRC_LEN, tgt_in)
    for b in range(B):
        n = int(SRC_LEN[b])
        logits, weights = _reference_seq2seq_one(params, src[b], n, tgt_in[b])
        _close(out.logits[b], logits, rtol=1e-4, atol=1e-5)
        _close(out.attention[b, :, :n], weights, rtol=1e-4, atol=1e-6)
    # Greedy decoding through the stacked decoder_step_fn agrees with teacher forcing on its own tokens (row 0
    # of one teacher-forced batch); beam search reorders the stacked carries with its beams: each beam's
    # log-probability is the one teacher forcing gives its tokens (rows 1-3).
    ctx, state, first = topologies.decoder_start(params, src[0], SRC_LEN[0], 1)
    g = decode.greedy(topologies.decoder_step_fn, ctx, state, first, max_len=4)
    beams = decode.beam_search(topologies.decoder_step_fn, ctx, state, first, beam_width=3, max_len=4, end_token=None)
    tokens = jnp.concatenate([g.tokens[None], beams.tokens])
    tgt = jnp.concatenate([jnp.ones((4, 1), int), tokens[:, :-1]], 1)
    forced = apply(params, jnp.repeat(src[:1], 4, 0), jnp.repeat(SRC_LEN[:1], 4), tgt)
    assert jnp.argmax(forced.logits[0], -1).tolist() == g.tokens.tolist()
    logp = jnp.take_along_axis(jax.nn.log_softmax(forced.logits[1:]), beams.tokens[..., None], -1)[..., 0].sum(-1)
    _close(logp, beams.log_probs, rtol=1e-4)


def test_one_layer_is_a_stack_of_one_with_the_bottom_layers_of_deeper_models():
    """Every depth gives tuples; the bottom layers' init does not depend on the depth."""
    one = _init(3, bidirectional=True)
    assert type(one.encoder) is tuple and len(one.encoder) == 1 and isinstance(one.encoder[0], topologies.Bidirectional)
    assert type(one.bridge) is tuple and isinstance(one.bridge[0], topologies.Dense)
    assert type(one.decoder) is tuple and isinstance(one.decoder[0], R.LSTMParams)
    two = _init(3, bidirectional=True, encoder_layers=2, decoder_layers=2)
    _close(two.encoder[0], one.encoder[0])
    bottom = lambda p: (p.decoder[0], p.bridge[0], p.out, p.src_embed)  # noqa: E731
    _close(bottom(two), bottom(one))
    # Hand-built params may give one layer without the tuple: the same model.
    _, src, tgt_in = _seq2seq("luong", "lstm", True)
    bare = one._replace(encoder=one.encoder[0], bridge=one.bridge[0], decoder=one.decoder[0])
    _close(apply(bare, src, SRC_LEN, tgt_in).logits, apply(one, src, SRC_LEN, tgt_in).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_dropout_draws_from_the_key_and_is_off_without_it():
    params = _init(5, attention="luong", encoder_layers=2, decoder_layers=2)
    _, src, tgt_in = _seq2seq("luong")
    plain = apply(params, src, SRC_LEN, tgt_in)
    dropped = jax.jit(topologies.encoder_decoder_apply, static_argnames="dropout")
    a = dropped(params, src, SRC_LEN, tgt_in, dropout=0.3, key=jax.random.key(1))
    assert float(jnp.abs(a.logits - plain.logits).max()) > 1e-3
    _close(dropped(params, src, SRC_LEN, tgt_in, dropout=0.3, key=jax.random.key(1)), a)
    assert (
        float(
            jnp.abs(dropped(params, src, SRC_LEN, tgt_in, dropout=0.3, key=jax.random.key(2)).logits - a.logits).max()
        )
        > 1e-3
    )
    _close(dropped(params, src, SRC_LEN, tgt_in, dropout=0.0, key=jax.random.key(1)), plain)

    def loss(p):
        out = topologies.encoder_decoder_apply(p, src, SRC_LEN, tgt_in, dropout=0.3, key=jax.random.key(1))
        return jnp.mean(out.logits**2)

    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(params)))
    with pytest.raises(UserError, match="pass a PRNG key"):
        topologies.encoder_decoder_apply(params, src, SRC_LEN, tgt_in, dropout=0.3)
    with pytest.raises(UserError, match=r"dropout must lie in \[0, 1\)"):
        topologies.encoder_decoder_apply(params, src, SRC_LEN, tgt_in, dropout=1.0, key=jax.random.key(1))


# ---------------------------------------------------------------------------------------------------
# Glimpses
# ---------------------------------------------------------------------------------------------------


def test_image_patches_are_row_major_blocks():
    img = jnp.arange(16.0).reshape(4, 4)
    p = topologies.image_patches(img, 2)
    assert p.shape == (4, 4)
    assert p[1].tolist() == [2.0, 3.0, 6.0, 7.0] and p[2].tolist() == [8.0, 9.0, 12.0, 13.0]


def test_glimpses_look_somewhere_each_step_and_decide_at_the_end():
    params = topologies.glimpse_init(
        jax.random.key(7), n_parts=4, part_size=16, hidden_size=H, n_classes=10, cell="gru"
    )
    parts = topologies.image_patches(jax.random.normal(jax.random.key(8), (B, 8, 8)), 4)
    glimpse = jax.jit(topologies.glimpse_apply, static_argnames=("steps", "hard"))
    soft = glimpse(params, parts, steps=3)
    out = glimpse(params, parts, steps=3, hard=True)
    for o in (soft, out):
        assert o.logits.shape == (B, 10) and o.looks.shape == (B, 3, 4)
        np.testing.assert_allclose(o.looks.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out.looks.max(-1), 1.0, rtol=1e-6)  # hard looks are one-hot
    # The location network learns: the gradient reaches `where` through the soft and the hard looks.
    labels = jnp.array([1, 4, 7])

    def loss(p):
        logits = topologies.glimpse_apply(p, parts, steps=3, hard=True).logits
        return losses.sequence_cross_entropy(logits[:, None], labels[:, None]).per_token_mean

    g = jax.jit(jax.grad(loss))(params)
    assert float(jnp.abs(g.where.W).max()) > 0


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


def test_attention_none_and_None_build_the_same_model():
    a, b = _init(3, attention="none"), _init(3, attention=None)
    assert a.attention is None and "none" in topologies.ATTENTIONS
    assert jax.tree.structure(a) == jax.tree.structure(b)
    _close(a, b, rtol=0, atol=0)


def test_bad_input_is_named():
    params, src, tgt_in = _seq2seq(None, "vanilla", False)
    with pytest.raises(UserError, match="'dot'"):
        topologies.encoder_decoder_init(
            jax.random.key(0), src_vocab=3, tgt_vocab=3, embed_size=2, hidden_size=2, attention="dot"
        )
    with pytest.raises(UserError, match="'rnn'"):
        topologies.encoder_decoder_init(
            jax.random.key(0), src_vocab=3, tgt_vocab=3, embed_size=2, hidden_size=2, cell="rnn"
        )
    with pytest.raises(UserError, match="source length of 0"):
        topologies.encoder_decoder_apply(params, src, jnp.array([3, 0, 2]), tgt_in)
    with pytest.raises(UserError, match="PRNG key"):
        topologies.encoder_decoder_apply(params, src, SRC_LEN, tgt_in, teacher_forcing=0.5)
    with pytest.raises(UserError, match="1.5"):
        topologies.encoder_decoder_apply(params, src, SRC_LEN, tgt_in, teacher_forcing=1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        topologies.encoder_decoder_apply(params, src, SRC_LEN[:2], tgt_in)
    with pytest.raises(UserError, match="steps >= 1, got 0"):
        topologies.one_to_many(R.gru_cell, R.gru_init(jax.random.key(0), I, H), None, jnp.zeros((I,)), steps=0)
    with pytest.raises(UserError, match="'max'"):
        topologies.many_to_one(R.gru_cell, R.gru_init(jax.random.key(0), I, H), None, jnp.zeros((T, I)), pool="max")
    with pytest.raises(UserError, match="3x3"):
        topologies.image_patches(jnp.zeros((8, 8)), 3)


# ---------------------------------------------------------------------------------------------------
# run's options (impl, unroll) through the topologies
# ---------------------------------------------------------------------------------------------------


def _values_and_grads(fn, params):
    """``fn(params)``'s outputs and the gradient of the mean square of its float outputs: one jit, one compile."""

    def loss(p):
        out = fn(p)
        return sum(jnp.mean(jnp.square(a)) for a in jax.tree.leaves(out) if jnp.issubdtype(a.dtype, jnp.floating)), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    return out, grads


def _seq2seq_fn(src, tgt_in, **options):
    return lambda p: topologies.encoder_decoder_apply(p, src, SRC_LEN, tgt_in, **options)


@pytest.fixture(scope="module")
def option_cases():
    """Each topology as (params, make(**options) -> fn) with its default values and gradients, computed once."""
    params = _init(11, attention="luong", bidirectional=True, encoder_layers=2, decoder_layers=2)
    _, src, tgt_in = _seq2seq("luong")
    xs = jax.random.normal(jax.random.key(12), (B, T, I))
    gru = R.gru_init(jax.random.key(13), I, H)
    vanilla = R.vanilla_init(jax.random.key(14), I, H, I)
    glimpse = topologies.glimpse_init(jax.random.key(15), n_parts=4, part_size=4, hidden_size=H, n_classes=3)
    parts = jax.random.normal(jax.random.key(16), (B, 4, 4))
    cases = [
        (params, lambda **o: _seq2seq_fn(src, tgt_in, **o)),
        (gru, lambda **o: lambda p: topologies.many_to_one(R.gru_cell, p, None, xs, lengths=jnp.array([7, 3, 1]), **o)),
        (vanilla, lambda **o: lambda p: topologies.one_to_many(R.vanilla_cell, p, None, xs[:, 0], steps=4, **o)),
        (glimpse, lambda **o: lambda p: topologies.glimpse_apply(p, parts, steps=3, **o)),
    ]
    return [(p, make, _values_and_grads(make(), p)) for p, make in cases]


# impl="scan" with an unroll of 2 (the plain scan where the default takes the vanilla custom_jvp path on CPU),
# and impl="auto" with an unroll of 3 that does not divide T = 7 (a remainder block).
@pytest.mark.slow
@pytest.mark.parametrize("options", [{"impl": "scan", "unroll": 2}, {"impl": "auto", "unroll": 3}])
def test_run_options_give_the_default_values_and_gradients(options, option_cases):
    """Each topology with ``impl``/``unroll`` equals the default (float32 tolerance), values and gradients."""
    for p, make, default in option_cases:
        _close(_values_and_grads(make(**options), p), default)
        with pytest.raises(UserError, match="impl must be one of"):  # the option reaches run
            jax.eval_shape(make(impl="fast"), p)


def test_step_impl_runs_plain_function_steps_on_the_scan():
    assert [topologies.step_impl(i) for i in IMPLS] == ["auto"] + ["scan"] * (len(IMPLS) - 1)


def _has_pallas(fn, *args) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


def _summary(xs, p, *, impl):
    return topologies.many_to_one(R.lstm_cell, p, None, xs, lengths=SRC_LEN, impl=impl)


@pytest.mark.slow
def test_pallas_runs_the_encoder_and_many_to_one_and_the_plain_steps_on_the_scan():
    """``impl="pallas"`` (interpret mode on CPU): the encoder layers and many_to_one run the kernel and equal
    the scan in values and gradients; the attention decoder, one_to_many and glimpses run on the scan."""
    params = _init(17, cell="gru", attention="bahdanau", bidirectional=True)
    _, src, tgt_in = _seq2seq("bahdanau")
    pallas, scan = (_seq2seq_fn(src, tgt_in, impl=i) for i in ("pallas", "scan"))
    assert _has_pallas(pallas, params) and not _has_pallas(scan, params)
    _close(_values_and_grads(pallas, params), _values_and_grads(scan, params), rtol=1e-5, atol=1e-5)

    lstm = R.lstm_init(jax.random.key(18), I, H)
    xs = jax.random.normal(jax.random.key(19), (B, T, I))
    summary = {i: partial(_summary, xs, impl=i) for i in ("pallas", "scan")}
    assert _has_pallas(summary["pallas"], lstm)
    _close(_values_and_grads(summary["pallas"], lstm), _values_and_grads(summary["scan"], lstm), rtol=1e-5, atol=1e-5)
    vanilla = R.vanilla_init(jax.random.key(20), I, H, I)
    fed = topologies.one_to_many(R.vanilla_cell, vanilla, None, xs[:, 0], steps=3, impl="pallas")
    _close(fed, topologies.one_to_many(R.vanilla_cell, vanilla, None, xs[:, 0], steps=3, impl="scan"))
