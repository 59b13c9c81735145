"""The char-LM trainer's data: the text read, encoded and split (checked against a checkpoint on resume), the
training batcher, and the validation windows."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import NamedTuple

import numpy as np

from rnn_jax import harness
from rnn_jax.apps.charlm.config import DATA_FIELDS, KIND, MODEL_FIELDS, CharLMConfig
from rnn_jax.data import text as textdata
from rnn_jax.errors import UserError
from rnn_jax.harness.usercells import stored_cell_spec

__all__ = ["Data", "load_data", "make_batcher", "val_windows", "text_hash"]


class Data(NamedTuple):
    """The run's text, encoded and split, and where it came from."""

    vocab: textdata.Vocab
    split: textdata.Split
    source: str
    n_chars: int
    text_hash: str
    meta: dict | None  # the checkpoint's meta when resuming


def text_hash(ids: np.ndarray) -> str:
    """The first 16 hex digits of the SHA-256 of the encoded text (a resumed run must see the same text)."""
    return hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()[:16]


def load_data(cfg: CharLMConfig) -> Data:
    """Read and check the text (and, on resume, the checkpoint's vocabulary and settings); writes nothing."""
    meta = harness.resume_meta(cfg.out, KIND) if cfg.resume else None
    text, source = textdata.load_corpus(cfg.corpus, cfg.text_path, cfg.text)
    vocab = textdata.Vocab(meta["vocab"]) if meta is not None else textdata.Vocab.from_text(text)
    ids = vocab.encode(text)
    split = textdata.split_text(ids, val_fraction=cfg.val_fraction)
    textdata.check_sizes(split, batch=cfg.batch_size, seq_len=cfg.seq_len)
    digest = text_hash(ids)
    if meta is not None:
        stored = harness.stored_config(CharLMConfig, meta)
        spelled = dataclasses.replace(cfg, cell=stored_cell_spec(cfg.cell))  # as stored
        harness.check_resumable(stored, spelled, MODEL_FIELDS + DATA_FIELDS, cfg.out)
        if meta.get("text_sha256") not in (None, digest):
            raise UserError(f"the checkpoint in {cfg.out} was trained on another text; resume on the same text")
    return Data(vocab, split, source, len(text), digest, meta)


def make_batcher(cfg: CharLMConfig, split: textdata.Split):
    """``batches(step) -> TextBatch``: ``B`` carried streams (``tbptt``) or random windows."""
    if cfg.batching == "tbptt":
        return textdata.StreamBatches(split.train, cfg.batch_size, cfg.seq_len)
    return textdata.RandomWindows(split.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed)


def val_windows(cfg: CharLMConfig, split: textdata.Split) -> textdata.EvalWindows:
    """Every validation character (or the first ``eval_chars``), the last training character in front as
    the first one's context."""
    val = split.val if cfg.eval_chars is None else split.val[: cfg.eval_chars]
    return textdata.eval_windows(np.concatenate([split.train[-1:], val]), cfg.eval_streams, cfg.eval_window)
