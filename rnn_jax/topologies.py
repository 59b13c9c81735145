"""The topologies of Lecture 10, as functions over any cell.

===================  ==========================================  ======================================
lecture's name       function                                    e.g.
===================  ==========================================  ======================================
one to one           :func:`one_to_one`                          a feed-forward net: one step
one to many          :func:`one_to_many`                         image captioning (vector -> sequence)
many to one          :func:`many_to_one`                         sentiment / sequence classification
many to many         :func:`rnn_jax.run`                         per-frame labels (synchronised)
many to many (seq2seq) :func:`encoder_decoder_apply`             translation: encoder, then decoder
sequential processing  :func:`glimpse_apply`                     reading an image by glimpses
===================  ==========================================  ======================================

Shape letters: ``B`` batch, ``T`` time (decoder steps), ``S`` source steps, ``I`` input features,
``H`` hidden units, ``O`` a cell's outputs, ``E`` embedding size, ``M`` encoder features (memory), ``V``
vocabulary, ``N`` parts of a fixed input (patches), ``F`` features of a part, ``C`` classes.

Like :func:`rnn_jax.run`, the generic functions take ``(cell, params, carry, xs)`` and any number of
leading batch dimensions. The seq2seq and glimpse models have params as pytrees with ``*_init``
functions; the model's structure (cell kind, attention, bidirectional encoder) is read from the *types*
of its params, so ``*_apply(params, ...)`` needs no config and params work with ``jax.grad`` and optax
as they are.

Every function that runs a recurrence takes ``run``'s algorithm options, ``impl`` (default ``"auto"``) and
``unroll`` (default ``None``: chosen by platform and size), and passes them to each :func:`rnn_jax.run`.
Where the scanned step is the cell itself (:func:`many_to_one`, the encoder layers of
:func:`encoder_decoder_apply`) ``impl`` is followed as given. Where the step is a plain function built
around the cell (the decoder with its attention, :func:`one_to_many`'s feedback loop, :func:`glimpse_apply`)
the kernels cannot run it: ``impl="pallas"`` and ``"custom_jvp"`` run those loops with ``"scan"``
(:func:`step_impl`), while ``unroll`` applies to every loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rnn_jax.cells import (
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    LSTMState,
    VanillaParams,
    gru_cell,
    lstm_cell,
    vanilla_cell,
)
from rnn_jax.errors import UserError
from rnn_jax.kernels.registry import TABLE
from rnn_jax.scan import run, vmap_batch, zeros_carry
from rnn_jax.stacks import bidirectional, inverted_dropout

Array = jax.Array

__all__ = [
    "Dense",
    "dense_init",
    "dense",
    "hidden_of",
    "carry_from_hidden",
    "cell_of",
    "cell_and_params",
    "CellParams",
    "cell_init",
    "step_impl",
    "one_to_one",
    "one_to_many",
    "many_to_one",
    "Bidirectional",
    "BahdanauParams",
    "LuongParams",
    "Seq2SeqParams",
    "DecoderContext",
    "DecoderState",
    "Seq2SeqOutput",
    "ATTENTIONS",
    "encoder_decoder_init",
    "encode",
    "attend",
    "decoder_start",
    "decoder_step_fn",
    "encoder_decoder_apply",
    "GlimpseParams",
    "GlimpseOutput",
    "image_patches",
    "glimpse_init",
    "glimpse_apply",
]

ATTENTIONS = (None, "bahdanau", "luong")


# ---------------------------------------------------------------------------------------------------
# Small pieces: a dense layer, the hidden part of a carry
# ---------------------------------------------------------------------------------------------------


class Dense(NamedTuple):
    """An affine map ``x W + b``."""

    W: Array  # [in, out]
    b: Array  # [out]


def dense_init(key, in_size: int, out_size: int, dtype=jnp.float32) -> Dense:
    """LeCun-normal ``W``, zero ``b``."""
    return Dense(jax.nn.initializers.lecun_normal()(key, (in_size, out_size), dtype), jnp.zeros((out_size,), dtype))


def dense(p: Dense, x):
    """``x W + b`` for one example ``x [in]``."""
    return x @ p.W + p.b


def hidden_of(carry) -> Array:
    """The hidden state ``h`` of a carry: ``carry.h`` for an LSTM, the carry itself for vanilla and GRU."""
    return carry.h if isinstance(carry, LSTMState) else carry


def carry_from_hidden(cell: Cell, params, h_H):
    """The carry of ``cell`` whose hidden state is ``h_H`` (an LSTM's cell state starts at zero)."""
    zero = cell.init_carry(params)
    if isinstance(zero, LSTMState):
        return LSTMState(h_H.astype(zero.h.dtype), jnp.zeros_like(h_H, zero.c.dtype))
    if jax.tree.structure(zero).num_leaves != 1:
        raise TypeError(f"carry_from_hidden knows LSTMState and single-array carries, got {jax.tree.structure(zero)}")
    return h_H.astype(zero.dtype)


@partial(jax.tree_util.register_dataclass, data_fields=["params"], meta_fields=["cell"])
@dataclasses.dataclass(frozen=True)
class CellParams:
    """A user cell's params together with the cell they belong to: a layer of a model built from a user's
    :class:`~rnn_jax.Cell` (``encoder_decoder_init(cell=my_cell)``). The params are the pytree's leaves;
    the cell is static (part of the tree's structure), so the model functions read it from the params as
    they read a built-in cell from its params' type."""

    params: Any
    cell: Cell


_CELL_OF_PARAMS = {VanillaParams: vanilla_cell, LSTMParams: lstm_cell, GRUParams: gru_cell}


def cell_of(params) -> Cell:
    """The cell that goes with a layer's params (a built-in's by the params type, a user's from its
    :class:`CellParams`), so model functions need no config."""
    if isinstance(params, CellParams):
        return params.cell
    try:
        return _CELL_OF_PARAMS[type(params)]
    except KeyError:
        raise TypeError(
            f"expected VanillaParams, LSTMParams, GRUParams or CellParams, got {type(params).__name__}"
        ) from None


def cell_and_params(layer) -> tuple[Cell, Any]:
    """``(cell, params)`` of a layer, ready for ``cell(params, carry, x)`` and :func:`rnn_jax.run`."""
    return cell_of(layer), (layer.params if isinstance(layer, CellParams) else layer)


def cell_init(kind: str, key, in_size: int, hidden_size: int, dtype=jnp.float32):
    """Params of a ``"vanilla"``, ``"lstm"`` or ``"gru"`` cell whose output ``y`` has ``hidden_size`` features."""
    if kind not in CELLS:
        raise UserError(f"cell must be one of 'vanilla', 'lstm', 'gru', got {kind!r}")
    return CELLS[kind].init(key, in_size, hidden_size, dtype)  # a vanilla head maps h -> h: the model's features


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


def _out_size(params) -> int:
    """The size of the cell's output ``y`` (= H for every built-in cell as initialised here)."""
    if isinstance(params, CellParams):
        return _step_shapes(params.cell, params.params)[1].shape[-1]
    return params.W_hy.shape[1] if isinstance(params, VanillaParams) else params.W_h.shape[0]


# ---------------------------------------------------------------------------------------------------
# One to one, one to many, many to one, many to many
# ---------------------------------------------------------------------------------------------------


def step_impl(impl: str) -> str:
    """The ``impl`` for a loop whose step is a plain function around a cell: every implementation in the table
    becomes ``"scan"`` (the kernels run the built-in cells only); ``"auto"`` stays (it finds the scan for such a
    step), and so does a name not in the table (``run`` refuses it, listing the table)."""
    return "scan" if impl in TABLE else impl


def one_to_one(cell, params, carry, x):
    """One to one: a single step, ``(carry, y) = cell(params, carry, x)``, for ``x [..., I]``.

    ``carry=None`` is the zero carry (a plain feed-forward net through the cell).
    """
    carry, ys = run(cell, params, carry, jax.tree.map(lambda a: a[..., None, :], x))
    return carry, jax.tree.map(lambda a: a[..., 0, :], ys)


def one_to_many(
    cell,
    params,
    carry,
    x_I,
    *,
    steps: int,
    feedback: Callable[[Any], Any] | None = None,
    impl: str = "auto",
    unroll: int | None = None,
) -> tuple[Any, Any]:
    """One to many: read ``x_1 = x_I``, then feed each output back as the next input, for ``steps`` steps.

    ``h_t, y_t = cell(params, h_{t-1}, x_t)``, ``x_{t+1} = feedback(y_t)`` (identity by default, which needs
    ``O = I``). The fixed input sets the initial state: e.g. ``carry = carry_from_hidden(cell, params,
    tanh(dense(W_img, features)))`` as in image captioning. For tokens (sampling, beam search), use a token
    step with :mod:`rnn_jax.decode`.

    Args:
      carry: the initial carry with the batch dims in front, or ``None`` for zeros (a ``Cell``).
      x_I: the first input, ``[..., I]``.
      impl, unroll: for :func:`rnn_jax.run`; the loop's step feeds back, so ``impl`` goes through :func:`step_impl`.

    Returns:
      ``(final_carry, ys [..., T, O])``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UserError(f"one_to_many needs steps >= 1, got {steps!r}")
    feedback = feedback if feedback is not None else (lambda y: y)
    batch = jnp.shape(x_I)[:-1]
    if carry is None:
        carry = zeros_carry(cell, params, batch)

    def fed_back(p, state, _):
        c, x = state
        c, y = cell(p, c, x)
        return (c, feedback(y)), y

    dummy = jnp.zeros(batch + (steps, 0), jnp.float32)  # no per-step input: the loop feeds itself
    (carry, _), ys = run(fed_back, params, (carry, x_I), dummy, impl=step_impl(impl), unroll=unroll)
    return carry, ys


def many_to_one(
    cell, params, carry, xs, *, lengths=None, pool: str = "last", impl: str = "auto", unroll: int | None = None
) -> tuple[Any, Array]:
    """Many to one: summarise a sequence by its output at the last real step, or by the mean output.

    ``pool="last"``: ``y_{L-1}`` with ``L`` each sequence's length (``T`` without ``lengths``); ``"mean"``:
    ``(1/L) sum_{t<L} y_t``. For LSTM and GRU ``y_t = h_t``, so ``"last"`` is the final hidden state; for the
    vanilla cell it is the head's output at that step (the lecture's classifier). Length 0 gives zeros.
    ``impl`` and ``unroll`` go to :func:`rnn_jax.run` as given.

    Returns:
      ``(final_carry, summary [..., O])``.
    """
    if pool not in ("last", "mean"):
        raise UserError(f"pool must be 'last' or 'mean', got {pool!r}")
    carry, ys = run(cell, params, carry, xs, lengths=lengths, impl=impl, unroll=unroll)
    T = jnp.shape(ys)[-2]
    if lengths is None:
        lengths = jnp.full(jnp.shape(ys)[:-2], T, jnp.int32)
    lengths = jnp.asarray(lengths)
    if pool == "mean":  # run zeroed the outputs past each length
        return carry, jnp.sum(ys, axis=-2) / jnp.maximum(lengths, 1)[..., None].astype(ys.dtype)
    last = jnp.maximum(lengths - 1, 0)[..., None, None]
    summary = jnp.take_along_axis(ys, last, axis=-2)[..., 0, :]
    return carry, jnp.where((lengths > 0)[..., None], summary, 0)


# ---------------------------------------------------------------------------------------------------
# Encoder-decoder (seq2seq) with optional attention
# ---------------------------------------------------------------------------------------------------


class Bidirectional(NamedTuple):
    """Params of a bidirectional encoder: one cell reads forward, another backward."""

    fw: Any
    bw: Any


class BahdanauParams(NamedTuple):
    """Additive attention: ``score_s = v . tanh(q W_q + m_s W_m)`` with the previous decoder state ``q``."""

    W_q: Array  # [H, A]
    W_m: Array  # [M, A]
    v: Array  # [A]


class LuongParams(NamedTuple):
    """Multiplicative ("general") attention ``score_s = q W m_s`` with the current state ``q``, and the
    attentional state ``h~ = tanh([c; q] W_c + b_c)`` that makes the output and is fed to the next step."""

    W: Array  # [H, M]
    combine: Dense  # [M + H, H]


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
    if attention not in ATTENTIONS:
        raise UserError(f"attention must be one of {ATTENTIONS}, got {attention!r}")


def _attention_init(keys, attention, H: int, M: int, A: int, dtype):
    """Attention params drawn from the iterator ``keys``: Bahdanau (query, memory, ``v``), Luong, or None."""
    if attention == "bahdanau":
        W_q, W_m = dense_init(next(keys), H, A, dtype).W, dense_init(next(keys), M, A, dtype).W
        return BahdanauParams(W_q=W_q, W_m=W_m, v=jax.nn.initializers.normal(1.0)(next(keys), (A,), dtype))
    if attention == "luong":
        return LuongParams(W=dense_init(next(keys), H, M, dtype).W, combine=dense_init(next(keys), M + H, H, dtype))
    return None


def encoder_decoder_init(
    key,
    *,
    src_vocab: int,
    tgt_vocab: int,
    embed_size: int,
    hidden_size: int,
    cell: str | Cell = "lstm",
    bidirectional: bool = False,
    attention: str | None = None,
    attention_size: int | None = None,
    encoder_hidden_size: int | None = None,
    encoder_layers: int = 1,
    decoder_layers: int = 1,
    dtype=jnp.float32,
) -> Seq2SeqParams:
    """Params of an encoder-decoder: embeddings, encoder (optionally bidirectional, ``encoder_layers``
    deep), bridges, decoder (``decoder_layers`` deep), attention (``None``, ``"bahdanau"`` or
    ``"luong"``) and output layer.

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
    att = _attention_init(k, attention, H, M, A, dtype)
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


def attend(att, query_H, memory_SM, src_len) -> tuple[Array, Array]:
    """Attention of one query over the memory, masked by ``src_len``: ``(context [M], weights [S])``.

    ``weights = softmax(scores)`` over ``s < src_len`` only: padded positions get exactly 0 and the real
    ones sum to 1. Bahdanau: ``score_s = v . tanh(q W_q + m_s W_m)``; Luong: ``score_s = q W . m_s``.
    """
    if isinstance(att, BahdanauParams):
        scores_S = jnp.tanh(memory_SM @ att.W_m + (query_H @ att.W_q)[None, :]) @ att.v
    elif isinstance(att, LuongParams):
        scores_S = memory_SM @ (query_H @ att.W)
    else:
        raise TypeError(f"expected BahdanauParams or LuongParams, got {type(att).__name__}")
    real_S = jnp.arange(memory_SM.shape[0]) < src_len
    scores_S = jnp.where(real_S, scores_S.astype(jnp.float32), -jnp.inf)
    weights_S = jnp.where(real_S, jax.nn.softmax(scores_S), 0.0)  # exp(-inf) is 0 already; where keeps NaN out
    return (weights_S.astype(memory_SM.dtype) @ memory_SM), weights_S


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


# ---------------------------------------------------------------------------------------------------
# Sequential processing of a fixed input: glimpses
# ---------------------------------------------------------------------------------------------------


class GlimpseParams(NamedTuple):
    """A recurrent glimpse model over a fixed input of ``N`` parts with ``F`` features each."""

    cell: Any  # reads [glimpse F; where it looked N]
    where: Dense  # [H, N]: the next location's logits from the hidden state
    head: Dense  # [H, C]: the decision, from the final hidden state


class GlimpseOutput(NamedTuple):
    """``logits [..., C]`` of the decision and ``looks [..., T, N]``: where each step looked (rows sum to 1)."""

    logits: Array
    looks: Array


def image_patches(image_HW, patch: int) -> Array:
    """Cut ``[..., Hi, Wi]`` images into ``N = (Hi/p)(Wi/p)`` row-major ``p x p`` patches: ``[..., N, p*p]``."""
    image_HW = jnp.asarray(image_HW)
    *batch, Hi, Wi = image_HW.shape
    if Hi % patch or Wi % patch:
        raise UserError(f"image of {Hi}x{Wi} pixels does not split into {patch}x{patch} patches")
    x = image_HW.reshape(*batch, Hi // patch, patch, Wi // patch, patch)
    x = jnp.moveaxis(x, -3, -2)  # [..., rows, cols, p, p]
    return x.reshape(*batch, (Hi // patch) * (Wi // patch), patch * patch)


def glimpse_init(
    key, *, n_parts: int, part_size: int, hidden_size: int, n_classes: int, cell: str = "gru", dtype=jnp.float32
) -> GlimpseParams:
    """Params of :func:`glimpse_apply`."""
    k1, k2, k3 = jax.random.split(key, 3)
    return GlimpseParams(
        cell=cell_init(cell, k1, part_size + n_parts, hidden_size, dtype),
        where=dense_init(k2, hidden_size, n_parts, dtype),
        head=dense_init(k3, hidden_size, n_classes, dtype),
    )


def glimpse_apply(
    params: GlimpseParams, parts, *, steps: int, hard: bool = False, impl: str = "auto", unroll: int | None = None
) -> GlimpseOutput:
    """Read a fixed input by ``steps`` glimpses, choosing each time where to look next; decide at the end.

    For one example with parts ``x [N, F]``::

        a_t = softmax(h_{t-1} W_where + b)        # where to look (from what was seen so far)
        g_t = a_t x                               # the glimpse: the attended part
        h_t = cell(h_{t-1}, [g_t; a_t])           # remember what was seen, and where
        logits = h_T W_head + b                   # decide at the end

    ``hard=True`` looks at exactly one part, ``one_hot(argmax a_t)``, with the soft weights' gradient
    (straight-through). ``parts`` is ``[..., N, F]`` (e.g. :func:`image_patches`). The glimpse step is a
    plain function around the cell: it runs with :func:`step_impl` of ``impl`` and with ``unroll``.
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UserError(f"glimpse_apply needs steps >= 1, got {steps!r}")
    parts = jnp.asarray(parts)
    cell = cell_of(params.cell)
    N = params.where.W.shape[1]
    if parts.ndim < 2 or parts.shape[-2] != N:
        raise ValueError(f"parts must be [..., N={N}, F], got shape {parts.shape}")

    def one(x_NF):
        def step(p, c, _):
            a_N = jax.nn.softmax(dense(p.where, hidden_of(c)).astype(jnp.float32))
            if hard:
                a_N = jax.nn.one_hot(jnp.argmax(a_N), N, dtype=a_N.dtype) + a_N - lax.stop_gradient(a_N)
            a_N = a_N.astype(x_NF.dtype)
            c, _ = cell(p.cell, c, jnp.concatenate([a_N @ x_NF, a_N]))
            return c, a_N

        xs = jnp.zeros((steps, 0), x_NF.dtype)  # no per-step input: each step chooses its own glimpse
        c, looks = run(step, params, cell.init_carry(params.cell), xs, impl=step_impl(impl), unroll=unroll)
        return dense(params.head, hidden_of(c)), looks

    logits, looks = vmap_batch(one, len(parts.shape[:-2]))(parts)
    return GlimpseOutput(logits, looks)
