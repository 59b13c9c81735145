"""Scoring the seq2seq model: exact match, WER and token error rate of decoded outputs, validation loss,
printed examples, and the attention each output step used."""

from __future__ import annotations

import numpy as np

from rnn_jax import metrics
from rnn_jax.apps.seq2seq.decoding import decode_pairs
from rnn_jax.apps.seq2seq.model import teacher_forced_batch
from rnn_jax.data import pairs as pairdata

__all__ = ["evaluate", "val_loss", "examples", "attention_maps"]


def evaluate(
    params,
    pairs: list[pairdata.Pair],
    src_vocab: pairdata.Vocab,
    tgt_vocab: pairdata.Vocab,
    decoder,
    *,
    batch_size: int = 256,
):
    """Decode every pair's source and score against all its targets: ``(Scores, hypotheses, log_probs)``."""
    sources = [src_vocab.encode(p.source, unknown=True) for p in pairs]
    ids, logp = decode_pairs(params, sources, decoder, batch_size)
    hyps = [tgt_vocab.decode(t) for t in ids]
    return metrics.score(hyps, [p.targets for p in pairs]), hyps, logp


def val_loss(params, data: pairdata.Encoded, batch_size: int, pad_multiple: int) -> float:
    """Teacher-forced cross-entropy per target token over every row of ``data``."""
    total = count = 0.0
    for b in pairdata.batches(data, batch_size, pad_multiple=pad_multiple):
        s, n, _, _ = teacher_forced_batch(params, b)
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


def examples(pairs, hyps, src_unit, tgt_unit, n=5) -> str:
    """The first ``n`` outputs, each marked ``ok`` or ``BAD`` against its references, one per line."""
    lines = []
    for p, h in list(zip(pairs, hyps, strict=True))[:n]:
        ok = "ok " if h in p.targets else "BAD"
        refs = " | ".join(pairdata.detokenize(t, tgt_unit) for t in p.targets)
        source, output = pairdata.detokenize(p.source, src_unit), pairdata.detokenize(h, tgt_unit)
        lines.append(f"  {ok} {source!r} -> {output!r}   (ref {refs!r})")
    return "\n".join(lines)


def attention_maps(
    params, pairs: list[pairdata.Pair], src_vocab, tgt_vocab, decoder, batch_size: int, pad_multiple: int = 8
):
    """For each pair: ``(source tokens, output tokens, weights [len(output)+1, len(source)])``.

    The greedy output (with ``</s>``) is fed back teacher-forced to read the weights each step used.
    """
    sources = [src_vocab.encode(p.source, unknown=True) for p in pairs]
    ids, _ = decode_pairs(params, sources, decoder, batch_size, pad_multiple)
    targets = [[t for t in seq if t != pairdata.EOS] for seq in ids]
    b = pairdata.pad_batch(sources, targets, batch_size=batch_size, pad_multiple=pad_multiple)
    att = np.asarray(teacher_forced_batch(params, b)[2])
    maps = []
    for r, p in enumerate(pairs):
        out = list(tgt_vocab.decode(targets[r])) + ["</s>"]
        maps.append((list(p.source), out, att[r, : len(out), : len(p.source)]))
    return maps
