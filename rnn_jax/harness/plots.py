"""The one matplotlib set-up of every application: a file backend, a figure, a save, the loss curve.

Applications draw with ``plt = pyplot()`` and ``fig, ax = figure(...)``, then ``save(fig, path)``;
matplotlib is imported only when a figure is drawn (so importing a trainer does not pay for it), with
the ``Agg`` backend (no display needed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rnn_jax.errors import UserError

__all__ = ["pyplot", "figure", "save", "loss_curve"]


def pyplot():
    """``matplotlib.pyplot`` on the ``Agg`` backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(nrows: int = 1, ncols: int = 1, *, figsize=(6, 3.5), dpi: int = 80, **kwargs):
    """``plt.subplots(...)`` with the house size and resolution; returns ``(fig, axes)``."""
    return pyplot().subplots(nrows, ncols, figsize=figsize, dpi=dpi, **kwargs)


def save(fig, path: str | os.PathLike, *, dpi: int | None = None) -> Path:
    """Lay out, write ``fig`` to ``path`` (its directory created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        fig.savefig(path, **({"dpi": dpi} if dpi is not None else {}))
    except OSError as err:  # a full disk: one line naming the file
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        pyplot().close(fig)
    return path


def _read_losses(metrics_path) -> tuple[list, list]:
    train, val = [], []
    with open(metrics_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by a kill
                continue
            if record.get("kind") == "train":
                train.append((record["step"], record["loss"]))
            elif record.get("kind") == "eval" and "val_loss" in record:
                val.append((record["step"], record["val_loss"]))
    return train, val


def loss_curve(metrics_path, png_path, *, title: str | None = None) -> Path:
    """Training and validation loss against the step, from a ``metrics.jsonl`` file (see :class:`Sink`)."""
    train, val = _read_losses(metrics_path)
    fig, ax = figure()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", lw=1.5, ms=3)
    points = train + val
    if points:
        # Zoom on the part worth reading: the first 5% of the steps (the drop from the initial loss) may leave it.
        last = max(step for step, _ in points)
        later = [loss for step, loss in points if step >= 0.05 * last] or [loss for _, loss in points]
        low, high = min(later), max(later)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per item)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, png_path)
