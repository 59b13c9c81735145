"""A trained seq2seq model from Python: load a run's checkpoint or a shipped model, translate strings (greedy
or beam search), score a split, export the params alone in half precision (the shipped models' format)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import checkpoint, topologies
from rnn_jax import harness as H
from rnn_jax.apps.seq2seq.config import KIND, Config
from rnn_jax.apps.seq2seq.data import load_config_task
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, decode_pairs, make_decoder
from rnn_jax.apps.seq2seq.evaluation import evaluate
from rnn_jax.apps.seq2seq.model import init_params, make_optimizer, state_template
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["Model", "SHIPPED_MODELS", "shipped_model_path", "load_model", "translate", "export_model", "score_split"]

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
"""Where the package keeps the models the project trained itself (``rnn_jax/models/``)."""

SHIPPED_MODELS = {"g2p": "g2p-cmudict.ckpt"}
"""Name -> file in :data:`MODELS_DIR`: ``load_model(name="g2p")``, ``rnn-jax seq2seq translate --model g2p``."""

EXPORT_DTYPES = ("float16", "bfloat16", "float32")


class Model(NamedTuple):
    """A trained model, what :func:`load_model` returns and :func:`translate` reads.

    Attributes:
      params: the :class:`~rnn_jax.topologies.Seq2SeqParams` (float32).
      config: the run's :class:`~rnn_jax.apps.seq2seq.Config` (one stored by an older release is translated).
      src_vocab, tgt_vocab: the :class:`~rnn_jax.data.pairs.Vocab` of sources and targets.
      source_unit, target_unit: ``"char"`` or ``"word"``: how strings are cut into tokens.
      max_len: the longest output decoding produces (``</s>`` included).
    """

    params: topologies.Seq2SeqParams
    config: Config
    src_vocab: P.Vocab
    tgt_vocab: P.Vocab
    source_unit: str
    target_unit: str
    max_len: int


def shipped_model_path(name: str) -> Path:
    """The file of the shipped model ``name`` (:data:`SHIPPED_MODELS`), or a :class:`UserError` saying why not."""
    if name not in SHIPPED_MODELS:
        raise UserError(f"no shipped model named {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    path = MODELS_DIR / SHIPPED_MODELS[name]
    if not path.is_file():
        raise UserError(f"the shipped model {name!r} is missing from this install (expected {path})")
    return path


def load_model(ckpt: str | os.PathLike | None = None, which: str = "best", *, name: str | None = None) -> Model:
    """The model of a run directory (its ``best`` checkpoint, else its ``latest``), of a ``.ckpt`` file, or the
    shipped model ``name``; params come back in float32 whatever the file stores (an export may be float16)."""
    if (ckpt is None) == (name is None):
        raise UserError("give either a checkpoint (a run directory or a .ckpt file) or the name of a shipped model")
    run = H.read_run(shipped_model_path(name) if name is not None else ckpt, which, KIND, Config)
    meta, config = run.meta, run.config
    src_vocab, tgt_vocab = P.Vocab.from_json(meta["src_vocab"]), P.Vocab.from_json(meta["tgt_vocab"])
    if "param_dtype" in meta:  # an export: the params alone, in that dtype
        fresh = init_params(config, len(src_vocab), len(tgt_vocab), jax.random.key(0))
        template = jax.tree.map(lambda a: a.astype(meta["param_dtype"]), fresh)
        stored, _ = checkpoint.restore(run.path, template)
        params = jax.tree.map(lambda a: a.astype(jnp.float32), stored)
    else:
        template = state_template(config, len(src_vocab), len(tgt_vocab), make_optimizer(config, 1))
        params = H.load_params(run, template)
    return Model(params, config, src_vocab, tgt_vocab, meta["source_unit"], meta["target_unit"], meta["max_len"])


def export_model(model: Model, path: str | os.PathLike, *, dtype: str = "float16", info: dict | None = None) -> Path:
    """Write ``model``'s params alone, cast to ``dtype``, with what :func:`load_model` needs to rebuild it
    (config, vocabularies, units, decoding length) and ``info`` (e.g. the training command and the test
    metrics) in the header. A float16 file is a quarter of a training checkpoint (no optimiser moments)."""
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    meta = H.run_meta(
        KIND,
        model.config,
        src_vocab=model.src_vocab.to_json(),
        tgt_vocab=model.tgt_vocab.to_json(),
        source_unit=model.source_unit,
        target_unit=model.target_unit,
        max_len=model.max_len,
        param_dtype=dtype,
        info=dict(info or {}),
    )
    return checkpoint.save(path, jax.tree.map(lambda a: a.astype(dtype), model.params), meta)


def score_split(model: Model, split: str = "test", beam: int = 1, limit: int | None = None) -> dict:
    """Decode a split of the model's own task (``test`` or ``val``, the first ``limit`` pairs) and score it.

    The task is rebuilt from the model's config (for G2P: cmudict, the same hash split as in training), and
    the model's vocabularies read it, so the numbers are those ``train`` printed for the same params.
    """
    if split not in ("test", "val"):
        raise UserError(f"split must be 'test' or 'val', got {split!r}")
    H.check_int("beam", beam)
    check_vocab_fits_beam(beam, model.tgt_vocab)
    pairs = getattr(load_config_task(model.config), split)[:limit]
    if not pairs:
        raise UserError(f"the {split} split of task {model.config.task!r} is empty")
    t0 = time.perf_counter()
    decoder = make_decoder(model.max_len, beam, model.config.length_penalty)
    scores, _, _ = evaluate(
        model.params, pairs, model.src_vocab, model.tgt_vocab, decoder, batch_size=model.config.eval_batch_size
    )
    return {"split": split, "beam": beam, **scores.as_dict(), "decode_s": time.perf_counter() - t0}


def translate(model: Model, inputs: list[str], beam: int = 1) -> list[str]:
    """Decode each input string: greedy, or beam search of width ``beam`` (never worse than greedy).

    An input with a symbol outside the model's source vocabulary is a :class:`UserError` naming it.
    """
    if isinstance(inputs, str):
        raise TypeError(f"inputs must be a list of strings, got the string {inputs!r}; pass [{inputs!r}]")
    H.check_int("beam", beam)
    check_vocab_fits_beam(beam, model.tgt_vocab)
    if not inputs:
        raise UserError("nothing to translate: give at least one input")
    sources = []
    for text in inputs:
        tokens = P.tokenize(text, model.source_unit)
        if not tokens:
            raise UserError(f"input {text!r} is empty")
        sources.append(model.src_vocab.encode(tokens))
    decoder = make_decoder(model.max_len, beam, model.config.length_penalty)
    # The evaluation batch size: the shapes compiled during training, and one shape for any number of inputs.
    ids, _ = decode_pairs(model.params, sources, decoder, model.config.eval_batch_size, model.config.pad_multiple)
    return [P.detokenize(model.tgt_vocab.decode(t), model.target_unit) for t in ids]
