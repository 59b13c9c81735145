"""The encoder-decoder (seq2seq) model: its params, the encoder, and the decoder step with optional attention.

The model's structure (cell kind, attention, bidirectional encoder, depth) is read from the *types* of its
params, so the functions need no config and the params work with ``jax.grad`` and optax as they are. The
teacher-forced pass over whole batches is :func:`~rnn_jax.topologies.encoder_decoder_apply`; decoding uses
:func:`decoder_start` and :func:`decoder_step_fn` with :mod:`rnn_jax.decode`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import CELLS, Cell, LSTMState, VanillaParams
from rnn_jax.errors import UserError
from rnn_jax.scan import run, vmap_batch
from rnn_jax.stacks import bidirectional, inverted_dropout
from rnn_jax.topologies.attention import ATTENTIONS, BahdanauParams, LuongParams, attend, attention_init
from rnn_jax.topologies.basic import (
    CellParams,
    Dense,
    carry_from_hidden,
    cell_and_params,
    cell_init,
    dense,
    dense_init,
    hidden_of,
)

Array = jax.Array

__all__ = [
    "Bidirectional",
    "Seq2SeqParams",
    "DecoderContext",
    "DecoderState",
    "Seq2SeqOutput",
    "encoder_decoder_init",
    "encode",
    "decoder_start",
    "decoder_step_fn",
]


class Bidirectional(NamedTuple):
    """Params of a bidirectional encoder: one cell reads forward, another backward."""

    fw: Any
    bw: Any


class Seq2SeqParams(NamedTuple):
    """Params of :func:`encoder_decoder_apply`; the structure is read from the leaf types.

    ``encoder`` is a ``tuple`` of layers (a cell's params or :class:`Bidirectional`), bottom first;
    ``decoder`` is a ``tuple`` of cell params, with one ``bridge`` :class:`Dense` per decoder layer;
    ``attention`` is ``None``, :class:`BahdanauParams` or :class:`LuongParams`. Params built by hand may
    give one layer without the tuple: it is read as a stack of one.
    """

    src_embed: Array  # [V_src, E]
    tgt_embed: Array  # [V_tgt, E]
    encoder: Any
    bridge: Any  # Dense [M_summary, H] per decoder layer: encoder summary -> that layer's initial hidden state
    decoder: Any
    attention: Any
    out: Dense  # [H (+ M for Bahdanau), V_tgt]


class DecoderContext(NamedTuple):
    """What every decoder step reads, fixed for one source sequence: the params and the encoder memory."""

    params: Seq2SeqParams
    memory_SM: Array  # encoder outputs, zero past src_len
    src_len: Array  # int32 scalar


class DecoderState(NamedTuple):
    """The decoder carry: the cell's carry (a tuple of them, one per layer, for a stacked decoder) and
    the attentional state fed to the next step (Luong; else a zero-size array)."""

    cell: Any
    feed: Array


class Seq2SeqOutput(NamedTuple):
    """Teacher-forced outputs: ``logits [..., T, V]``, ``attention [..., T, S]`` (``None`` for a model
    without attention: there are no weights to show), and the decoder tokens actually read
    (``inputs [..., T]``: the target or the model's own)."""

    logits: Array
    attention: Array | None
    inputs: Array


def _check_model_sizes(attention, **sizes):
    for name, v in sizes.items():
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")
    if attention is not None and attention not in ATTENTIONS:
        raise UserError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def encoder_decoder_init(
    key,
    *,
    src_vocab: int,
    tgt_vocab: int,
    embed_size: int,
    hidden_size: int,
    cell: str | Cell = "lstm",
    bidirectional: bool = False,
    attention: str | None = "none",
    attention_size: int | None = None,
    encoder_hidden_size: int | None = None,
    encoder_layers: int = 1,
    decoder_layers: int = 1,
    dtype=jnp.float32,
) -> Seq2SeqParams:
    """Params of an encoder-decoder: embeddings, encoder (optionally bidirectional, ``encoder_layers``
    deep), bridges, decoder (``decoder_layers`` deep), attention (one of :data:`ATTENTIONS`: ``"luong"``,
    ``"bahdanau"`` or ``"none"``, which ``None`` means too) and output layer.

    ``M`` (memory features) is ``encoder_hidden_size`` (default ``hidden_size``), doubled when bidirectional.
    A layer above the first reads the ``M`` features of the encoder layer below it (the decoder: the
    ``H`` of the one below); attention reads the top encoder layer and the top decoder layer. Every depth
    gives tuples (one layer: a tuple of one).

    ``cell`` is a built-in's name or any :class:`~rnn_jax.Cell` with an ``init`` whose output ``y`` has
    ``hidden_size`` features and whose carry is its hidden state (one array, or an LSTMState); a user's
    cell's layers come as :class:`CellParams`, which carry the cell, so the apply functions need no config.
    """
    sizes = dict(src_vocab=src_vocab, tgt_vocab=tgt_vocab, embed_size=embed_size, hidden_size=hidden_size)
    _check_model_sizes(attention, **sizes, encoder_layers=encoder_layers, decoder_layers=decoder_layers)
    H, E = hidden_size, embed_size
    He = encoder_hidden_size or H
    M = 2 * He if bidirectional else He
    A = attention_size or H
    # The first layer of each side draws from the same 12 keys whatever the depth (a model's bottom
    # layers do not depend on how many layers sit above them); deeper layers draw from a second stream.
    k = iter(jax.random.split(key, 12))
    deeper = iter(jax.random.split(jax.random.fold_in(key, 1), 2 * (encoder_layers + decoder_layers)))
    embed = jax.nn.initializers.normal(1.0)

    def encoder_layer(keys, in_size):
        if bidirectional:
            fw, bw = (_layer_init(cell, next(keys), in_size, He, dtype) for _ in range(2))
            return Bidirectional(fw, bw)
        return _layer_init(cell, next(keys), in_size, He, dtype)

    encoder = [encoder_layer(k, E)] + [encoder_layer(deeper, M) for _ in range(encoder_layers - 1)]
    dec_in = E + (M if attention == "bahdanau" else H if attention == "luong" else 0)
    att = attention_init(k, attention, H, M, A, dtype)
    src_embed, tgt_embed = embed(next(k), (src_vocab, E), dtype), embed(next(k), (tgt_vocab, E), dtype)
    bridge, decoder = [dense_init(next(k), M, H, dtype)], [_layer_init(cell, next(k), dec_in, H, dtype)]
    out = dense_init(next(k), H + (M if attention == "bahdanau" else 0), tgt_vocab, dtype)
    for _ in range(decoder_layers - 1):
        bridge.append(dense_init(next(deeper), M, H, dtype))
        decoder.append(_layer_init(cell, next(deeper), H, H, dtype))

    return Seq2SeqParams(
        src_embed=src_embed,
        tgt_embed=tgt_embed,
        encoder=tuple(encoder),
        bridge=tuple(bridge),
        decoder=tuple(decoder),
        attention=att,
        out=out,
    )


def _layers(x) -> tuple:
    """A stack's layers, bottom first (a single layer is a stack of one)."""
    return x if type(x) is tuple else (x,)


def encode(
    params: Seq2SeqParams,
    src,
    src_len,
    *,
    dropout: float = 0.0,
    key=None,
    impl: str = "auto",
    unroll: int | None = None,
) -> tuple[Array, Array]:
    """Run the encoder over source sequences ``src [..., S]``: ``(memory [..., S, M], summary [..., M])``.

    ``memory`` holds the top layer's outputs (zero past ``src_len [...]``); ``summary`` is the top layer's
    final hidden state (forward and backward concatenated for a bidirectional encoder), taken at the
    last real step. Between layers, ``dropout`` zeroes features of the layer below's outputs, drawn from
    ``key``: one PRNG key per source (the batch shape ``[...]``), so a source's masks do not depend on the
    batch it sits in. Each layer is one :func:`rnn_jax.run` over the whole batch with ``impl`` and
    ``unroll`` (``impl="pallas"``: one kernel per layer and direction).
    """
    src, src_len = jnp.asarray(src), jnp.asarray(src_len, jnp.int32)
    n_batch = src.ndim - 1
    x = params.src_embed[src]
    layers = _layers(params.encoder)
    keys = None if key is None else vmap_batch(lambda k: jax.random.split(k, len(layers)), n_batch)(key)
    drop = vmap_batch(lambda k, a: inverted_dropout(k, dropout, a), n_batch)
    options = dict(lengths=src_len, impl=impl, unroll=unroll)
    for i, layer in enumerate(layers):
        if i > 0 and keys is not None:
            x = drop(keys[..., i], x)
        if isinstance(layer, Bidirectional):
            cell, fw = cell_and_params(layer.fw)
            (c_fw, c_bw), x = bidirectional(cell, (fw, cell_and_params(layer.bw)[1]), None, x, **options)
            summary = jnp.concatenate([hidden_of(c_fw), hidden_of(c_bw)], axis=-1)
        else:
            c, x = run(*cell_and_params(layer), None, x, **options)
            summary = hidden_of(c)
    return x, summary


def _decoder_cells(p: Seq2SeqParams, carries, x, *, dropout: float, key):
    """The decoder's stack for one step: ``(carries, top output)``; dropout between layers."""
    layers = _layers(p.decoder)
    stacked = type(p.decoder) is tuple
    carries = carries if stacked else (carries,)
    keys = jax.random.split(key, len(layers)) if key is not None else [None] * len(layers)
    new = []
    for i, (layer, c) in enumerate(zip(layers, carries, strict=True)):
        if i > 0:
            x = inverted_dropout(keys[i], dropout, x)
        cell, params = cell_and_params(layer)
        c, x = cell(params, c, x)
        new.append(c)
    return (tuple(new) if stacked else new[0]), x


def _decoder_step(ctx: DecoderContext, state: DecoderState, token, *, dropout: float = 0.0, key=None):
    """One decoder step on one example: ``(state, logits [V], attention weights [S] or None without attention)``.

    With ``dropout`` and a ``key``: dropout between decoder layers and on the features the output layer
    reads (training only; decoding passes no key).
    """
    p = ctx.params
    k_cells, k_out = jax.random.split(key) if key is not None else (None, None)
    e_E = p.tgt_embed[token]
    cells = partial(_decoder_cells, p, dropout=dropout, key=k_cells)
    if isinstance(p.attention, BahdanauParams):
        # Bahdanau: attend with the previous (top) state, read [embedding; context], predict from [state; context].
        top = hidden_of(_layers(state.cell)[-1])
        ctx_M, w_S = attend(p.attention, top, ctx.memory_SM, ctx.src_len)
        c, s_H = cells(state.cell, jnp.concatenate([e_E, ctx_M]))
        features = inverted_dropout(k_out, dropout, jnp.concatenate([s_H, ctx_M]))
        return DecoderState(c, state.feed), dense(p.out, features), w_S
    if isinstance(p.attention, LuongParams):
        # Luong: read [embedding; previous attentional state], attend with the new state, combine.
        c, s_H = cells(state.cell, jnp.concatenate([e_E, state.feed]))
        ctx_M, w_S = attend(p.attention, s_H, ctx.memory_SM, ctx.src_len)
        h_att = jnp.tanh(dense(p.attention.combine, jnp.concatenate([ctx_M, s_H])))
        return DecoderState(c, h_att), dense(p.out, inverted_dropout(k_out, dropout, h_att)), w_S
    c, s_H = cells(state.cell, e_E)
    y = dense(p.out, inverted_dropout(k_out, dropout, s_H))
    return DecoderState(c, state.feed), y, None


def decoder_step_fn(ctx: DecoderContext, state: DecoderState, token) -> tuple[DecoderState, Array]:
    """The decoder as a token step for :mod:`rnn_jax.decode`: ``(ctx, state, token) -> (state, logits_V)``.

    ``ctx`` (from :func:`decoder_start`) plays the part of the params: it is shared by the beams.
    """
    state, logits, _ = _decoder_step(ctx, state, token)
    return state, logits


def _decoder_state(params: Seq2SeqParams, memory, summary, src_len):
    """One source's encoding (``memory [S, M]``, ``summary [M]``) as ``(DecoderContext, DecoderState)``.
    Decoder layer ``l`` starts from ``h_0 = tanh(bridge_l(summary))`` (an LSTM's ``c_0 = 0``)."""
    src_len = jnp.asarray(src_len, jnp.int32)
    carries = tuple(
        carry_from_hidden(*cell_and_params(layer), jnp.tanh(dense(bridge, summary)))
        for layer, bridge in zip(_layers(params.decoder), _layers(params.bridge), strict=True)
    )
    H = _out_size(_layers(params.decoder)[-1])
    feed = jnp.zeros((H if isinstance(params.attention, LuongParams) else 0,), summary.dtype)
    state = DecoderState(carries if type(params.decoder) is tuple else carries[0], feed)
    return DecoderContext(params, memory, src_len), state


def decoder_start(params: Seq2SeqParams, src_S, src_len, start_token) -> tuple[DecoderContext, DecoderState, Array]:
    """Encode one source and feed the start token: ``(ctx, state, logits_V)``, ready for decoding::

        ctx, state, logits = decoder_start(params, src_S, src_len, BOS)
        out = decode.beam_search(decoder_step_fn, ctx, state, logits, beam_width=5, max_len=30, end_token=EOS)

    The decoder starts from ``h_0 = tanh(bridge(summary))`` (an LSTM's cell state from zero).
    """
    memory, summary = encode(params, src_S, src_len)
    ctx, state = _decoder_state(params, memory, summary, src_len)
    state, logits = decoder_step_fn(ctx, state, jnp.asarray(start_token, jnp.int32))
    return ctx, state, logits


def _out_size(params) -> int:
    """The size of the cell's output ``y`` (= H for every built-in cell as initialised here)."""
    if isinstance(params, CellParams):
        return _step_shapes(params.cell, params.params)[1].shape[-1]
    return params.W_hy.shape[1] if isinstance(params, VanillaParams) else params.W_h.shape[0]


def _step_shapes(cell: Cell, params):
    """The shapes of ``(carry, y)`` after one step of one example (nothing is computed)."""
    x = jnp.zeros((cell.input_size(params),), jax.tree.leaves(params)[0].dtype)
    return jax.eval_shape(lambda p: cell(p, cell.init_carry(p), x), params)


def _layer_init(cell: str | Cell, key, in_size: int, hidden_size: int, dtype):
    """A seq2seq layer's params: a built-in cell's by name (or its :class:`Cell`), a user's :class:`Cell` made
    by its ``init`` and held in :class:`CellParams`, checked to fit the model (a carry that is its hidden
    state, an output ``y`` of ``hidden_size`` features)."""
    if isinstance(cell, str) or CELLS.get(cell.name) is cell:
        return cell_init(cell if isinstance(cell, str) else cell.name, key, in_size, hidden_size, dtype)
    if cell.init is None:
        raise UserError(f"the cell {cell.name!r} has no init: Cell(..., init=fn(key, in_size, hidden_size, dtype))")
    params = cell.init(key, in_size, hidden_size, dtype)
    carry, y = _step_shapes(cell, params)
    made = f"the cell {cell.name!r} made by its init(key, {in_size}, {hidden_size})"
    if not isinstance(carry, (LSTMState, jax.ShapeDtypeStruct)):
        raise UserError(
            f"{made} has the carry {jax.tree.structure(carry)}; an encoder-decoder hands the encoder's hidden "
            "state to the decoder, so the carry must be the hidden state (one array) or an LSTMState"
        )
    for what, shape in (("carry's hidden state", hidden_of(carry).shape), ("output y", getattr(y, "shape", None))):
        if shape != (hidden_size,):
            raise UserError(f"{made} has a {what} of shape {shape}; the model needs ({hidden_size},)")
    return CellParams(params, cell)
