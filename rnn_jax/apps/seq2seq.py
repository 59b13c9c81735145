"""Sequence-to-sequence trainer: reversal, sorting, addition, dates, grapheme-to-phoneme, or any TSV of pairs.

The model is :func:`rnn_jax.topologies.encoder_decoder_apply`: embeddings -> encoder (LSTM or GRU,
bidirectional by default, ``--layers`` deep) -> decoder (as deep) with attention over the top encoder
layer's outputs (Luong by default, Bahdanau or none on request) -> output layer; ``--dropout`` between
stacked layers and before the output layer. Training minimises the per-token mean of the masked
cross-entropy of ``y_1 .. y_n </s>`` given ``<s> y_1 .. y_n``, with teacher forcing; scheduled sampling
(``teacher_forcing < 1``) lets each decoder step read the model's own previous prediction with
probability ``1 - r``, ``r`` decaying linearly from 1 over ``teacher_forcing_decay_steps``.

Decoding (:mod:`rnn_jax.decode`, compiled, one example vmapped over the batch): greedy, and beam search
of width ``K``. The beam result is the best *finished* hypothesis among the ``K`` beams and the greedy
one, ranked by ``log p / length ** length_penalty``: a beam can lose the greedy path along the way, and
adding it back makes "beam is never worse than greedy" hold by construction (the test suite checks it).

Metrics (:mod:`rnn_jax.metrics`): exact match (word accuracy), WER = 1 - exact match, and token error
rate (edit distance over reference length: the phoneme error rate for G2P), where a source with several
references (several pronunciations) is right if the output matches any of them.

Command line::

    rnn-jax seq2seq train --task addition --minutes 4 --out runs/addition
    rnn-jax seq2seq train --task g2p --minutes 60 --beam 5 --out runs/g2p
    rnn-jax seq2seq train --pairs my_pairs.tsv --steps 3000
    rnn-jax seq2seq translate --ckpt runs/g2p --beam 5 hello world

``train`` prints progress and periodic validation (with a few decoded examples) on stderr and, as its
last stdout line, one JSON object with the test metrics; it writes ``metrics.jsonl``, ``loss.png``,
``attention.png`` and the ``latest``/``best`` checkpoints into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import checkpoint, decode, topologies
from rnn_jax import metrics as M
from rnn_jax import train as T
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError
from rnn_jax.losses import sequence_cross_entropy, token_accuracy

__all__ = [
    "Config",
    "Model",
    "prepare",
    "init_params",
    "loss_fn",
    "make_decoder",
    "evaluate",
    "train",
    "load_model",
    "translate",
    "plot_attention",
    "cli_main",
]

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


class Model(NamedTuple):
    """A trained model's pieces for decoding: params, config, vocabularies, token units, max output length."""

    params: topologies.Seq2SeqParams
    config: Config
    src_vocab: P.Vocab
    tgt_vocab: P.Vocab
    source_unit: str
    target_unit: str
    max_len: int


def _check_config(c: Config) -> None:
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


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


class Prepared(NamedTuple):
    task: P.Task
    src_vocab: P.Vocab
    tgt_vocab: P.Vocab
    train: P.Encoded
    val: P.Encoded  # every target (teacher-forced validation loss)
    max_len: int  # decoding length: longest target + </s> + slack


def prepare(config: Config, task: P.Task | None = None) -> Prepared:
    """Load the task (unless given) and build vocabularies over the symbols of all splits.

    Symbols that only occur in validation or test get an (untrained) id rather than failing: a TSV file
    may hold a rare character in its test part alone.
    """
    if task is None:
        task = P.load_task(
            config.task,
            keep_stress=config.keep_stress,
            pairs_file=config.pairs,
            **({"source_unit": config.source_unit, "target_unit": config.target_unit} if config.pairs else {}),
        )
    every = task.train + task.val + task.test
    src_vocab = P.Vocab.build(p.source for p in every)
    tgt_vocab = P.Vocab.build(t for p in every for t in p.targets)
    longest = max(len(t) for p in every for t in p.targets)
    return Prepared(
        task,
        src_vocab,
        tgt_vocab,
        P.encode_pairs(task.train, src_vocab, tgt_vocab),
        P.encode_pairs(task.val, src_vocab, tgt_vocab),
        longest + 1 + max(2, longest // 4),
    )


class EpochBatches:
    """``batches(step)``: a pure function of the step (the fit loop's data cursor), for exact resumption.

    Epoch ``e = step // n`` is a fresh bucketed shuffle seeded by ``(seed, e)``; one epoch is cached.
    """

    def __init__(self, data: P.Encoded, batch_size: int, seed: int, pad_multiple: int, tf_schedule):
        self.data, self.batch_size, self.seed, self.pad_multiple = data, batch_size, seed, pad_multiple
        self.tf_schedule = tf_schedule
        self._epoch, self._batches = None, []
        self.n = len(self._make(0))

    def _make(self, epoch: int) -> list[P.Batch]:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._batches = list(P.batches(self.data, self.batch_size, rng=rng, pad_multiple=self.pad_multiple))
            self._epoch = epoch
        return self._batches

    def __call__(self, step: int) -> dict:
        b = self._make(step // self.n)[step % self.n]
        return {**_arrays(b), "teacher_forcing": np.float32(self.tf_schedule(step))}


def _arrays(b: P.Batch) -> dict:
    return {"src": b.src, "src_len": b.src_len, "tgt_in": b.tgt_in, "tgt_out": b.tgt_out, "tgt_len": b.tgt_len}


def teacher_forcing_schedule(config: Config):
    """``r(step)``: linear from 1 to ``teacher_forcing`` over ``teacher_forcing_decay_steps``, then constant."""
    r, n = config.teacher_forcing, config.teacher_forcing_decay_steps
    if n <= 0:
        return lambda step: r
    return lambda step: 1.0 + (r - 1.0) * min(step / n, 1.0)


# ---------------------------------------------------------------------------------------------------
# Model, loss, decoding
# ---------------------------------------------------------------------------------------------------


def init_params(config: Config, src_vocab_size: int, tgt_vocab_size: int, key) -> topologies.Seq2SeqParams:
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


def loss_fn(params, batch: dict, key, *, scheduled: bool, dropout: float = 0.0):
    """Per-token mean cross-entropy of the decoder's predictions, masked by the target lengths.

    ``scheduled=False`` reads the target at every step (no coin is drawn); otherwise each step reads it
    with probability ``batch["teacher_forcing"]`` (a traced value: a schedule costs no recompilation).
    ``dropout`` (between layers and before the output layer) draws its masks from ``key`` too.
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
    )
    loss = sequence_cross_entropy(out.logits, batch["tgt_out"], lengths=batch["tgt_len"])
    acc = token_accuracy(out.logits, batch["tgt_out"], lengths=batch["tgt_len"])
    return loss.per_token_mean, {"token_acc": acc, "n_tokens": loss.n_tokens}


def _start(params, src_S, src_len):
    return topologies.decoder_start(params, src_S, src_len, P.BOS)


def _finished(tokens_L, length):
    return (length > 0) & (tokens_L[jnp.maximum(length - 1, 0)] == P.EOS)


def _greedy_one(params, src_S, src_len, *, max_len: int):
    ctx, state, logits = _start(params, src_S, src_len)
    out = decode.greedy(topologies.decoder_step_fn, ctx, state, logits, max_len=max_len, end_token=P.EOS)
    return out.tokens, out.length, out.log_prob


def _beam_one(params, src_S, src_len, *, max_len: int, beam: int, length_penalty: float):
    """The best finished hypothesis among the ``K`` beams and the greedy one (see the module docstring)."""
    ctx, state, logits = _start(params, src_S, src_len)
    g = decode.greedy(topologies.decoder_step_fn, ctx, state, logits, max_len=max_len, end_token=P.EOS)
    b = decode.beam_search(
        topologies.decoder_step_fn,
        ctx,
        state,
        logits,
        beam_width=beam,
        max_len=max_len,
        end_token=P.EOS,
        length_penalty=length_penalty,
    )
    fin_b = jax.vmap(_finished)(b.tokens, b.lengths)
    # An unfinished hypothesis (no </s> within max_len) ranks below every finished one.
    i = jnp.argmax(jnp.where(fin_b, b.scores, b.scores - 1e9))
    fin_g = _finished(g.tokens, g.length)
    score_g = g.log_prob / g.length.astype(jnp.float32) ** length_penalty
    take_g = (fin_g & ~fin_b[i]) | ((fin_g == fin_b[i]) & (score_g > b.scores[i]))
    tokens = jnp.where(take_g, g.tokens, b.tokens[i])
    length = jnp.where(take_g, g.length, b.lengths[i])
    log_prob = jnp.where(take_g, g.log_prob, b.log_probs[i])
    return tokens, length, log_prob


@functools.lru_cache(maxsize=16)
def make_decoder(max_len: int, beam: int = 1, length_penalty: float = 0.0):
    """A jitted ``decoder(params, src [B, S], src_len [B]) -> (tokens [B, max_len], lengths [B], log_probs [B])``.

    ``beam == 1`` is greedy; ``beam > 1`` is beam search with the greedy hypothesis added (never worse).
    """
    if not isinstance(beam, int) or beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {beam!r}")
    if beam == 1:
        one = partial(_greedy_one, max_len=max_len)
    else:
        one = partial(_beam_one, max_len=max_len, beam=beam, length_penalty=length_penalty)
    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))


@jax.jit
def _teacher_forced(params, src, src_len, tgt_in, tgt_len, tgt_out):
    """Teacher-forced pass: ``(summed cross-entropy, token count, attention [B, T, S], logits)``.

    One compiled function serves the validation loss and the attention maps.
    """
    out = topologies.encoder_decoder_apply(params, src, src_len, tgt_in, tgt_len=tgt_len)
    loss = sequence_cross_entropy(out.logits, tgt_out, lengths=tgt_len)
    return loss.per_token_mean * loss.n_tokens, loss.n_tokens, out.attention, out.logits


def _teacher_forced_batch(params, b: P.Batch):
    return _teacher_forced(params, b.src, b.src_len, b.tgt_in, b.tgt_len, b.tgt_out)


def _check_vocab_fits_beam(beam: int, tgt_vocab: P.Vocab):
    decode.check_sampling_args(len(tgt_vocab), max_len=1, beam_width=beam)


def decode_pairs(model_params, sources: list[list[int]], decoder, batch_size: int, pad_multiple: int = 8):
    """Decode every source (lists of ids) in length-sorted batches: ``(ids per source, log_probs)``."""
    order = np.argsort([len(s) for s in sources], kind="stable")
    out_tokens: list[Any] = [None] * len(sources)
    out_logp = np.zeros(len(sources), np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        b = P.pad_batch([sources[i] for i in idx], None, batch_size=batch_size, pad_multiple=pad_multiple)
        tokens, lengths, logp = jax.device_get(decoder(model_params, b.src, b.src_len))
        for r, i in enumerate(idx):
            out_tokens[i] = tokens[r, : lengths[r]].tolist()
            out_logp[i] = logp[r]
    return out_tokens, out_logp


def evaluate(params, pairs: list[P.Pair], src_vocab: P.Vocab, tgt_vocab: P.Vocab, decoder, *, batch_size: int = 256):
    """Decode every pair's source and score against all its targets: ``(Scores, hypotheses, log_probs)``."""
    sources = [src_vocab.encode(p.source) for p in pairs]
    ids, logp = decode_pairs(params, sources, decoder, batch_size)
    hyps = [tgt_vocab.decode(t) for t in ids]
    return M.score(hyps, [p.targets for p in pairs]), hyps, logp


def _val_loss(params, data: P.Encoded, batch_size: int, pad_multiple: int) -> float:
    total = count = 0.0
    for b in P.batches(data, batch_size, pad_multiple=pad_multiple):
        s, n, _, _ = _teacher_forced_batch(params, b)
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


def _examples(pairs, hyps, src_unit, tgt_unit, n=5) -> str:
    lines = []
    for p, h in list(zip(pairs, hyps, strict=True))[:n]:
        ok = "ok " if h in p.targets else "BAD"
        refs = " | ".join(P.detokenize(t, tgt_unit) for t in p.targets)
        lines.append(f"  {ok} {P.detokenize(p.source, src_unit)!r} -> {P.detokenize(h, tgt_unit)!r}   (ref {refs!r})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------------------------------


def attention_maps(params, pairs: list[P.Pair], src_vocab, tgt_vocab, decoder, batch_size: int, pad_multiple: int = 8):
    """For each pair: ``(source tokens, output tokens, weights [len(output)+1, len(source)])``.

    The greedy output (with ``</s>``) is fed back teacher-forced to read the weights each step used.
    """
    sources = [src_vocab.encode(p.source) for p in pairs]
    ids, _ = decode_pairs(params, sources, decoder, batch_size, pad_multiple)
    targets = [[t for t in seq if t != P.EOS] for seq in ids]
    b = P.pad_batch(sources, targets, batch_size=batch_size, pad_multiple=pad_multiple)
    att = np.asarray(_teacher_forced_batch(params, b)[2])
    maps = []
    for r, p in enumerate(pairs):
        out = list(tgt_vocab.decode(targets[r])) + ["</s>"]
        maps.append((list(p.source), out, att[r, : len(out), : len(p.source)]))
    return maps


def plot_attention(maps, path, title: str = "") -> Path:
    """One heat map per example: output step (rows) against source position (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), dpi=80, squeeze=False)
    for ax, (src, out, w) in zip(axes[0], maps, strict=True):
        ax.imshow(w, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), [s if s != " " else "_" for s in src], fontsize=7)
        ax.set_yticks(range(len(out)), out, fontsize=7)
        ax.set_xlabel("source", fontsize=8)
    axes[0][0].set_ylabel("output", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def _hardware() -> str:
    dev = jax.devices()[0]
    cores = os.cpu_count()
    return f"{dev.platform}:{dev.device_kind} ({cores} CPU cores visible, {platform.machine()})"


def _meta(config: Config, prep: Prepared) -> dict:
    return {
        "kind": "seq2seq",
        "config": dataclasses.asdict(config),
        "model": model_meta(config),
        "src_vocab": prep.src_vocab.to_json(),
        "tgt_vocab": prep.tgt_vocab.to_json(),
        "source_unit": prep.task.source_unit,
        "target_unit": prep.task.target_unit,
        "max_len": prep.max_len,
    }


def _optimizer(config: Config, total_steps: int):
    return T.make_optimizer(
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
    )


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


@functools.lru_cache(maxsize=8)
def _train_step(
    learning_rate, warmup_steps, weight_decay, clip_norm, scheduled: bool, dtype="float32", devices=None, dropout=0.0
):
    """The jitted train step, shared by runs with the same optimiser in one process (a resumed run
    compiles nothing again). The schedule's end lives in the optimiser *state*, so it is not part of the key.
    With ``devices`` the batch is split over a ``("data",)`` mesh (params replicated); ``dtype="bfloat16"``
    computes in bfloat16 on float32 master params (see :func:`rnn_jax.train.make_train_step`)."""
    config = Config(
        learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=weight_decay, clip_norm=clip_norm
    )
    mesh = T.make_mesh(devices) if devices is not None else None
    return T.make_train_step(
        partial(loss_fn, scheduled=scheduled, dropout=dropout),
        _optimizer(config, 1),
        mesh=mesh,
        compute_dtype=COMPUTE_DTYPES[dtype],
    )


def _template(config: Config, src_size: int, tgt_size: int, optimizer):
    params = init_params(config, src_size, tgt_size, jax.random.key(config.seed))
    return T.init_state(params, optimizer, jax.random.key(config.seed + 1))


def train(config: Config, task: P.Task | None = None, log=None) -> dict:
    """Train on ``config`` (or on ``task``), evaluate on the test split; return the summary dict."""
    _check_config(config)
    if (config.steps is None) == (config.minutes is None):
        raise UserError("give exactly one budget: --steps S or --minutes M")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    prep = prepare(config, task)
    _check_vocab_fits_beam(config.beam, prep.tgt_vocab)
    out = checkpoint.ensure_writable_dir(config.out) if config.out else None
    log(
        f"task {prep.task.name}: {prep.task.description}; {prep.task.sizes()} pairs, "
        f"{len(prep.train.sources)} training examples; vocab {len(prep.src_vocab)} -> {len(prep.tgt_vocab)}"
    )

    total_steps = config.steps or 10**6  # a time budget re-estimates the schedule's end as it goes
    optimizer = _optimizer(config, total_steps)
    state = _template(config, len(prep.src_vocab), len(prep.tgt_vocab), optimizer)
    meta = _meta(config, prep)
    if config.resume:
        if out is None or checkpoint.latest(out) is None:
            raise UserError(f"--resume: no checkpoint to resume from in {config.out!r}")
        state, _ = checkpoint.restore(checkpoint.latest(out), state, expect={"model": meta["model"]})
        log(f"resumed from {checkpoint.latest(out)} at step {int(state.step)}")
    elif out is not None and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run: do not append to an old run's log

    scheduled = config.teacher_forcing < 1.0
    train_step = _train_step(
        config.learning_rate,
        config.warmup_steps,
        config.weight_decay,
        config.clip_norm,
        scheduled,
        config.dtype,
        config.devices,
        config.dropout,
    )
    batches = EpochBatches(
        prep.train, config.batch_size, config.seed, config.pad_multiple, teacher_forcing_schedule(config)
    )
    greedy = make_decoder(prep.max_len)
    val_pairs = prep.task.val[: config.eval_size]
    val_data = P.encode_pairs(val_pairs, prep.src_vocab, prep.tgt_vocab)

    def evaluate_val(st) -> dict:
        scores, hyps, _ = evaluate(
            st.params, val_pairs, prep.src_vocab, prep.tgt_vocab, greedy, batch_size=config.eval_batch_size
        )
        return {
            "val_loss": _val_loss(st.params, val_data, config.eval_batch_size, config.pad_multiple),
            "val_exact_match": scores.exact_match,
            "val_wer": scores.wer,
            "val_token_error_rate": scores.token_error_rate,
            "examples": _examples(val_pairs, hyps, prep.task.source_unit, prep.task.target_unit),
        }

    ckpt = checkpoint.Checkpointer(out, meta) if out is not None else None
    result = T.fit(
        state,
        train_step,
        batches,
        steps=config.steps,
        minutes=config.minutes,
        evaluate=evaluate_val,
        eval_every=config.eval_every,
        checkpointer=ckpt,
        checkpoint_every=config.eval_every,
        best_metric="val_wer",
        out_dir=out,
        items_per_step=config.batch_size,
        item_name="examples",
        log_every=50,
        progress=config.progress,
    )
    params = result.state.params

    # Test: greedy, and beam search when asked for.
    t0 = time.perf_counter()
    test = prep.task.test
    g_scores, g_hyps, g_logp = evaluate(
        params, test, prep.src_vocab, prep.tgt_vocab, greedy, batch_size=config.eval_batch_size
    )
    summary: dict = {"task": prep.task.name, "greedy": g_scores.as_dict()}
    final = g_scores
    if config.beam > 1:
        beam_dec = make_decoder(prep.max_len, config.beam, config.length_penalty)
        b_scores, _, b_logp = evaluate(
            params, test, prep.src_vocab, prep.tgt_vocab, beam_dec, batch_size=config.eval_batch_size
        )
        summary[f"beam{config.beam}"] = b_scores.as_dict()
        summary["beam_log_prob_gain"] = float(np.mean(b_logp - g_logp))
        final = b_scores
    test_seconds = time.perf_counter() - t0
    log("test examples (greedy):\n" + _examples(test, g_hyps, prep.task.source_unit, prep.task.target_unit, 8))

    if out is not None:
        maps = attention_maps(
            params, test[:4], prep.src_vocab, prep.tgt_vocab, greedy, config.eval_batch_size, config.pad_multiple
        )
        if config.attention != "none":
            plot_attention(maps, out / "attention.png", f"{prep.task.name}: attention of the greedy output")
    summary.update(
        {
            "split": "test",
            "decoder": f"beam{config.beam}" if config.beam > 1 else "greedy",
            "exact_match": final.exact_match,
            "wer": final.wer,
            "token_error_rate": final.token_error_rate,
            "n": final.n,
            "steps": result.steps,
            "elapsed_s": result.elapsed_s,
            "test_decode_s": test_seconds,
            "examples_per_s": result.items_per_s,
            "hardware": _hardware(),
            "out": str(out) if out is not None else None,
        }
    )
    if out is not None:
        with open(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    return summary


# ---------------------------------------------------------------------------------------------------
# Loading a trained model and translating
# ---------------------------------------------------------------------------------------------------


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
    optimizer = _optimizer(config, config.steps or 10**6)
    template = _template(config, len(src_vocab), len(tgt_vocab), optimizer)
    state, _ = checkpoint.restore(path, template)
    return Model(state.params, config, src_vocab, tgt_vocab, meta["source_unit"], meta["target_unit"], meta["max_len"])


def translate(model: Model, inputs: list[str], beam: int = 1) -> list[str]:
    """Decode each input string (greedy, or beam search of width ``beam``)."""
    if not isinstance(beam, int) or beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {beam!r}")
    _check_vocab_fits_beam(beam, model.tgt_vocab)
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


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _train_parser(sub):
    d = Config()
    p = sub.add_parser("train", help="train on a task or a TSV file; the last stdout line is the test JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help=f"one of {', '.join(P.TASKS)}")
    src.add_argument("--pairs", metavar="FILE.tsv", help="tab-separated source<TAB>target lines")
    p.add_argument("--source-unit", choices=("char", "word"), default=d.source_unit, help="TSV source tokens")
    p.add_argument("--target-unit", choices=("char", "word"), default=d.target_unit, help="TSV target tokens")
    p.add_argument("--keep-stress", action="store_true", help="g2p: keep ARPAbet stress digits (AH0, OW1)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget")
    budget.add_argument("--steps", type=int, help="total training steps (resumed steps included)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for the test metrics (1: greedy)")
    p.add_argument("--length-penalty", type=float, default=d.length_penalty)
    p.add_argument("--cell", choices=CELL_KINDS, default=d.cell)
    p.add_argument("--unidirectional", action="store_true", help="a forward-only encoder")
    p.add_argument("--attention", choices=ATTENTIONS, default=d.attention)
    p.add_argument("--embed", type=int, default=d.embed_size, dest="embed_size")
    p.add_argument("--hidden", type=int, default=d.hidden_size, dest="hidden_size")
    p.add_argument("--layers", type=int, default=d.layers, help="depth of the encoder and of the decoder")
    p.add_argument("--dropout", type=float, default=d.dropout, help="between layers and before the output layer")
    p.add_argument("--batch", type=int, default=d.batch_size, dest="batch_size")
    p.add_argument("--lr", type=float, default=d.learning_rate, dest="learning_rate")
    p.add_argument("--warmup", type=int, default=d.warmup_steps, dest="warmup_steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--teacher-forcing", type=float, default=d.teacher_forcing, help="final teacher-forcing ratio")
    p.add_argument("--teacher-forcing-decay-steps", type=int, default=d.teacher_forcing_decay_steps)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument(
        "--pad-multiple", type=int, default=d.pad_multiple, help="pad lengths to a multiple (fewer shapes to compile)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default=d.dtype, help="compute dtype of the train step")
    p.add_argument("--devices", type=int, default=None, help="split each batch over N devices (a data mesh)")
    p.add_argument("--out", default=None, help="run directory (default runs/seq2seq-TASK)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest.ckpt")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> Config:
    name = args.task if args.task is not None else Path(args.pairs).stem
    return Config(
        task=args.task or "pairs",
        pairs=args.pairs,
        source_unit=args.source_unit,
        target_unit=args.target_unit,
        keep_stress=args.keep_stress,
        cell=args.cell,
        bidirectional=not args.unidirectional,
        attention=args.attention,
        embed_size=args.embed_size,
        hidden_size=args.hidden_size,
        layers=args.layers,
        dropout=args.dropout,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        teacher_forcing=args.teacher_forcing,
        teacher_forcing_decay_steps=args.teacher_forcing_decay_steps,
        steps=args.steps,
        minutes=args.minutes,
        beam=args.beam,
        length_penalty=args.length_penalty,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        pad_multiple=args.pad_multiple,
        seed=args.seed,
        dtype=args.dtype,
        devices=args.devices,
        out=args.out or f"runs/seq2seq-{name}",
        resume=args.resume,
        progress=not args.no_progress,
    )


def cli_main(argv: list[str], prog: str = "rnn-jax seq2seq") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _train_parser(sub)
    tr = sub.add_parser("translate", help="decode inputs with a trained model")
    tr.add_argument("--ckpt", required=True, help="a run directory (its best checkpoint) or a .ckpt file")
    tr.add_argument("--beam", type=int, default=1)
    tr.add_argument("--which", choices=("best", "latest"), default="best")
    tr.add_argument("inputs", nargs="+", metavar="WORD")
    args = parser.parse_args(argv)
    if args.action == "train":
        if args.task is not None and args.task not in P.TASKS:
            raise UserError(f"unknown task {args.task!r}; expected one of {', '.join(P.TASKS)} (or --pairs FILE.tsv)")
        summary = train(config_from_args(args))
        print(json.dumps(summary))
        return 0
    if args.beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {args.beam}")
    model = load_model(args.ckpt, args.which)
    for text, output in zip(args.inputs, translate(model, args.inputs, args.beam), strict=True):
        print(f"{text}\t{output}")
    return 0
