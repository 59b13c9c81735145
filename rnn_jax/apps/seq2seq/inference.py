"""A trained seq2seq model from Python: load a run's checkpoint, translate strings."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

from rnn_jax import checkpoint, topologies
from rnn_jax.apps.seq2seq.config import Config
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, decode_pairs, make_decoder
from rnn_jax.apps.seq2seq.training import make_optimizer, state_template
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["Model", "load_model", "translate"]


class Model(NamedTuple):
    """A trained model's pieces for decoding: params, config, vocabularies, token units, max output length."""

    params: topologies.Seq2SeqParams
    config: Config
    src_vocab: P.Vocab
    tgt_vocab: P.Vocab
    source_unit: str
    target_unit: str
    max_len: int


def load_model(ckpt: str, which: str = "best") -> Model:
    """Restore the ``best`` (or ``latest``) checkpoint of a run directory, or a checkpoint file."""
    path = Path(ckpt)
    if path.is_dir():
        path = checkpoint.checkpoint_path(path, which)
        if not path.is_file():
            path = checkpoint.checkpoint_path(Path(ckpt), "latest")
    meta = checkpoint.read_meta(path)
    if meta.get("kind") != "seq2seq":
        raise UserError(f"{path} is not a seq2seq checkpoint (kind {meta.get('kind')!r})")
    fields = {f.name for f in dataclasses.fields(Config)}
    config = Config(**{k: v for k, v in meta["config"].items() if k in fields})
    src_vocab, tgt_vocab = P.Vocab.from_json(meta["src_vocab"]), P.Vocab.from_json(meta["tgt_vocab"])
    optimizer = make_optimizer(config, config.steps or 10**6)
    template = state_template(config, len(src_vocab), len(tgt_vocab), optimizer)
    state, _ = checkpoint.restore(path, template)
    return Model(state.params, config, src_vocab, tgt_vocab, meta["source_unit"], meta["target_unit"], meta["max_len"])


def translate(model: Model, inputs: list[str], beam: int = 1) -> list[str]:
    """Decode each input string (greedy, or beam search of width ``beam``)."""
    if not isinstance(beam, int) or beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {beam!r}")
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
