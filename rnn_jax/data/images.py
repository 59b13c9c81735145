"""The 8x8 handwritten digits bundled with scikit-learn, as sequences for the image experiments.

``load_digits`` reads the 1,797 images shipped inside scikit-learn (no download) and scales the
pixels from ``0..16`` to ``[0, 1]``. :func:`split_digits` cuts them into train / validation / test
with a fixed seed, stratified by class so every split holds each digit in the same proportion.

The experiments read an image as a sequence: :func:`as_rows` gives ``T = 8`` rows of ``I = 8``
pixels, :func:`as_pixels` gives ``T = 64`` single pixels in raster order. :func:`video_frames` turns
one image into a "video" of noisy, partly occluded frames, and the caption helpers turn a label into
the characters of its name (``7 -> "seven"``) between a start and an end token.

scikit-learn is an optional extra: ``pip install 'rnn-jax[digits]'``. Everything else here is numpy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from rnn_jax.errors import UserError

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "SIDE",
    "CAPTION_VOCAB",
    "START",
    "END",
    "DigitSplit",
    "DigitSplits",
    "load_digits",
    "split_digits",
    "as_rows",
    "as_pixels",
    "quantize",
    "sliding_patches",
    "caption_tokens",
    "decode_caption",
    "video_frames",
]

SIDE = 8
NUM_CLASSES = 10
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Caption tokens: 0 is the start token (the decoder's first input), 1 the end token, then the letters.
START, END = 0, 1
CAPTION_VOCAB = ("<start>", "<end>") + tuple(sorted(set("".join(CLASS_NAMES))))
_CHAR_ID = {ch: i for i, ch in enumerate(CAPTION_VOCAB) if len(ch) == 1}


class DigitSplit(NamedTuple):
    """Images ``[N, 8, 8]`` (float32 in ``[0, 1]``) and their labels ``[N]`` (int32 in ``0..9``)."""

    images: np.ndarray
    labels: np.ndarray


class DigitSplits(NamedTuple):
    train: DigitSplit
    val: DigitSplit
    test: DigitSplit


def load_digits() -> DigitSplit:
    """All 1,797 digits from scikit-learn's bundled copy, pixels scaled to ``[0, 1]``."""
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:
        raise UserError(
            "the digits experiments need scikit-learn (it ships the 8x8 digits): pip install 'rnn-jax[digits]'"
        ) from err
    data = sklearn_load_digits()
    return DigitSplit(np.asarray(data.images / 16.0, np.float32), np.asarray(data.target, np.int32))


def split_digits(
    data: DigitSplit | None = None, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> DigitSplits:
    """A fixed, class-stratified train / validation / test split (the same for the same ``seed``).

    Each class is shuffled on its own and cut at ``test_fraction`` and ``val_fraction`` of its count,
    so the three splits hold every digit in the proportion of the whole set.
    """
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UserError(
            f"val_fraction and test_fraction must lie in [0, 1) and (0, 1) with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    data = load_digits() if data is None else data
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(data.labels):
        idx = rng.permutation(np.flatnonzero(data.labels == c))
        n_test, n_val = round(test_fraction * len(idx)), round(val_fraction * len(idx))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])

    def take(name: str) -> DigitSplit:
        idx = rng.permutation(np.concatenate(parts[name]))  # mix the classes
        return DigitSplit(data.images[idx], data.labels[idx])

    return DigitSplits(take("train"), take("val"), take("test"))


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 2 or images.shape[-2:] != (SIDE, SIDE):
        raise ValueError(f"expected images of shape [..., {SIDE}, {SIDE}], got {images.shape}")
    return images


def as_rows(images) -> np.ndarray:
    """``[..., 8, 8] -> [..., T=8, I=8]``: row ``t`` of the image is the input at step ``t``."""
    return _check_images(images)


def as_pixels(images) -> np.ndarray:
    """``[..., 8, 8] -> [..., T=64, I=1]``: one pixel per step, in raster order (row by row)."""
    images = _check_images(images)
    return images.reshape(images.shape[:-2] + (SIDE * SIDE, 1))


def quantize(images, levels: int) -> np.ndarray:
    """Round pixels in ``[0, 1]`` to the nearest of ``levels`` evenly spaced values; returns the level ids.

    ``ids / (levels - 1)`` is the quantised image; the generator predicts these ids as classes.
    """
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    return np.rint(np.clip(np.asarray(images), 0.0, 1.0) * (levels - 1)).astype(np.int32)


def sliding_patches(images, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``size x size`` patch of each image, at stride 1: the places a glimpse may look.

    Returns:
      ``(patches [..., N, size * size], corners [N, 2])`` with ``N = (8 - size + 1) ** 2`` patches in
      row-major order of their top-left corners ``(row, col)``.
    """
    images = _check_images(images)
    if not 1 <= size <= SIDE:
        raise ValueError(f"the patch size must lie in 1..{SIDE}, got {size}")
    n = SIDE - size + 1
    corners = np.array([(r, c) for r in range(n) for c in range(n)], np.int32)
    patches = [images[..., r : r + size, c : c + size].reshape(images.shape[:-2] + (size * size,)) for r, c in corners]
    return np.stack(patches, axis=-2), corners


def caption_tokens(labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forcing pairs for the class names of ``labels``.

    For ``7`` ("seven"): inputs ``<start> s e v e n``, targets ``s e v e n <end>``, length 6. Shorter
    names are padded with ``<end>`` after their length (masked out of the loss by ``lengths``).

    Returns:
      ``(inputs_NT, targets_NT, lengths_N)`` with ``T = len("three") + 1 = 6``.
    """
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    T = max(len(name) for name in CLASS_NAMES) + 1
    table = np.full((NUM_CLASSES, T + 1), END, np.int32)
    table[:, 0] = START
    for c, name in enumerate(CLASS_NAMES):
        table[c, 1 : len(name) + 1] = [_CHAR_ID[ch] for ch in name]
    lengths = np.array([len(name) + 1 for name in CLASS_NAMES], np.int32)
    return table[labels, :-1], table[labels, 1:], lengths[labels]


def decode_caption(tokens) -> str:
    """The characters of ``tokens`` up to (not including) the first ``<end>``; ``<start>`` is skipped."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == END:
            break
        if t != START:
            out.append(CAPTION_VOCAB[t])
    return "".join(out)


def video_frames(
    images, *, n_frames: int, noise: float, occlusion: int, seed: int | np.random.Generator = 0
) -> np.ndarray:
    """A "video" of each image: ``n_frames`` noisy copies, each with a random square blanked out.

    Frame ``f`` of image ``x`` is ``clip(x + noise * eps_f, 0, 1)`` with ``eps_f ~ N(0, 1)`` per pixel,
    then a ``occlusion x occlusion`` square at a random position set to 0. Noise and occluder are drawn
    afresh for every frame, so evidence about the digit accumulates over the frames.

    Returns:
      ``[..., n_frames, 8, 8]`` float32.
    """
    images = _check_images(images).astype(np.float32)
    if n_frames < 1:
        raise ValueError(f"n_frames must be at least 1, got {n_frames}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if not 0 <= occlusion <= SIDE:
        raise ValueError(f"occlusion must lie in 0..{SIDE}, got {occlusion}")
    rng = np.random.default_rng(seed)
    batch = images.shape[:-2]
    frames = np.broadcast_to(images[..., None, :, :], batch + (n_frames, SIDE, SIDE))
    frames = frames + noise * rng.standard_normal(frames.shape, np.float32)
    if occlusion:
        # The occluder's top-left corner, uniform over the positions where it fits in the image.
        top = rng.integers(0, SIDE - occlusion + 1, batch + (n_frames, 1, 1))
        left = rng.integers(0, SIDE - occlusion + 1, batch + (n_frames, 1, 1))
        r = np.arange(SIDE)[:, None]
        c = np.arange(SIDE)[None, :]
        hidden = (r >= top) & (r < top + occlusion) & (c >= left) & (c < left + occlusion)
        frames = np.where(hidden, 0.0, frames)
    return np.clip(frames, 0.0, 1.0).astype(np.float32)
