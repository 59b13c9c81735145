"""The digits experiments' figures, drawn with the harness's matplotlib set-up (:mod:`rnn_jax.harness.plots`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnn_jax import harness
from rnn_jax.apps.digits.config import VideoConfig
from rnn_jax.data import images as imagedata

__all__ = ["plot_accuracy_curve", "plot_captions", "plot_samples", "plot_glimpses", "plot_video"]


def plot_accuracy_curve(path: Path, accuracy, *, xlabel: str, title: str) -> Path:
    plt = harness.pyplot()
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
    return harness.save(fig, path, dpi=80)


def plot_captions(path: Path, split: imagedata.DigitSplit, captions: list[str], n: int = 16) -> Path:
    """The first test images with their captions; wrong ones (in red) are shown first."""
    plt = harness.pyplot()
    wrong = [i for i, c in enumerate(captions) if c != imagedata.CLASS_NAMES[split.labels[i]]]
    right = [i for i in range(len(captions)) if i not in set(wrong)]
    shown = (wrong[: n // 4] + right)[:n]
    fig, axes = plt.subplots(2, n // 2, figsize=(n * 0.6, 3.4))
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(split.images[i], cmap="gray_r", vmin=0, vmax=1)
        bad = i in wrong
        title = f'"{captions[i]}"' + (f"\n(true: {imagedata.CLASS_NAMES[split.labels[i]]})" if bad else "\n")
        ax.set_title(title, fontsize=8, color="red" if bad else "black")
        ax.axis("off")
    fig.suptitle("One to many: image feature -> h0, greedy caption (red: wrong)", fontsize=9)
    return harness.save(fig, path, dpi=80)


def plot_samples(path: Path, drawn, wanted, judged, columns: int) -> Path:
    """One row per class; a red frame where the classifier disagrees with the requested class."""
    plt = harness.pyplot()
    fig, axes = plt.subplots(imagedata.NUM_CLASSES, columns, figsize=(columns * 0.55, imagedata.NUM_CLASSES * 0.55))
    axes = np.asarray(axes).reshape(imagedata.NUM_CLASSES, columns)
    for c in range(imagedata.NUM_CLASSES):
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
    return harness.save(fig, path, dpi=80)


def plot_glimpses(
    path: Path, split: imagedata.DigitSplit, predicted, centres, patch: int, *, hard: bool, n: int = 8
) -> Path:
    plt = harness.pyplot()
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
        ax.set_xlim(-0.5, imagedata.SIDE - 0.5)
        ax.set_ylim(imagedata.SIDE - 0.5, -0.5)
        ax.axis("off")
    kind = "hard (one window)" if hard else "soft (expected centre)"
    fig.suptitle(f"Glimpses: {patch}x{patch} windows, {kind}, numbered in order", fontsize=9)
    return harness.save(fig, path, dpi=80)


def plot_video(path: Path, by_frame, frames, predicted, labels, cfg: VideoConfig) -> Path:
    plt = harness.pyplot()
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
    return harness.save(fig, path, dpi=80)
