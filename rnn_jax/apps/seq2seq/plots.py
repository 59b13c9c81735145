"""The seq2seq trainer's figure: attention heat maps (matplotlib, imported when drawn)."""

from __future__ import annotations

from pathlib import Path

from rnn_jax import harness

__all__ = ["plot_attention"]


def plot_attention(maps, path, title: str = "") -> Path:
    """One heat map per example: output step (rows) against source position (columns)."""
    n = len(maps)
    fig, axes = harness.figure(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, (src, out, w) in zip(axes[0], maps, strict=True):
        ax.imshow(w, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), [s if s != " " else "_" for s in src], fontsize=7)
        ax.set_yticks(range(len(out)), out, fontsize=7)
        ax.set_xlabel("source", fontsize=8)
    axes[0][0].set_ylabel("output", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return harness.save(fig, path)
