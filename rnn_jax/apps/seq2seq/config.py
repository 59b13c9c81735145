"""The seq2seq trainer's config: one frozen dataclass, its checks, and the fields that fix a model's structure."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["Config", "CELL_KINDS", "ATTENTIONS", "MODEL_FIELDS", "COMPUTE_DTYPES", "model_meta", "check_config"]

CELL_KINDS = ("lstm", "gru", "vanilla")
ATTENTIONS = ("luong", "bahdanau", "none")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. Model fields (``MODEL_FIELDS``) must match to restore a checkpoint."""

    task: str = "addition"  # one of pairs.TASKS, ignored with `pairs`
    pairs: str | None = None  # a TSV file of source<TAB>target lines
    source_unit: str = "char"  # TSV only: "char" or "word" (space-separated tokens)
    target_unit: str = "char"
    keep_stress: bool = False  # g2p: keep the ARPAbet stress digits
    cell: str = "lstm"
    bidirectional: bool = True
    attention: str = "luong"
    embed_size: int = 64
    hidden_size: int = 128
    layers: int = 1  # depth of the encoder and of the decoder
    dropout: float = 0.0  # between stacked layers and before the output layer, in training
    batch_size: int = 128
    learning_rate: float = 3e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    teacher_forcing: float = 1.0  # final teacher-forcing ratio r (1: always read the target)
    teacher_forcing_decay_steps: int = 0  # r decays linearly from 1 to `teacher_forcing` over these steps
    steps: int | None = None
    minutes: float | None = None
    beam: int = 1  # width for the test metrics at the end (1: greedy only)
    length_penalty: float = 0.0
    eval_every: int = 500
    eval_size: int = 1000  # validation sources decoded at every evaluation
    eval_batch_size: int = 256
    pad_multiple: int = 8
    seed: int = 0
    dtype: str = "float32"  # compute dtype of the train step; params, optimiser and loss stay float32
    devices: int | None = None  # split each batch over this many devices (None: one device, no mesh)
    out: str | None = "runs/seq2seq"
    resume: bool = False
    progress: bool = True


MODEL_FIELDS = ("cell", "bidirectional", "attention", "embed_size", "hidden_size", "task", "keep_stress")
NEWER_MODEL_FIELDS = {"layers": 1}
"""Model fields added later, with the value that checkpoints written before them have: they enter a
checkpoint's meta only when they differ from it, so older runs still resume and load."""


def model_meta(config: Config) -> dict:
    """The config fields that fix the params' structure (checked when a run is resumed)."""
    meta = {k: getattr(config, k) for k in MODEL_FIELDS}
    meta.update({k: getattr(config, k) for k, old in NEWER_MODEL_FIELDS.items() if getattr(config, k) != old})
    return meta


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def check_config(c: Config) -> None:
    """Every setting in range, or a :class:`UserError` naming the field, what came and what is allowed."""
    if c.pairs is None and c.task not in P.TASKS:
        raise UserError(f"unknown task {c.task!r}; expected one of {', '.join(P.TASKS)} (or --pairs FILE.tsv)")
    if c.cell not in CELL_KINDS:
        raise UserError(f"cell must be one of {CELL_KINDS}, got {c.cell!r}")
    if c.attention not in ATTENTIONS:
        raise UserError(f"attention must be one of {ATTENTIONS}, got {c.attention!r}")
    if not isinstance(c.beam, int) or c.beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {c.beam!r}")
    if not isinstance(c.layers, int) or c.layers < 1:
        raise UserError(f"layers must be an integer >= 1, got {c.layers!r}")
    if not 0.0 <= c.dropout < 1.0:
        raise UserError(f"dropout must lie in [0, 1), got {c.dropout}")
    if not 0.0 <= c.teacher_forcing <= 1.0:
        raise UserError(f"teacher forcing ratio must lie in [0, 1], got {c.teacher_forcing}")
    if c.dtype not in COMPUTE_DTYPES:
        raise UserError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {c.dtype!r}")
    if c.devices is not None and (not isinstance(c.devices, int) or c.devices < 1 or c.batch_size % c.devices):
        raise UserError(
            f"devices must be a positive integer that divides the batch size {c.batch_size}, got {c.devices!r}"
        )
    for name in (
        "embed_size",
        "hidden_size",
        "batch_size",
        "eval_every",
        "eval_size",
        "eval_batch_size",
        "pad_multiple",
    ):
        value = getattr(c, name)
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    if c.length_penalty < 0:
        raise UserError(f"length penalty must be >= 0, got {c.length_penalty}")
