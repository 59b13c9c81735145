"""The seq2seq model: params and optimiser from a config, the training loss, and the teacher-forced pass."""

from __future__ import annotations

import jax

from rnn_jax import topologies
from rnn_jax import train as training
from rnn_jax.apps.seq2seq.config import Config
from rnn_jax.data import pairs as pairdata
from rnn_jax.losses import sequence_cross_entropy, token_accuracy

__all__ = ["init_params", "make_optimizer", "state_template", "loss_fn", "teacher_forced", "teacher_forced_batch"]


def init_params(config: Config, src_vocab_size: int, tgt_vocab_size: int, key) -> topologies.Seq2SeqParams:
    """The encoder-decoder of ``config`` (cell, sizes, attention, depth) over the two vocabularies."""
    return topologies.encoder_decoder_init(
        key,
        src_vocab=src_vocab_size,
        tgt_vocab=tgt_vocab_size,
        embed_size=config.embed_size,
        hidden_size=config.hidden_size,
        cell=config.cell,
        bidirectional=config.bidirectional,
        attention=None if config.attention == "none" else config.attention,
        encoder_layers=config.layers,
        decoder_layers=config.layers,
    )


def make_optimizer(config: Config, total_steps: int):
    """AdamW with warm-up and cosine decay to ``total_steps``, clipped at ``config.clip_norm``."""
    return training.make_optimizer(
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
    )


def state_template(config: Config, src_size: int, tgt_size: int, optimizer) -> training.TrainState:
    """A fresh train state of the config's model: the template a checkpoint restores into."""
    params = init_params(config, src_size, tgt_size, jax.random.key(config.seed))
    return training.init_state(params, optimizer, jax.random.key(config.seed + 1))


def loss_fn(params, batch: dict, key, *, scheduled: bool, dropout: float = 0.0, impl: str = "auto", unroll=None):
    """Per-token mean cross-entropy of the decoder's predictions, masked by the target lengths.

    ``scheduled=False`` reads the target at every step (no coin is drawn); otherwise each step reads it
    with probability ``batch["teacher_forcing"]`` (a traced value: a schedule costs no recompilation).
    ``dropout`` (between layers and before the output layer) draws its masks from ``key`` too. ``impl`` and
    ``unroll`` go to :func:`rnn_jax.run` (:func:`rnn_jax.topologies.encoder_decoder_apply`).
    """
    out = topologies.encoder_decoder_apply(
        params,
        batch["src"],
        batch["src_len"],
        batch["tgt_in"],
        tgt_len=batch["tgt_len"],
        teacher_forcing=batch["teacher_forcing"] if scheduled else 1.0,
        key=key if scheduled or dropout > 0 else None,
        dropout=dropout,
        impl=impl,
        unroll=unroll,
    )
    loss = sequence_cross_entropy(out.logits, batch["tgt_out"], lengths=batch["tgt_len"])
    acc = token_accuracy(out.logits, batch["tgt_out"], lengths=batch["tgt_len"])
    return loss.per_token_mean, {"token_acc": acc, "n_tokens": loss.n_tokens}


@jax.jit
def teacher_forced(params, src, src_len, tgt_in, tgt_len, tgt_out):
    """Teacher-forced pass: ``(summed cross-entropy, token count, attention [B, T, S], logits)``.

    One compiled function serves the validation loss and the attention maps.
    """
    out = topologies.encoder_decoder_apply(params, src, src_len, tgt_in, tgt_len=tgt_len)
    loss = sequence_cross_entropy(out.logits, tgt_out, lengths=tgt_len)
    return loss.per_token_mean * loss.n_tokens, loss.n_tokens, out.attention, out.logits


def teacher_forced_batch(params, b: pairdata.Batch):
    """:func:`teacher_forced` of a padded batch."""
    return teacher_forced(params, b.src, b.src_len, b.tgt_in, b.tgt_len, b.tgt_out)
