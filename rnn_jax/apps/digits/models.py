"""The digits experiments' models: each one's params, init, logits and loss, on one example.

Every model function works on **one example** (an ``[8, 8]`` image, a label) and is batched with
``jax.vmap``; the recurrences are the topologies of :mod:`rnn_jax.topologies` over the cells of
:mod:`rnn_jax.cells`, so the only loop over time is :func:`rnn_jax.run`'s ``lax.scan``. Every loss has the
train step's signature ``loss(params, batch, key) -> (loss, metrics)``, and takes :func:`rnn_jax.run`'s
``impl`` and ``unroll`` as keywords (passed to every recurrence of the model; the models' evaluation
functions use ``run``'s defaults).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import decode, losses
from rnn_jax.data import images as imagedata
from rnn_jax.errors import UserError
from rnn_jax.scan import run
from rnn_jax.topologies import (
    Dense,
    GlimpseParams,
    carry_from_hidden,
    cell_init,
    cell_of,
    dense,
    dense_init,
    glimpse_apply,
    glimpse_init,
    many_to_one,
    one_to_many,
)

Array = jax.Array

__all__ = [
    "ClassifierParams",
    "CaptionerParams",
    "GeneratorParams",
    "VideoParams",
    "GlimpseParams",
    "as_sequence",
    "classifier_init",
    "classifier_logits",
    "prefix_logits",
    "classification_loss",
    "classifier_loss",
    "captioner_init",
    "caption_start",
    "caption_step",
    "caption_logits",
    "caption_greedy",
    "caption_loss",
    "generator_init",
    "generator_start",
    "generator_logits",
    "generate_image",
    "generator_loss",
    "glimpse_init",
    "image_windows",
    "glimpse_logits",
    "glimpse_class_logits",
    "video_init",
    "video_logits",
    "video_loss",
]


def _heads(head: Dense, ys_TH) -> Array:
    """The head applied at every step, ``[T, H] -> [T, O]``, without implicit rank promotion."""
    return jax.vmap(partial(dense, head))(ys_TH)


# ---------------------------------------------------------------------------------------------------
# Many to one: read the rows, label the digit
# ---------------------------------------------------------------------------------------------------


class ClassifierParams(NamedTuple):
    cell: Any  # reads one row (or pixel) per step
    head: Dense  # [H, 10]: the label from the summary


def classifier_init(key, *, in_size: int, hidden_size: int, cell: str = "gru") -> ClassifierParams:
    k1, k2 = jax.random.split(key)
    return ClassifierParams(
        cell_init(cell, k1, in_size, hidden_size), dense_init(k2, hidden_size, imagedata.NUM_CLASSES)
    )


def classifier_logits(params: ClassifierParams, xs_TI, length=None, *, impl: str = "auto", unroll=None) -> Array:
    """Many to one: ``logits = W_head y_L + b`` with ``y_L`` the output after the first ``length`` steps."""
    _, y = many_to_one(cell_of(params.cell), params.cell, None, xs_TI, lengths=length, impl=impl, unroll=unroll)
    return dense(params.head, y)


def prefix_logits(params: ClassifierParams, xs_TI) -> Array:
    """``[T, 10]``: row ``t`` is :func:`classifier_logits` after reading ``t + 1`` steps (one scan for all)."""
    _, ys = run(cell_of(params.cell), params.cell, None, xs_TI)
    return _heads(params.head, ys)


def as_sequence(images, read: str) -> np.ndarray:
    """``[N, 8, 8]`` images as sequences: 8 rows of 8 pixels (``"rows"``) or 64 pixels of 1 (``"pixels"``)."""
    if read == "rows":
        return imagedata.as_rows(images)
    if read == "pixels":
        return imagedata.as_pixels(images)
    raise UserError(f"read must be 'rows' or 'pixels', got {read!r}")


def _mean_cross_entropy(logits_BC, labels_B):
    """``(mean_b -log softmax(logits_b)[label_b], {"accuracy"})``: the loss of every classifier here."""
    loss = losses.token_cross_entropy(logits_BC, labels_B).mean()
    return loss, {"accuracy": losses.token_accuracy(logits_BC, labels_B)}


def classification_loss(logits_fn, params, batch, key, *, impl: str = "auto", unroll=None):
    """The classification loss of ``logits_fn(params, x, impl=, unroll=) -> [10]`` over a batch ``(xs, labels)``."""
    del key
    xs, labels = batch
    logits_fn = partial(logits_fn, impl=impl, unroll=unroll)
    return _mean_cross_entropy(jax.vmap(logits_fn, (None, 0))(params, xs), labels)


def classifier_loss(params, batch, key, *, impl: str = "auto", unroll=None):
    """The many-to-one classifier's loss over ``(xs [B, T, I], labels [B], lengths [B])``."""
    del key
    xs, labels, lengths = batch
    logits_fn = partial(classifier_logits, impl=impl, unroll=unroll)
    return _mean_cross_entropy(jax.vmap(logits_fn, (None, 0, 0))(params, xs, lengths), labels)


# ---------------------------------------------------------------------------------------------------
# One to many: an image feature sets h_0, the decoder writes the class name
# ---------------------------------------------------------------------------------------------------


class CaptionerParams(NamedTuple):
    encoder: Dense  # [64, F]: feature = relu(x W + b), the stand-in for the lecture's CNN feature
    init: Dense  # [F, H]: h_0 = tanh(feature W + b)
    embed: Array  # [V, E]: character embeddings
    cell: Any  # the decoder, reads one character per step
    head: Dense  # [H, V]: the next character's logits


def captioner_init(
    key, *, hidden_size: int, feature_size: int = 128, embed_size: int = 16, cell: str = "gru"
) -> CaptionerParams:
    k = jax.random.split(key, 5)
    V = len(imagedata.CAPTION_VOCAB)
    return CaptionerParams(
        encoder=dense_init(k[0], imagedata.SIDE * imagedata.SIDE, feature_size),
        init=dense_init(k[1], feature_size, hidden_size),
        embed=jax.random.normal(k[2], (V, embed_size)),
        cell=cell_init(cell, k[3], embed_size, hidden_size),
        head=dense_init(k[4], hidden_size, V),
    )


def caption_start(params: CaptionerParams, image_88):
    """The lecture's recipe: the image feature initialises the hidden state, ``h_0 = tanh(W_ih v)``."""
    feature = jax.nn.relu(dense(params.encoder, image_88.reshape(-1)))
    h0 = jnp.tanh(dense(params.init, feature))
    return carry_from_hidden(cell_of(params.cell), params.cell, h0)


def caption_step(params: CaptionerParams, carry, token):
    """The decoder as a token step for :mod:`rnn_jax.decode`: ``(carry, token) -> (carry, logits_V)``."""
    carry, y = cell_of(params.cell)(params.cell, carry, params.embed[token])
    return carry, dense(params.head, y)


def caption_logits(params: CaptionerParams, image_88, inputs_T, *, impl: str = "auto", unroll=None) -> Array:
    """Teacher forcing: ``[T, V]`` logits of the next character after each input character."""
    carry = caption_start(params, image_88)
    _, ys = run(cell_of(params.cell), params.cell, carry, params.embed[inputs_T], impl=impl, unroll=unroll)
    return _heads(params.head, ys)


def caption_greedy(params: CaptionerParams, image_88, max_len: int) -> decode.Decoded:
    """Feed ``<start>``, then the most likely character each step until ``<end>`` (compiled, one scan)."""
    carry, logits = caption_step(params, caption_start(params, image_88), jnp.int32(imagedata.START))
    return decode.greedy(caption_step, params, carry, logits, max_len=max_len, end_token=imagedata.END)


def caption_loss(params, batch, key, *, impl: str = "auto", unroll=None):
    """The captioner's loss over ``(images, inputs [B, T], targets [B, T], lengths [B])``."""
    del key
    images, inputs, targets, lengths = batch
    logits = jax.vmap(partial(caption_logits, impl=impl, unroll=unroll), (None, 0, 0))(params, images, inputs)
    loss = losses.sequence_cross_entropy(logits, targets, lengths=lengths)
    # The lecture's loss, summed over the characters of each caption (padding after <end> masked out).
    return loss.sum_over_steps, {"per_char": loss.per_token_mean}


# ---------------------------------------------------------------------------------------------------
# One to many, fed back: draw a digit of a given class row by row
# ---------------------------------------------------------------------------------------------------


class GeneratorParams(NamedTuple):
    init: Dense  # [10, H]: h_0 = tanh(W one_hot(class) + b)
    cell: Any  # reads the previous row (8 grey values)
    head: Dense  # [H, 8 K]: logits of each pixel's grey level in the next row


def generator_init(key, *, hidden_size: int, levels: int, cell: str = "gru") -> GeneratorParams:
    if levels < 2:
        raise UserError(f"levels must be at least 2, got {levels}")
    k = jax.random.split(key, 3)
    return GeneratorParams(
        init=dense_init(k[0], imagedata.NUM_CLASSES, hidden_size),
        cell=cell_init(cell, k[1], imagedata.SIDE, hidden_size),
        head=dense_init(k[2], hidden_size, imagedata.SIDE * levels),
    )


def _levels(params: GeneratorParams) -> int:
    return params.head.b.shape[0] // imagedata.SIDE


def generator_start(params: GeneratorParams, label):
    """The class initialises the hidden state, as the image does for captioning."""
    h0 = jnp.tanh(dense(params.init, jax.nn.one_hot(label, imagedata.NUM_CLASSES, dtype=params.init.W.dtype)))
    return carry_from_hidden(cell_of(params.cell), params.cell, h0)


def generator_logits(params: GeneratorParams, label, levels_88, *, impl: str = "auto", unroll=None) -> Array:
    """Teacher forcing: ``[8, 8, K]`` logits of row ``t``'s grey levels given rows ``< t`` (row ``-1`` = 0).

    ``levels_88`` holds the integer grey levels (:func:`rnn_jax.data.images.quantize`); the model reads
    the rows as values ``level / (K - 1)``, exactly what it is fed back when it draws.
    """
    K = _levels(params)
    rows = levels_88.astype(params.init.W.dtype) / (K - 1)
    inputs = jnp.concatenate([jnp.zeros_like(rows[:1]), rows[:-1]])
    start = generator_start(params, label)
    _, ys = run(cell_of(params.cell), params.cell, start, inputs, impl=impl, unroll=unroll)
    return _heads(params.head, ys).reshape(imagedata.SIDE, imagedata.SIDE, K)


def generate_image(params: GeneratorParams, label, key, temperature: float) -> Array:
    """Draw one ``[8, 8]`` image of class ``label``: one to many, each drawn row fed back as the next input.

    ``level_{t,j} ~ softmax(logits_{t,j} / tau)`` independently for the 8 pixels of row ``t`` given the
    hidden state; ``tau = 0`` takes the most likely level. The key rides in the carry.
    """
    K = _levels(params)
    cell = cell_of(params.cell)

    def draw_row(p, state, row_in):
        c, k = state
        c, y = cell(p.cell, c, row_in)
        logits = dense(p.head, y).reshape(imagedata.SIDE, K)
        k, sub = jax.random.split(k)
        if temperature == 0:
            level = jnp.argmax(logits, axis=-1)
        else:
            level = jax.random.categorical(sub, logits / temperature)
        return (c, k), level.astype(row_in.dtype) / (K - 1)

    start = (generator_start(params, label), key)
    _, rows = one_to_many(
        draw_row, params, start, jnp.zeros((imagedata.SIDE,), params.init.W.dtype), steps=imagedata.SIDE
    )
    return rows


def generator_loss(params, batch, key, *, impl: str = "auto", unroll=None):
    """The generator's loss over ``(labels [B], levels [B, 8, 8])``: nats per image."""
    del key
    labels, levels = batch
    logits = jax.vmap(partial(generator_logits, impl=impl, unroll=unroll), (None, 0, 0))(params, labels, levels)
    # Each image is a sequence of 64 pixel decisions: flatten to [B, 64, K] for the sequence loss.
    loss = losses.sequence_cross_entropy(
        logits.reshape(labels.shape[0], -1, logits.shape[-1]), levels.reshape(labels.shape[0], -1)
    )
    return loss.sum_over_steps, {"per_pixel": loss.per_token_mean}


# ---------------------------------------------------------------------------------------------------
# Sequential processing of a fixed input: glimpses
# ---------------------------------------------------------------------------------------------------


def image_windows(image_88, patch: int) -> Array:
    """``[N, patch * patch]``: every window of the image at stride 1, in the order of
    :func:`rnn_jax.data.images.sliding_patches` (row-major top-left corners), as a jnp gather."""
    n = imagedata.SIDE - patch + 1
    rows = jnp.arange(n)[:, None] + jnp.arange(patch)[None, :]  # [n, p]: pixel rows of each window row
    windows = image_88[rows[:, None, :, None], rows[None, :, None, :]]  # [n, n, p, p]
    return windows.reshape(n * n, patch * patch)


def glimpse_logits(params: GlimpseParams, image_88, *, patch: int, glimpses: int, hard: bool, **run_options):
    """Look at the image ``glimpses`` times, one ``patch x patch`` window each, and classify at the end.

    The windows are every position of the patch (stride 1); at each step the model's attention over
    them (from its hidden state) chooses the next one. Returns ``(logits [10], looks [G, N])``.
    ``run_options`` (``impl``, ``unroll``) go to :func:`rnn_jax.topologies.glimpse_apply`.
    """
    out = glimpse_apply(params, image_windows(image_88, patch), steps=glimpses, hard=hard, **run_options)
    return out.logits, out.looks


def glimpse_class_logits(params: GlimpseParams, image_88, *, patch: int, glimpses: int, hard: bool, **run_options):
    """The ``[10]`` logits of :func:`glimpse_logits` alone (what the classification loss reads)."""
    return glimpse_logits(params, image_88, patch=patch, glimpses=glimpses, hard=hard, **run_options)[0]


# ---------------------------------------------------------------------------------------------------
# Many to many, synchronised: a label at every frame of a noisy, occluded video
# ---------------------------------------------------------------------------------------------------


class VideoParams(NamedTuple):
    cell: Any  # reads one frame (64 pixels) per step
    head: Dense  # [H, 10]: the label at every frame


def video_init(key, *, hidden_size: int, cell: str = "gru") -> VideoParams:
    k1, k2 = jax.random.split(key)
    return VideoParams(
        cell_init(cell, k1, imagedata.SIDE * imagedata.SIDE, hidden_size),
        dense_init(k2, hidden_size, imagedata.NUM_CLASSES),
    )


def video_logits(params: VideoParams, frames_F88, *, impl: str = "auto", unroll=None) -> Array:
    """Many to many, synchronised: ``[F, 10]``, the label after each frame from everything seen so far."""
    xs = frames_F88.reshape(frames_F88.shape[0], -1)
    _, ys = run(cell_of(params.cell), params.cell, None, xs, impl=impl, unroll=unroll)
    return _heads(params.head, ys)


def video_loss(params, batch, key, *, impl: str = "auto", unroll=None):
    """The per-frame labeller's loss over ``(frames [B, F, 8, 8], labels [B])``."""
    del key
    frames, labels = batch
    logits = jax.vmap(partial(video_logits, impl=impl, unroll=unroll), (None, 0))(params, frames)
    per_frame = jnp.broadcast_to(labels[:, None], logits.shape[:2])
    # A label at every frame, each frame weighted alike: the per-token mean.
    return losses.sequence_cross_entropy(logits, per_frame).per_token_mean, {}
