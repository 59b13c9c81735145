"""Image experiments from Lecture 10 on scikit-learn's 8x8 digits, one per topology.

======================  ===============================  ==================================================
experiment              topology                         what the model does
======================  ===============================  ==================================================
:func:`classify`        many to one                      reads the rows one at a time, labels the digit
:func:`caption`         one to many (tokens)             image feature -> ``h_0``, writes "seven" + <end>
:func:`generate`        one to many (fed back)           class -> ``h_0``, draws the digit row by row
:func:`glimpse`         sequential processing            looks at one patch per step, chooses the next
:func:`video`           many to many (synchronised)      labels every frame of a noisy, occluded video
======================  ===============================  ==================================================

Each experiment is ``name(config) -> Result``: it trains with :func:`rnn_jax.train.fit`, evaluates on
the fixed test split of :func:`rnn_jax.data.images.split_digits`, writes ``name.png`` and ``name.json``
(its metrics) into ``config.out_dir`` (``runs/digits/name`` by default, next to the fit loop's
``metrics.jsonl`` and ``loss.png``), and returns the params and the metrics. ``rnn-jax digits NAME``
runs one from the command line and ends its output with the metrics as one JSON line.

Every model function works on **one example** (an ``[8, 8]`` image, a label) and is batched with
``jax.vmap``; the recurrences are the topologies of :mod:`rnn_jax.topologies` over the cells of
:mod:`rnn_jax.cells`, so the only loop over time is :func:`rnn_jax.run`'s ``lax.scan``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import decode, losses, train
from rnn_jax.cells import CELLS
from rnn_jax.data import images as D
from rnn_jax.errors import UserError
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
    many_to_many,
    many_to_one,
    one_to_many,
)

Array = jax.Array

__all__ = [
    "TrainConfig",
    "ClassifyConfig",
    "CaptionConfig",
    "GenerateConfig",
    "GlimpseConfig",
    "VideoConfig",
    "Result",
    "ClassifierParams",
    "CaptionerParams",
    "GeneratorParams",
    "VideoParams",
    "classifier_init",
    "classifier_logits",
    "prefix_logits",
    "captioner_init",
    "caption_start",
    "caption_step",
    "caption_logits",
    "caption_greedy",
    "generator_init",
    "generator_start",
    "generator_logits",
    "generate_image",
    "image_windows",
    "glimpse_logits",
    "video_init",
    "video_logits",
    "classify",
    "caption",
    "generate",
    "glimpse",
    "video",
    "EXPERIMENTS",
    "cli_main",
]

# ---------------------------------------------------------------------------------------------------
# Configs: one frozen dataclass per experiment; the defaults are the measured runs of docs/digits.md
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """What every experiment shares: the cell, its size, and the optimiser's budget."""

    cell: str = field(default="gru", metadata={"help": "recurrent cell: vanilla, lstm or gru"})
    hidden_size: int = field(default=64, metadata={"help": "hidden units H"})
    steps: int = field(default=1500, metadata={"help": "training steps (one batch each)"})
    batch_size: int = field(default=64, metadata={"help": "images per batch"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate (warm-up, cosine)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay on matrices"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the init and the batches"})
    out_dir: str = field(default="", metadata={"help": "where the PNG and JSON go (default runs/digits/NAME)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on stderr"})


@dataclass(frozen=True)
class ClassifyConfig(TrainConfig):
    read: str = field(default="rows", metadata={"help": "feed the image as 8 rows or 64 pixels"})
    train_lengths: str = field(
        default="full", metadata={"help": "train on whole images, or on random prefixes (answer early)"}
    )


@dataclass(frozen=True)
class CaptionConfig(TrainConfig):
    feature_size: int = field(default=128, metadata={"help": "size of the image feature that sets h_0"})
    embed_size: int = field(default=16, metadata={"help": "character embedding size"})
    steps: int = 1500


@dataclass(frozen=True)
class GenerateConfig(TrainConfig):
    hidden_size: int = 128
    steps: int = 1200
    levels: int = field(default=5, metadata={"help": "grey levels each pixel is drawn from"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (0: most likely level)"})
    samples_per_class: int = field(default=50, metadata={"help": "digits drawn per class for the check"})
    classifier_steps: int = field(default=1000, metadata={"help": "training steps of the checking classifier"})


@dataclass(frozen=True)
class GlimpseConfig(TrainConfig):
    patch: int = field(default=4, metadata={"help": "side of the square patch seen by one glimpse"})
    glimpses: int = field(default=4, metadata={"help": "glimpses before the decision"})
    hard: bool = field(default=True, metadata={"help": "look at exactly one patch (straight-through) or blend"})


@dataclass(frozen=True)
class VideoConfig(TrainConfig):
    steps: int = 2000
    frames: int = field(default=8, metadata={"help": "frames per video"})
    noise: float = field(default=0.5, metadata={"help": "std of the Gaussian pixel noise of each frame"})
    occlusion: int = field(default=4, metadata={"help": "side of the square blanked out in each frame"})


class Result(NamedTuple):
    """What an experiment returns: the trained params, the metrics (also in ``name.json``) and the figure."""

    params: Any
    metrics: dict
    png: Path


def _check_config(cfg: TrainConfig, n_train: int):
    if cfg.cell not in CELLS:
        raise UserError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
    for name in ("hidden_size", "steps", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if cfg.batch_size > n_train:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {n_train} training images")


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
    return ClassifierParams(cell_init(cell, k1, in_size, hidden_size), dense_init(k2, hidden_size, D.NUM_CLASSES))


def classifier_logits(params: ClassifierParams, xs_TI, length=None) -> Array:
    """Many to one: ``logits = W_head y_L + b`` with ``y_L`` the output after the first ``length`` steps."""
    _, y = many_to_one(cell_of(params.cell), params.cell, None, xs_TI, lengths=length)
    return dense(params.head, y)


def prefix_logits(params: ClassifierParams, xs_TI) -> Array:
    """``[T, 10]``: row ``t`` is :func:`classifier_logits` after reading ``t + 1`` steps (one scan for all)."""
    _, ys = many_to_many(cell_of(params.cell), params.cell, None, xs_TI)
    return _heads(params.head, ys)


def _as_sequence(images, read: str) -> np.ndarray:
    if read == "rows":
        return D.as_rows(images)
    if read == "pixels":
        return D.as_pixels(images)
    raise UserError(f"read must be 'rows' or 'pixels', got {read!r}")


def _classification_loss(logits_fn, params, batch, key):
    del key
    xs, labels = batch
    logits = jax.vmap(logits_fn, (None, 0))(params, xs)
    loss = losses.token_cross_entropy(logits, labels).mean()
    return loss, {"accuracy": losses.token_accuracy(logits, labels)}


def _classifier_loss(params, batch, key):
    del key
    xs, labels, lengths = batch
    logits = jax.vmap(classifier_logits, (None, 0, 0))(params, xs, lengths)
    loss = losses.token_cross_entropy(logits, labels).mean()
    return loss, {"accuracy": losses.token_accuracy(logits, labels)}


def _accuracy(logits, labels) -> float:
    return float(losses.token_accuracy(jnp.asarray(logits), jnp.asarray(labels)))


def _on_test_and_val(fn, params, splits: D.DigitSplits, view=lambda images: images):
    """``vmap(fn)`` over the test and the validation images in one compiled call (one compile, not two).

    Returns ``(test_outputs, val_outputs)`` as numpy pytrees.
    """
    n = len(splits.test.labels)
    images = np.concatenate([view(splits.test.images), view(splits.val.images)])
    out = jax.jit(jax.vmap(fn, (None, 0)))(params, jnp.asarray(images))
    return jax.tree.map(lambda a: np.asarray(a[:n]), out), jax.tree.map(lambda a: np.asarray(a[n:]), out)


def train_classifier(cfg: ClassifyConfig, splits: D.DigitSplits | None = None, out_dir=None):
    """Train the many-to-one classifier; returns ``(params, FitResult)`` (used by :func:`generate` too)."""
    splits = D.split_digits(seed=cfg.seed) if splits is None else splits
    _check_config(cfg, len(splits.train.labels))
    if cfg.train_lengths not in ("full", "random"):
        raise UserError(f"train_lengths must be 'full' or 'random', got {cfg.train_lengths!r}")
    xs = _as_sequence(splits.train.images, cfg.read)
    T = xs.shape[-2]
    params = classifier_init(jax.random.key(cfg.seed), in_size=xs.shape[-1], hidden_size=cfg.hidden_size, cell=cfg.cell)

    def take(idx, rng):
        # "random": each image is cut after 1..T steps (many_to_one's lengths); the label stays the same.
        lengths = rng.integers(1, T + 1, len(idx)) if cfg.train_lengths == "random" else np.full(len(idx), T)
        return xs[idx], splits.train.labels[idx], lengths.astype(np.int32)

    fitted = _fit(cfg, params, _classifier_loss, _batches(cfg, len(xs), take), out_dir)
    return fitted.state.params, fitted


def classify(cfg: ClassifyConfig = ClassifyConfig()) -> Result:
    """Many to one: feed a digit's rows one at a time, label it from the last output.

    Reports the test accuracy after all rows, and after each number of rows read (the same model and
    head, summarising at an earlier step: ``many_to_one(..., lengths=k)``).
    """
    out = _out_dir(cfg, "classify")
    splits = D.split_digits(seed=cfg.seed)
    params, fitted = train_classifier(cfg, splits, out)
    # The last row of prefix_logits is the many-to-one answer after the whole image (tests check it).
    test_prefix, val_prefix = _on_test_and_val(prefix_logits, params, splits, partial(_as_sequence, read=cfg.read))
    acc_by_steps = (test_prefix.argmax(-1) == splits.test.labels[:, None]).mean(0)
    metrics = {
        "test_accuracy": _accuracy(test_prefix[:, -1], splits.test.labels),
        "val_accuracy": _accuracy(val_prefix[:, -1], splits.val.labels),
        f"test_accuracy_by_{cfg.read}_read": [round(float(a), 4) for a in acc_by_steps],
    }
    metrics["target"] = "test_accuracy >= 0.95"
    metrics["target_met"] = metrics["test_accuracy"] >= 0.95
    png = _plot_accuracy_curve(
        out / "classify.png",
        acc_by_steps,
        xlabel=f"{cfg.read} read",
        title=f"Many to one: {cfg.cell.upper()} reads a digit by {cfg.read[:-1]}, trained on "
        + ("whole images" if cfg.train_lengths == "full" else "random prefixes"),
    )
    return _finish("classify", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


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
    V = len(D.CAPTION_VOCAB)
    return CaptionerParams(
        encoder=dense_init(k[0], D.SIDE * D.SIDE, feature_size),
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


def caption_logits(params: CaptionerParams, image_88, inputs_T) -> Array:
    """Teacher forcing: ``[T, V]`` logits of the next character after each input character."""
    cell = cell_of(params.cell)
    _, ys = many_to_many(cell, params.cell, caption_start(params, image_88), params.embed[inputs_T])
    return _heads(params.head, ys)


def caption_greedy(params: CaptionerParams, image_88, max_len: int) -> decode.Decoded:
    """Feed ``<start>``, then the most likely character each step until ``<end>`` (compiled, one scan)."""
    carry, logits = caption_step(params, caption_start(params, image_88), jnp.int32(D.START))
    return decode.greedy(caption_step, params, carry, logits, max_len=max_len, end_token=D.END)


def _caption_loss(params, batch, key):
    del key
    images, inputs, targets, lengths = batch
    logits = jax.vmap(caption_logits, (None, 0, 0))(params, images, inputs)
    loss = losses.sequence_cross_entropy(logits, targets, lengths=lengths)
    # The lecture's loss, summed over the characters of each caption (padding after <end> masked out).
    return loss.sum_over_steps, {"per_char": loss.per_token_mean}


def caption(cfg: CaptionConfig = CaptionConfig()) -> Result:
    """One to many: an image feature initialises the hidden state; the decoder spells the class name.

    Reports the exact match of the greedy captions on the test split: every character and the end
    token right (a caption that stops early or runs on is wrong).
    """
    out = _out_dir(cfg, "caption")
    splits = D.split_digits(seed=cfg.seed)
    _check_config(cfg, len(splits.train.labels))
    params = captioner_init(
        jax.random.key(cfg.seed),
        hidden_size=cfg.hidden_size,
        feature_size=cfg.feature_size,
        embed_size=cfg.embed_size,
        cell=cfg.cell,
    )
    train_split = splits.train
    batches = _batches(
        cfg,
        len(train_split.labels),
        lambda idx, rng: (train_split.images[idx], *D.caption_tokens(train_split.labels[idx])),
    )
    fitted = _fit(cfg, params, _caption_loss, batches, out)
    params = fitted.state.params

    max_len = D.caption_tokens(np.zeros(1, np.int32))[1].shape[1]
    decoded_test, decoded_val = _on_test_and_val(partial(caption_greedy, max_len=max_len), params, splits)

    def exact(decoded: decode.Decoded, split: D.DigitSplit) -> float:
        _, targets, lengths = D.caption_tokens(split.labels)  # the end token counts: no early stop, no run-on
        return float(losses.exact_match(decoded.tokens, jnp.asarray(targets), lengths=jnp.asarray(lengths)))

    test_match, val_match = exact(decoded_test, splits.test), exact(decoded_val, splits.val)
    captions = [D.decode_caption(t) for t in decoded_test.tokens]
    wrong = [(D.CLASS_NAMES[y], c) for y, c in zip(splits.test.labels, captions, strict=True) if c != D.CLASS_NAMES[y]]
    metrics = {
        "test_exact_match": test_match,
        "val_exact_match": val_match,
        "test_errors": [f"{want}->{got}" for want, got in wrong[:10]],
        "target": "test_exact_match >= 0.95",
        "target_met": test_match >= 0.95,
    }
    png = _plot_captions(out / "caption.png", splits.test, captions)
    return _finish("caption", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


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
        init=dense_init(k[0], D.NUM_CLASSES, hidden_size),
        cell=cell_init(cell, k[1], D.SIDE, hidden_size),
        head=dense_init(k[2], hidden_size, D.SIDE * levels),
    )


def _levels(params: GeneratorParams) -> int:
    return params.head.b.shape[0] // D.SIDE


def generator_start(params: GeneratorParams, label):
    """The class initialises the hidden state, as the image does for captioning."""
    h0 = jnp.tanh(dense(params.init, jax.nn.one_hot(label, D.NUM_CLASSES, dtype=params.init.W.dtype)))
    return carry_from_hidden(cell_of(params.cell), params.cell, h0)


def generator_logits(params: GeneratorParams, label, levels_88) -> Array:
    """Teacher forcing: ``[8, 8, K]`` logits of row ``t``'s grey levels given rows ``< t`` (row ``-1`` = 0).

    ``levels_88`` holds the integer grey levels (:func:`rnn_jax.data.images.quantize`); the model reads
    the rows as values ``level / (K - 1)``, exactly what it is fed back when it draws.
    """
    K = _levels(params)
    rows = levels_88.astype(params.init.W.dtype) / (K - 1)
    inputs = jnp.concatenate([jnp.zeros_like(rows[:1]), rows[:-1]])
    _, ys = many_to_many(cell_of(params.cell), params.cell, generator_start(params, label), inputs)
    return _heads(params.head, ys).reshape(D.SIDE, D.SIDE, K)


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
        logits = dense(p.head, y).reshape(D.SIDE, K)
        k, sub = jax.random.split(k)
        if temperature == 0:
            level = jnp.argmax(logits, axis=-1)
        else:
            level = jax.random.categorical(sub, logits / temperature)
        return (c, k), level.astype(row_in.dtype) / (K - 1)

    start = (generator_start(params, label), key)
    _, rows = one_to_many(draw_row, params, start, jnp.zeros((D.SIDE,), params.init.W.dtype), steps=D.SIDE)
    return rows


def _generator_loss(params, batch, key):
    del key
    labels, levels = batch
    logits = jax.vmap(generator_logits, (None, 0, 0))(params, labels, levels)
    # Each image is a sequence of 64 pixel decisions: flatten to [B, 64, K] for the sequence loss.
    loss = losses.sequence_cross_entropy(
        logits.reshape(labels.shape[0], -1, logits.shape[-1]), levels.reshape(labels.shape[0], -1)
    )
    return loss.sum_over_steps, {"per_pixel": loss.per_token_mean}


def generate(cfg: GenerateConfig = GenerateConfig()) -> Result:
    """One to many: draw digits of a requested class row by row; check them with the many-to-one classifier.

    Reports the share of drawn digits that the many-to-one classifier of :func:`classify` (trained here
    on real digits for ``classifier_steps``) labels as the requested class, and the test negative
    log-likelihood of the real digits.
    """
    out = _out_dir(cfg, "generate")
    splits = D.split_digits(seed=cfg.seed)
    _check_config(cfg, len(splits.train.labels))
    if cfg.temperature < 0 or cfg.samples_per_class < 1:
        raise UserError(
            f"need temperature >= 0 and samples_per_class >= 1, got {cfg.temperature} and {cfg.samples_per_class}"
        )
    params = generator_init(jax.random.key(cfg.seed), hidden_size=cfg.hidden_size, levels=cfg.levels, cell=cfg.cell)
    train_levels = D.quantize(splits.train.images, cfg.levels)
    batches = _batches(cfg, len(train_levels), lambda idx, rng: (splits.train.labels[idx], train_levels[idx]))
    fitted = _fit(cfg, params, _generator_loss, batches, out)
    params = fitted.state.params

    test_levels = jnp.asarray(D.quantize(splits.test.images, cfg.levels))
    test_loss, _ = jax.jit(_generator_loss)(params, (jnp.asarray(splits.test.labels), test_levels), None)

    wanted = np.repeat(np.arange(D.NUM_CLASSES), cfg.samples_per_class)
    keys = jax.random.split(jax.random.key(cfg.seed + 1), len(wanted))
    draw = partial(generate_image, temperature=cfg.temperature)
    drawn = jax.jit(jax.vmap(draw, (None, 0, 0)))(params, jnp.asarray(wanted), keys)

    checker_cfg = ClassifyConfig(seed=cfg.seed, steps=cfg.classifier_steps, progress=cfg.progress, cell="gru")
    checker, _ = train_classifier(checker_cfg, splits)
    # The drawn digits and the real test digits through the checker in one call.
    judge_all = jax.jit(jax.vmap(classifier_logits, (None, 0)))
    checked = np.asarray(judge_all(checker, jnp.concatenate([drawn, jnp.asarray(splits.test.images)])).argmax(-1))
    judged, checker_test = checked[: len(wanted)], checked[len(wanted) :]
    share = float((judged == wanted).mean())
    metrics = {
        "labelled_as_requested": share,
        "labelled_as_requested_by_class": [round(float((judged[wanted == c] == c).mean()), 3) for c in range(10)],
        "checker_test_accuracy": float((checker_test == splits.test.labels).mean()),
        "test_nll_nats_per_image": float(test_loss),
        "target": "labelled_as_requested >= 0.80",
        "target_met": share >= 0.80,
    }
    png = _plot_samples(out / "generate.png", np.asarray(drawn), wanted, judged, columns=min(10, cfg.samples_per_class))
    return _finish("generate", cfg, params, metrics, fitted, png, n_samples=len(wanted))


# ---------------------------------------------------------------------------------------------------
# Sequential processing of a fixed input: glimpses
# ---------------------------------------------------------------------------------------------------


def image_windows(image_88, patch: int) -> Array:
    """``[N, patch * patch]``: every window of the image at stride 1, in the order of
    :func:`rnn_jax.data.images.sliding_patches` (row-major top-left corners), as a jnp gather."""
    n = D.SIDE - patch + 1
    rows = jnp.arange(n)[:, None] + jnp.arange(patch)[None, :]  # [n, p]: pixel rows of each window row
    windows = image_88[rows[:, None, :, None], rows[None, :, None, :]]  # [n, n, p, p]
    return windows.reshape(n * n, patch * patch)


def glimpse_logits(params: GlimpseParams, image_88, *, patch: int, glimpses: int, hard: bool):
    """Look at the image ``glimpses`` times, one ``patch x patch`` window each, and classify at the end.

    The windows are every position of the patch (stride 1); at each step the model's attention over
    them (from its hidden state) chooses the next one. Returns ``(logits [10], looks [G, N])``.
    """
    out = glimpse_apply(params, image_windows(image_88, patch), steps=glimpses, hard=hard)
    return out.logits, out.looks


def glimpse(cfg: GlimpseConfig = GlimpseConfig()) -> Result:
    """Sequential processing of a fixed input: a glimpse per step, the next place chosen by the model.

    Reports the test accuracy and how the looks depend on the image; plots the glimpse path on a few.
    """
    out = _out_dir(cfg, "glimpse")
    splits = D.split_digits(seed=cfg.seed)
    _check_config(cfg, len(splits.train.labels))
    if not 1 <= cfg.patch <= D.SIDE or cfg.glimpses < 1:
        raise UserError(f"need a patch in 1..{D.SIDE} and glimpses >= 1, got {cfg.patch} and {cfg.glimpses}")
    n = D.SIDE - cfg.patch + 1
    params = glimpse_init(
        jax.random.key(cfg.seed),
        n_parts=n * n,
        part_size=cfg.patch**2,
        hidden_size=cfg.hidden_size,
        n_classes=D.NUM_CLASSES,
        cell=cfg.cell,
    )
    logits_fn = partial(_first, partial(glimpse_logits, patch=cfg.patch, glimpses=cfg.glimpses, hard=cfg.hard))
    batches = _batches(
        cfg, len(splits.train.labels), lambda idx, rng: (splits.train.images[idx], splits.train.labels[idx])
    )
    fitted = _fit(cfg, params, partial(_classification_loss, logits_fn), batches, out)
    params = fitted.state.params

    looks_fn = partial(glimpse_logits, patch=cfg.patch, glimpses=cfg.glimpses, hard=cfg.hard)
    (logits, looks), (val_logits, _) = _on_test_and_val(looks_fn, params, splits)
    _, corners = D.sliding_patches(np.zeros((D.SIDE, D.SIDE)), cfg.patch)
    centres = looks @ corners + (cfg.patch - 1) / 2  # [N_test, G, 2] expected (row, col) of each look
    paths = [tuple(p) for p in looks.argmax(-1).tolist()]
    common = max(set(paths), key=paths.count)
    metrics = {
        "test_accuracy": _accuracy(logits, splits.test.labels),
        "val_accuracy": _accuracy(val_logits, splits.val.labels),
        "distinct_paths": len(set(paths)),
        "share_on_most_common_path": round(paths.count(common) / len(paths), 4),
        "mean_distinct_windows_per_image": round(float(np.mean([len(set(p)) for p in paths])), 3),
        "attention_max_weight_by_step": [round(float(w), 3) for w in looks.max(-1).mean(0)],
    }
    png = _plot_glimpses(out / "glimpse.png", splits.test, logits.argmax(-1), centres, cfg.patch, hard=cfg.hard)
    return _finish("glimpse", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


def _first(fn, *args):
    return fn(*args)[0]


# ---------------------------------------------------------------------------------------------------
# Many to many, synchronised: a label at every frame of a noisy, occluded video
# ---------------------------------------------------------------------------------------------------


class VideoParams(NamedTuple):
    cell: Any  # reads one frame (64 pixels) per step
    head: Dense  # [H, 10]: the label at every frame


def video_init(key, *, hidden_size: int, cell: str = "gru") -> VideoParams:
    k1, k2 = jax.random.split(key)
    return VideoParams(cell_init(cell, k1, D.SIDE * D.SIDE, hidden_size), dense_init(k2, hidden_size, D.NUM_CLASSES))


def video_logits(params: VideoParams, frames_F88) -> Array:
    """Many to many, synchronised: ``[F, 10]``, the label after each frame from everything seen so far."""
    xs = frames_F88.reshape(frames_F88.shape[0], -1)
    _, ys = many_to_many(cell_of(params.cell), params.cell, None, xs)
    return _heads(params.head, ys)


def _video_loss(params, batch, key):
    del key
    frames, labels = batch
    logits = jax.vmap(video_logits, (None, 0))(params, frames)
    per_frame = jnp.broadcast_to(labels[:, None], logits.shape[:2])
    # A label at every frame, each frame weighted alike: the per-token mean.
    return losses.sequence_cross_entropy(logits, per_frame).per_token_mean, {}


def video(cfg: VideoConfig = VideoConfig()) -> Result:
    """Many to many: label every frame of a noisy, partly occluded video of one digit.

    Each frame alone is ambiguous; the hidden state accumulates the evidence, so the accuracy rises
    with the frame index. Reports the test accuracy at every frame (fresh noise, fixed seed).
    """
    out = _out_dir(cfg, "video")
    splits = D.split_digits(seed=cfg.seed)
    _check_config(cfg, len(splits.train.labels))
    make = partial(D.video_frames, n_frames=cfg.frames, noise=cfg.noise, occlusion=cfg.occlusion)
    try:
        make(splits.train.images[:1], seed=0)
    except ValueError as err:
        raise UserError(str(err)) from None
    params = video_init(jax.random.key(cfg.seed), hidden_size=cfg.hidden_size, cell=cfg.cell)
    train_split = splits.train
    batches = _batches(
        cfg,
        len(train_split.labels),
        lambda idx, rng: (make(train_split.images[idx], seed=rng), train_split.labels[idx]),
    )
    fitted = _fit(cfg, params, _video_loss, batches, out)
    params = fitted.state.params

    test_frames = make(splits.test.images, seed=np.random.default_rng([cfg.seed, 10**6]))
    logits = jax.jit(jax.vmap(video_logits, (None, 0)))(params, jnp.asarray(test_frames))
    predicted = np.asarray(logits.argmax(-1))
    by_frame = (predicted == splits.test.labels[:, None]).mean(0)
    metrics = {
        "test_accuracy_by_frame": [round(float(a), 4) for a in by_frame],
        "first_frame_accuracy": float(by_frame[0]),
        "last_frame_accuracy": float(by_frame[-1]),
        "target": "last_frame_accuracy > first_frame_accuracy",
        "target_met": bool(by_frame[-1] > by_frame[0]),
    }
    png = _plot_video(out / "video.png", by_frame, test_frames, predicted, splits.test.labels, cfg)
    return _finish("video", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


# ---------------------------------------------------------------------------------------------------
# Training and bookkeeping shared by the experiments
# ---------------------------------------------------------------------------------------------------


def _out_dir(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.out_dir or f"runs/digits/{name}")


def _batches(cfg: TrainConfig, n: int, take):
    """``batches(step)``: a pure function of the step, so a rerun sees the same data in the same order.

    Each epoch is a fresh permutation of the ``n`` training images (seeded by ``(seed, epoch)``);
    ``take(indices, rng)`` builds the batch (``rng`` is seeded by ``(seed, step)`` for per-batch noise).
    """
    per_epoch = n // cfg.batch_size

    def batches(step: int):
        epoch, i = divmod(step, per_epoch)
        idx = np.random.default_rng([cfg.seed, epoch]).permutation(n)[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        return take(idx, np.random.default_rng([cfg.seed, 1, step]))

    return batches


def _fit(cfg: TrainConfig, params, loss_fn, batches, out_dir) -> train.FitResult:
    optimizer = train.make_optimizer(
        cfg.learning_rate,
        total_steps=cfg.steps,
        warmup_steps=min(100, cfg.steps // 10),
        weight_decay=cfg.weight_decay,
    )
    state = train.init_state(params, optimizer, jax.random.key(cfg.seed))
    if out_dir is not None:  # a fresh run: do not append to the log of an earlier one
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.jsonl").unlink(missing_ok=True)
    return train.fit(
        state,
        train.make_train_step(loss_fn, optimizer),
        batches,
        steps=cfg.steps,
        out_dir=out_dir,
        items_per_step=cfg.batch_size,
        item_name="images",
        log_every=100,
        progress=cfg.progress,
    )


def _finish(name: str, cfg: TrainConfig, params, metrics: dict, fitted: train.FitResult, png: Path, **extra) -> Result:
    metrics = {
        "experiment": name,
        **metrics,
        "train_seconds": round(fitted.elapsed_s, 2),
        "train_images_per_s": round(fitted.items_per_s, 1),
        **extra,
        "png": str(png),
        "config": dataclasses.asdict(cfg),
    }
    (png.parent / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return Result(params, metrics, png)


# ---------------------------------------------------------------------------------------------------
# Figures (matplotlib, imported when a figure is drawn)
# ---------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def _plot_accuracy_curve(path: Path, accuracy, *, xlabel: str, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(1, len(accuracy) + 1)
    ax.plot(steps, accuracy, "o-", ms=3)
    ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _plot_captions(path: Path, split: D.DigitSplit, captions: list[str], n: int = 16) -> Path:
    """The first test images with their captions; wrong ones (in red) are shown first."""
    plt = _pyplot()
    wrong = [i for i, c in enumerate(captions) if c != D.CLASS_NAMES[split.labels[i]]]
    right = [i for i in range(len(captions)) if i not in set(wrong)]
    shown = (wrong[: n // 4] + right)[:n]
    fig, axes = plt.subplots(2, n // 2, figsize=(n * 0.6, 3.4))
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(split.images[i], cmap="gray_r", vmin=0, vmax=1)
        bad = i in wrong
        title = f'"{captions[i]}"' + (f"\n(true: {D.CLASS_NAMES[split.labels[i]]})" if bad else "\n")
        ax.set_title(title, fontsize=8, color="red" if bad else "black")
        ax.axis("off")
    fig.suptitle("One to many: image feature -> h0, greedy caption (red: wrong)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _plot_samples(path: Path, drawn, wanted, judged, columns: int) -> Path:
    """One row per class; a red frame where the classifier disagrees with the requested class."""
    plt = _pyplot()
    fig, axes = plt.subplots(D.NUM_CLASSES, columns, figsize=(columns * 0.55, D.NUM_CLASSES * 0.55))
    axes = np.asarray(axes).reshape(D.NUM_CLASSES, columns)
    for c in range(D.NUM_CLASSES):
        idx = np.flatnonzero(wanted == c)[:columns]
        for ax, i in zip(axes[c], idx, strict=False):
            ax.imshow(drawn[i], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            bad = judged[i] != wanted[i]
            for s in ax.spines.values():
                s.set_color("red" if bad else "white")
                s.set_linewidth(2 if bad else 0.5)
        axes[c, 0].set_ylabel(str(c), rotation=0, labelpad=8, fontsize=9)
    fig.suptitle("Drawn row by row per class (red: classifier disagrees)", fontsize=8)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.94, bottom=0.01, wspace=0.05, hspace=0.05)
    return _save(fig, path)


def _plot_glimpses(path: Path, split: D.DigitSplit, predicted, centres, patch: int, *, hard: bool, n: int = 8) -> Path:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(2, n // 2, figsize=(n * 0.9, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.9, centres.shape[1]))
    for i, ax in enumerate(axes.ravel()):
        ax.imshow(split.images[i], cmap="gray_r", vmin=0, vmax=1)
        rc = centres[i]
        ax.plot(rc[:, 1], rc[:, 0], "-", color="orange", lw=1.5)
        for t, (r, c) in enumerate(rc):
            ax.add_patch(
                Rectangle((c - patch / 2, r - patch / 2), patch, patch, fill=False, ec=colours[t], lw=1.2, alpha=0.9)
            )
            ax.text(
                c,
                r,
                str(t + 1),
                color="white",
                ha="center",
                va="center",
                fontsize=8,
                fontweight="bold",
                bbox={"boxstyle": "circle,pad=0.15", "fc": colours[t], "ec": "none"},
            )
        ok = predicted[i] == split.labels[i]
        ax.set_title(f"label {split.labels[i]}, said {predicted[i]}", fontsize=8, color="black" if ok else "red")
        ax.set_xlim(-0.5, D.SIDE - 0.5)
        ax.set_ylim(D.SIDE - 0.5, -0.5)
        ax.axis("off")
    kind = "hard (one window)" if hard else "soft (expected centre)"
    fig.suptitle(f"Glimpses: {patch}x{patch} windows, {kind}, numbered in order", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _plot_video(path: Path, by_frame, frames, predicted, labels, cfg: VideoConfig) -> Path:
    plt = _pyplot()
    F = len(by_frame)
    fig = plt.figure(figsize=(max(6.0, F * 0.75), 5.0))
    grid = fig.add_gridspec(2, F, height_ratios=[2.2, 1.2])
    ax = fig.add_subplot(grid[0, :])
    ax.plot(np.arange(1, F + 1), by_frame, "o-", ms=3)
    ax.set_xlabel("frame")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"Many to many: a label at every frame (noise {cfg.noise}, {cfg.occlusion}x{cfg.occlusion} occluder)",
        fontsize=9,
    )
    # One test video whose first guess is wrong, if there is one: the evidence piling up is visible.
    late = np.flatnonzero((predicted[:, 0] != labels) & (predicted[:, -1] == labels))
    i = int(late[0]) if len(late) else 0
    for f in range(F):
        a = fig.add_subplot(grid[1, f])
        a.imshow(frames[i, f], cmap="gray_r", vmin=0, vmax=1)
        a.set_title(str(predicted[i, f]), fontsize=9, color="black" if predicted[i, f] == labels[i] else "red")
        a.set_xticks([])
        a.set_yticks([])
        if f == 0:
            a.set_ylabel(f"a {labels[i]}:\nguesses", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------

EXPERIMENTS: dict[str, tuple[Any, type]] = {
    "classify": (classify, ClassifyConfig),
    "caption": (caption, CaptionConfig),
    "generate": (generate, GenerateConfig),
    "glimpse": (glimpse, GlimpseConfig),
    "video": (video, VideoConfig),
}


def _add_config_arguments(parser: argparse.ArgumentParser, config_type: type):
    """One ``--flag`` per config field, typed and defaulted from the dataclass."""
    shared = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(config_type):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help") or shared.get(f.name, "")  # a field re-defaulted in a subclass
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            default = f" (default {f.default})" if f.default != "" else ""
            parser.add_argument(flag, type=type(f.default), default=f.default, help=help_text + default)


def cli_main(argv: list[str], prog: str = "rnn-jax digits") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, (fn, config_type) in EXPERIMENTS.items():
        _add_config_arguments(sub.add_parser(name, help=fn.__doc__.splitlines()[0]), config_type)
    args = vars(parser.parse_args(argv))
    name = args.pop("experiment")
    fn, config_type = EXPERIMENTS[name]
    start = time.perf_counter()
    result = fn(config_type(**args))
    metrics = {**result.metrics, "total_seconds": round(time.perf_counter() - start, 2)}
    summary = {k: v for k, v in metrics.items() if k != "config"}
    print(f"{name}: figure {result.png}, metrics {result.png.parent / (name + '.json')}")
    print(json.dumps(summary))
    return 0
