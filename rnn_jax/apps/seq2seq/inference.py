"""A trained seq2seq model from Python: load a run's checkpoint, translate strings (greedy or beam search)."""

from __future__ import annotations

from typing import NamedTuple

from rnn_jax import harness as H
from rnn_jax import topologies
from rnn_jax.apps.seq2seq.config import KIND, Config
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, decode_pairs, make_decoder
from rnn_jax.apps.seq2seq.model import make_optimizer, state_template
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["Model", "load_model", "translate"]


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


def load_model(ckpt: str, which: str = "best") -> Model:
    """The model of a run directory (its ``best`` checkpoint, else its ``latest``) or of a ``.ckpt`` file."""
    run = H.read_run(ckpt, which, KIND, Config)
    meta, config = run.meta, run.config
    src_vocab, tgt_vocab = P.Vocab.from_json(meta["src_vocab"]), P.Vocab.from_json(meta["tgt_vocab"])
    template = state_template(config, len(src_vocab), len(tgt_vocab), make_optimizer(config, 1))
    params = H.load_params(run, template)
    return Model(params, config, src_vocab, tgt_vocab, meta["source_unit"], meta["target_unit"], meta["max_len"])


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
