"""The digits experiments' configs: one frozen dataclass per experiment, defaults as measured in docs/digits.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from rnn_jax.cells import CELLS
from rnn_jax.errors import UserError

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


def check_config(cfg: TrainConfig, n_train: int) -> None:
    """The settings every experiment shares, checked against the ``n_train`` training images."""
    if cfg.cell not in CELLS:
        raise UserError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
    for name in ("hidden_size", "steps", "batch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if cfg.batch_size > n_train:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {n_train} training images")
