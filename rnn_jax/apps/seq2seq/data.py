"""The seq2seq trainer's data: vocabularies, encoded splits, the step-indexed batcher, the teacher-forcing schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from rnn_jax.apps.seq2seq import tasks
from rnn_jax.apps.seq2seq.config import Config
from rnn_jax.data import pairs as pairdata

__all__ = [
    "Prepared",
    "LengthBudget",
    "prepare",
    "load_config_task",
    "EpochBatches",
    "batch_arrays",
    "teacher_forcing_schedule",
]

SPARE_STEPS = 2
"""Decoding steps a length budget allows beyond the longest training pair it was fitted to."""


class LengthBudget(NamedTuple):
    """The longest output decoding may produce for a source of ``S`` tokens: ``ceil(ratio * S) + extra``
    (``</s>`` included).

    :meth:`fit` reads it off the training pairs: ``ratio`` is the largest ``len(target) / len(source)`` among
    pairs whose source is at least the median source length (a long input needs the slope of long words,
    not that of a one-letter abbreviation spelled out), rounded up to 0.01; ``extra`` is the smallest
    constant for which every training target and its ``</s>`` fit, plus :data:`SPARE_STEPS`. G2P on
    CMUdict: ``ratio`` 1.43 (``cmudict``: 7 letters, 10 phonemes), ``extra`` 13 (``fyi``: 3 letters,
    15 phonemes), so a 60-letter word may take 99 phonemes.
    """

    ratio: float
    extra: int

    def __call__(self, source_len: int) -> int:
        return math.ceil(self.ratio * source_len - 1e-9) + self.extra

    @classmethod
    def fit(cls, pairs: Sequence[tuple[int, int]]) -> LengthBudget:
        """The budget of ``(source length, target length)`` pairs (at least one, every source non-empty)."""
        src = np.array([s for s, _ in pairs], np.float64)
        tgt = np.array([t for _, t in pairs], np.float64)
        long = src >= np.median(src)
        ratio = math.ceil(float(np.max(tgt[long] / src[long])) * 100 - 1e-6) / 100
        need = int(np.max(tgt + 1 - np.ceil(ratio * src - 1e-9)))
        return cls(ratio, max(need, 1) + SPARE_STEPS)

    def to_json(self) -> list:
        return [self.ratio, self.extra]


class Prepared(NamedTuple):
    task: pairdata.Task
    src_vocab: pairdata.Vocab
    tgt_vocab: pairdata.Vocab
    train: pairdata.Encoded
    val: pairdata.Encoded  # every target (teacher-forced validation loss), unseen symbols as <unk>
    max_len: int  # longest training target + </s> + slack (the fixed limit older releases decoded to)
    length_budget: LengthBudget  # the decoding limit for a source of each length
    max_source_len: int  # the longest training source: a longer input is beyond what the model learned


def load_config_task(config: Config) -> pairdata.Task:
    """The task ``config`` names (``task``, ``keep_stress``), or its ``pairs`` file read with its units."""
    return tasks.load_task(
        config.task,
        keep_stress=config.keep_stress,
        pairs_file=config.pairs,
        **(_pairs_options(config) if config.pairs else {}),
    )


def _pairs_options(config: Config) -> dict:
    names = ("source_unit", "target_unit", "max_source_len", "max_target_len", "skip_long")
    return {name: getattr(config, name) for name in names}


def prepare(config: Config, task: pairdata.Task | None = None) -> Prepared:
    """Load the task (unless given); build the vocabularies and the decoding length from the training split.

    Nothing about validation or test shapes the model: a symbol that only they hold is read as ``<unk>``
    (a source symbol) or can never be produced (a target symbol), so it counts as an error, and
    ``max_len = L + 1 + max(2, L // 4)`` with ``L`` the longest training target (plus ``</s>`` and slack);
    the :class:`LengthBudget` that decoding follows is fitted to the training pairs too.
    """
    task = load_config_task(config) if task is None else task
    src_vocab = pairdata.Vocab.build(p.source for p in task.train)
    tgt_vocab = pairdata.Vocab.build(t for p in task.train for t in p.targets)
    longest = max(len(t) for p in task.train for t in p.targets)
    lengths = [(len(p.source), len(t)) for p in task.train for t in p.targets]
    return Prepared(
        task,
        src_vocab,
        tgt_vocab,
        pairdata.encode_pairs(task.train, src_vocab, tgt_vocab),
        pairdata.encode_pairs(task.val, src_vocab, tgt_vocab, unknown=True),
        longest + 1 + max(2, longest // 4),
        LengthBudget.fit(lengths),
        max(len(p.source) for p in task.train),
    )


class EpochBatches:
    """``batches(step)``: a pure function of the step (the fit loop's data cursor), for exact resumption.

    Epoch ``e = step // n`` is a fresh bucketed shuffle seeded by ``(seed, e)``; one epoch is cached.
    """

    def __init__(self, data: pairdata.Encoded, batch_size: int, seed: int, pad_multiple: int, tf_schedule):
        self.data, self.batch_size, self.seed, self.pad_multiple = data, batch_size, seed, pad_multiple
        self.tf_schedule = tf_schedule
        self.items_per_step = batch_size
        self._epoch, self._batches = None, []
        self.n = len(self._make(0))

    def _make(self, epoch: int) -> list[pairdata.Batch]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._batches = list(pairdata.batches(self.data, self.batch_size, rng=rng, pad_multiple=self.pad_multiple))
            self._epoch = epoch
        return self._batches

    def __call__(self, step: int) -> dict:
        b = self._make(step // self.n)[step % self.n]
        return {**batch_arrays(b), "teacher_forcing": np.float32(self.tf_schedule(step))}


def batch_arrays(b: pairdata.Batch) -> dict:
    """The train step's batch dict of a padded :class:`~rnn_jax.data.pairs.Batch`."""
    return {"src": b.src, "src_len": b.src_len, "tgt_in": b.tgt_in, "tgt_out": b.tgt_out, "tgt_len": b.tgt_len}


def teacher_forcing_schedule(config: Config):
    """``r(step)``: linear from 1 to ``teacher_forcing`` over ``teacher_forcing_decay_steps``, then constant."""
    r, n = config.teacher_forcing, config.teacher_forcing_decay_steps
    if n <= 0:
        return lambda step: r
    return lambda step: 1.0 + (r - 1.0) * min(step / n, 1.0)
