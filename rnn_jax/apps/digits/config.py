"""The digits experiments' configs: one frozen dataclass per experiment, defaults as measured in docs/digits.md.

Their fields are the flags of ``rnn-jax digits NAME`` (:func:`rnn_jax.harness.add_config_arguments`); the
shared settings have the names every trainer uses (``hidden_size``, ``batch_size``, ``learning_rate``,
``out``, ``verbose``), with ``--out-dir`` and ``--progress`` kept as aliases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rnn_jax import harness
from rnn_jax.errors import UserError
from rnn_jax.harness import field, shared_field

__all__ = [
    "TrainConfig",
    "ClassifyConfig",
    "CaptionConfig",
    "GenerateConfig",
    "GlimpseConfig",
    "VideoConfig",
    "Result",
    "check_config",
]

_STEPS_HELP = "training steps (one batch each)"


@dataclass(frozen=True)
class TrainConfig:
    """What every experiment shares: the cell, its size, the optimiser's budget, and :func:`rnn_jax.run`'s
    ``unroll`` and ``impl`` for the training loss (``impl="pallas"`` is refused: :func:`check_config`)."""

    cell: str = shared_field("cell", "gru")
    hidden_size: int = shared_field("hidden_size", 64)
    steps: int = field(1500, _STEPS_HELP)
    batch_size: int = shared_field("batch_size", 64)
    learning_rate: float = shared_field("learning_rate", 3e-3)
    weight_decay: float = shared_field("weight_decay", 1e-4)
    seed: int = field(0, "seed of the split, the init and the batches")
    out: str | None = field(None, "where the PNG, the JSON and metrics.jsonl go (none: runs/digits/NAME)",
                            aliases=("out_dir",), metavar="DIR")  # fmt: skip
    verbose: bool = shared_field("verbose", True)
    unroll: int | None = shared_field("unroll")
    impl: str = shared_field("impl", "auto")


@dataclass(frozen=True)
class ClassifyConfig(TrainConfig):
    read: str = field("rows", "feed the image as 8 rows or 64 pixels", choices=("rows", "pixels"))
    train_lengths: str = field("full", "train on whole images, or on random prefixes (answer early)",
                               choices=("full", "random"))  # fmt: skip


@dataclass(frozen=True)
class CaptionConfig(TrainConfig):
    feature_size: int = field(128, "size of the image feature that sets h_0")
    embed_size: int = field(16, "character embedding size")


@dataclass(frozen=True)
class GenerateConfig(TrainConfig):
    hidden_size: int = shared_field("hidden_size", 128)
    steps: int = field(1200, _STEPS_HELP)
    levels: int = field(5, "grey levels each pixel is drawn from")
    temperature: float = field(0.7, "sampling temperature (0: most likely level)")
    samples_per_class: int = field(50, "digits drawn per class for the check")
    classifier_steps: int = field(1000, "training steps of the checking classifier")


@dataclass(frozen=True)
class GlimpseConfig(TrainConfig):
    patch: int = field(4, "side of the square patch seen by one glimpse")
    glimpses: int = field(4, "glimpses before the decision")
    hard: bool = field(True, "look at exactly one patch (straight-through) or blend them")


@dataclass(frozen=True)
class VideoConfig(TrainConfig):
    steps: int = field(2000, _STEPS_HELP)
    frames: int = field(8, "frames per video")
    noise: float = field(0.5, "std of the Gaussian pixel noise of each frame")
    occlusion: int = field(4, "side of the square blanked out in each frame")


class Result(NamedTuple):
    """What an experiment returns: the trained params, the metrics (also in ``name.json``) and the figure."""

    params: Any
    metrics: dict
    png: Path


def check_config(cfg: TrainConfig, n_train: int) -> TrainConfig:
    """The settings every experiment shares (messages name the field), checked against ``n_train`` images."""
    cfg = harness.check_config(cfg)
    harness.check_int("steps", cfg.steps)
    if cfg.impl == "pallas":
        raise UserError(
            "impl='pallas' cannot train the digits models: they run one example at a time under jax.vmap, and "
            "the Pallas kernel's gradient has no vmap rule; use impl='scan' (or 'auto')"
        )
    if cfg.batch_size > n_train:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {n_train} training images")
    return cfg
