"""The seq2seq trainer's config: one frozen dataclass (its fields are the command line's flags) and its checks."""

from __future__ import annotations

import dataclasses
import os

from rnn_jax import harness
from rnn_jax import train as training
from rnn_jax.apps.seq2seq.tasks import TASKS
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError
from rnn_jax.harness import field, shared_field
from rnn_jax.harness.usercells import check_with_cell
from rnn_jax.topologies import ATTENTIONS

__all__ = ["Config", "KIND", "CELL_KINDS", "ATTENTIONS", "MODEL_FIELDS", "check_config"]

KIND = "seq2seq"
CELL_KINDS = ("lstm", "gru", "vanilla")
"""The built-in cells by name (the command line's choices); from Python ``cell`` may be a user's Cell too."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on; ``rnn-jax seq2seq train`` has one flag per field (``--hidden-size``...).

    The data: a named ``task`` (:data:`rnn_jax.apps.seq2seq.tasks.TASKS`), or a ``pairs`` file (a path) of
    ``source<TAB>target`` lines, which replaces the task. The model fields (:data:`MODEL_FIELDS`) must match
    a checkpoint's to resume it. ``out=None`` (Python only) trains without writing anything. ``impl`` and
    ``unroll`` are :func:`rnn_jax.run`'s options for the train step (the encoder layers take ``impl`` as given,
    the attention decoder runs ``"scan"`` for ``"pallas"``: :func:`rnn_jax.topologies.step_impl`); evaluation
    and decoding use ``run``'s defaults.

    ``cell`` is a built-in cell's name (the command line takes these), or from Python your own
    :class:`rnn_jax.Cell` (it needs ``init``; its output ``y`` and its carry, one array or an LSTMState, hold
    ``hidden_size`` features) or its import path ``"module:attr"``: the encoder and the decoder are made of it.
    Checkpoints record the cell, a user's by its import path where it has one, so that loading finds it.
    """

    task: str = field("addition", f"one of {', '.join(TASKS)} (ignored with pairs)", metavar="TASK")
    pairs: str | None = field(None, "a UTF-8 file of source<TAB>target lines (replaces the task)", metavar="FILE.tsv")
    source_unit: str = field("char", "pairs file: source tokens are characters or space-separated words",
                             choices=("char", "word"))  # fmt: skip
    target_unit: str = field("char", "pairs file: target tokens are characters or words", choices=("char", "word"))
    max_source_len: int = field(pairdata.MAX_SOURCE_LEN, "pairs file: the longest source in tokens (longer: an error)")
    max_target_len: int = field(pairdata.MAX_TARGET_LEN, "pairs file: the longest target in tokens (longer: an error)")
    skip_long: bool = field(False, "pairs file: skip and count the lines over the length caps instead")
    keep_stress: bool = field(False, "g2p: keep the ARPAbet stress digits (AH0, OW1)")
    cell: str = shared_field("cell", "lstm")  # or, from Python, an rnn_jax.Cell with an init, or "module:attr"
    bidirectional: bool = field(True, "a bidirectional encoder (--unidirectional: forward only)")
    attention: str = field("luong", "attention over the encoder outputs", choices=ATTENTIONS)
    embed_size: int = shared_field("embed_size", 64)
    hidden_size: int = shared_field("hidden_size", 128)
    layers: int = shared_field("layers", 1)
    dropout: float = shared_field("dropout", 0.0)
    # training: the batches, scheduled sampling, the budget, the optimiser
    batch_size: int = shared_field("batch_size", 128)
    weight_decay: float = shared_field("weight_decay", 0.0)
    teacher_forcing: float = field(1.0, "final teacher-forcing ratio r (1: the decoder always reads the target)")
    teacher_forcing_decay_steps: int = field(0, "r decays linearly from 1 to teacher_forcing over these steps")
    warmup_steps: int = shared_field("warmup_steps", 200)
    steps: int | None = shared_field("steps")
    minutes: float | None = shared_field("minutes")
    learning_rate: float = shared_field("learning_rate", 3e-3)
    clip_norm: float = shared_field("clip_norm", 1.0)
    # evaluation
    beam: int = field(1, "beam width of the test metrics at the end (1: greedy only)")
    length_penalty: float = field(0.0, "beam ranking: log p / length ** length_penalty")
    eval_every: int = shared_field("eval_every", 500)
    checkpoint_every: int = shared_field("checkpoint_every", 500)
    eval_size: int = field(1000, "validation sources decoded at every evaluation")
    eval_batch_size: int = field(256, "sources per decoding batch (evaluation and translate)")
    # computation
    dtype: str = shared_field("dtype", "float32")
    devices: int | None = shared_field("devices")
    pad_multiple: int = field(8, "pad lengths to a multiple of this (fewer shapes to compile)")
    unroll: int | None = shared_field("unroll")
    impl: str = shared_field("impl", "auto")
    # the run
    seed: int = shared_field("seed", 0)
    out: str | None = shared_field("out", "runs/seq2seq")
    resume: bool = shared_field("resume", False)
    verbose: bool = shared_field("verbose", True)


MODEL_FIELDS = ("cell", "bidirectional", "attention", "embed_size", "hidden_size", "layers", "task", "keep_stress")
"""The fields that fix the params' structure and the vocabularies: a resumed run must match the checkpoint's."""

_POSITIVE = ("beam", "eval_size", "eval_batch_size", "pad_multiple", "max_source_len", "max_target_len")


def check_config(c: Config) -> Config:
    """Every setting in range, or a :class:`UserError` naming the field, what came and what is allowed.

    Returns the config with the budget filled in (:data:`rnn_jax.harness.DEFAULT_MINUTES` when neither
    ``steps`` nor ``minutes`` is given) and ``task="pairs"`` when a ``pairs`` file is given, its path made
    absolute (the checkpoints store it: evaluation from another directory finds the same file). ``cell`` comes
    back as a built-in's name or a user's :class:`rnn_jax.Cell` (one without ``init`` is refused).
    """
    c = check_with_cell(c, harness.check_config)
    if c.pairs is not None:
        c = dataclasses.replace(c, task="pairs", pairs=os.path.abspath(c.pairs))
    elif c.task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)} (or give a pairs file), got {c.task!r}")
    if c.attention not in ATTENTIONS:
        raise UserError(f"attention must be one of {ATTENTIONS}, got {c.attention!r}")
    for name in _POSITIVE:
        harness.check_int(name, getattr(c, name))
    harness.check_int("teacher_forcing_decay_steps", c.teacher_forcing_decay_steps, 0)
    harness.check_number("teacher_forcing", c.teacher_forcing, low=0.0, high=1.0, closed="[]")
    harness.check_number("length_penalty", c.length_penalty, closed="[)")
    if c.devices is not None:
        training.check_device_count(c.devices)  # before the batch's divisibility: too few devices is the real problem
    if c.devices is not None and c.batch_size % c.devices:
        raise UserError(f"devices must divide the batch size {c.batch_size}, got {c.devices!r}")
    return c
