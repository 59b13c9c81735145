"""Training the seq2seq model: the run directory, the train step, the fit loop, and the test metrics at the end."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from rnn_jax import checkpoint
from rnn_jax import train as T
from rnn_jax.apps.seq2seq.config import COMPUTE_DTYPES, Config, check_config, model_meta
from rnn_jax.apps.seq2seq.data import EpochBatches, Prepared, prepare, teacher_forcing_schedule
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, make_decoder
from rnn_jax.apps.seq2seq.evaluation import attention_maps, evaluate, examples, val_loss
from rnn_jax.apps.seq2seq.model import init_params, loss_fn
from rnn_jax.apps.seq2seq.plots import plot_attention
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["train", "make_optimizer", "state_template", "checkpoint_meta"]


def _hardware() -> str:
    dev = jax.devices()[0]
    cores = os.cpu_count()
    return f"{dev.platform}:{dev.device_kind} ({cores} CPU cores visible, {platform.machine()})"


def checkpoint_meta(config: Config, prep: Prepared) -> dict:
    """What a checkpoint carries beside the state: the config, the model fields, vocabularies, units, max_len."""
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


def make_optimizer(config: Config, total_steps: int):
    """AdamW with warm-up and cosine decay to ``total_steps``, clipped at ``config.clip_norm``."""
    return T.make_optimizer(
        config.learning_rate,
        total_steps=total_steps,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
    )


class _StepSettings(NamedTuple):
    """The config fields the compiled train step depends on (its cache key)."""

    learning_rate: float
    warmup_steps: int
    weight_decay: float
    clip_norm: float
    scheduled: bool
    dtype: str
    devices: int | None
    dropout: float

    @classmethod
    def of(cls, c: Config) -> _StepSettings:
        scheduled = c.teacher_forcing < 1.0
        return cls(
            c.learning_rate, c.warmup_steps, c.weight_decay, c.clip_norm, scheduled, c.dtype, c.devices, c.dropout
        )


@functools.lru_cache(maxsize=8)
def _train_step(s: _StepSettings):
    """The jitted train step, shared by runs with the same optimiser in one process (a resumed run
    compiles nothing again). The schedule's end lives in the optimiser *state*, so it is not part of the key.
    With ``devices`` the batch is split over a ``("data",)`` mesh (params replicated); ``dtype="bfloat16"``
    computes in bfloat16 on float32 master params (see :func:`rnn_jax.train.make_train_step`)."""
    config = Config(
        learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, weight_decay=s.weight_decay, clip_norm=s.clip_norm
    )
    return T.make_train_step(
        partial(loss_fn, scheduled=s.scheduled, dropout=s.dropout),
        make_optimizer(config, 1),
        mesh=T.make_mesh(s.devices) if s.devices is not None else None,
        compute_dtype=COMPUTE_DTYPES[s.dtype],
    )


def state_template(config: Config, src_size: int, tgt_size: int, optimizer) -> T.TrainState:
    """A fresh train state of the config's model: the template a checkpoint restores into."""
    params = init_params(config, src_size, tgt_size, jax.random.key(config.seed))
    return T.init_state(params, optimizer, jax.random.key(config.seed + 1))


def _initial_state(config: Config, prep: Prepared, out: Path | None, log) -> T.TrainState:
    """A fresh state, or the run's latest checkpoint with ``resume`` (its model fields must match)."""
    state = state_template(
        config, len(prep.src_vocab), len(prep.tgt_vocab), make_optimizer(config, config.steps or 10**6)
    )
    if config.resume:
        if out is None or checkpoint.latest(out) is None:
            raise UserError(f"--resume: no checkpoint to resume from in {config.out!r}")
        state, _ = checkpoint.restore(checkpoint.latest(out), state, expect={"model": model_meta(config)})
        log(f"resumed from {checkpoint.latest(out)} at step {int(state.step)}")
    elif out is not None and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run: do not append to an old run's log
    return state


def _validation(config: Config, prep: Prepared, greedy):
    """``evaluate(state) -> metrics`` on the first ``eval_size`` validation pairs (the fit loop's hook)."""
    val_pairs = prep.task.val[: config.eval_size]
    val_data = P.encode_pairs(val_pairs, prep.src_vocab, prep.tgt_vocab)

    def evaluate_val(st) -> dict:
        scores, hyps, _ = evaluate(
            st.params, val_pairs, prep.src_vocab, prep.tgt_vocab, greedy, batch_size=config.eval_batch_size
        )
        return {
            "val_loss": val_loss(st.params, val_data, config.eval_batch_size, config.pad_multiple),
            "val_exact_match": scores.exact_match,
            "val_wer": scores.wer,
            "val_token_error_rate": scores.token_error_rate,
            "examples": examples(val_pairs, hyps, prep.task.source_unit, prep.task.target_unit),
        }

    return evaluate_val


def _fit(config: Config, prep: Prepared, out: Path | None, log) -> T.FitResult:
    state = _initial_state(config, prep, out, log)
    batches = EpochBatches(
        prep.train, config.batch_size, config.seed, config.pad_multiple, teacher_forcing_schedule(config)
    )
    ckpt = checkpoint.Checkpointer(out, checkpoint_meta(config, prep)) if out is not None else None
    return T.fit(
        state,
        _train_step(_StepSettings.of(config)),
        batches,
        steps=config.steps,
        minutes=config.minutes,
        evaluate=_validation(config, prep, make_decoder(prep.max_len)),
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


def _test(config: Config, prep: Prepared, params, log) -> dict:
    """Greedy test metrics, and beam search's when ``config.beam > 1``; the final ones under plain keys."""
    t0 = time.perf_counter()
    test, size = prep.task.test, config.eval_batch_size
    g_scores, g_hyps, g_logp = evaluate(
        params, test, prep.src_vocab, prep.tgt_vocab, make_decoder(prep.max_len), batch_size=size
    )
    summary: dict = {"task": prep.task.name, "greedy": g_scores.as_dict()}
    final = g_scores
    if config.beam > 1:
        beam_dec = make_decoder(prep.max_len, config.beam, config.length_penalty)
        b_scores, _, b_logp = evaluate(params, test, prep.src_vocab, prep.tgt_vocab, beam_dec, batch_size=size)
        summary[f"beam{config.beam}"] = b_scores.as_dict()
        summary["beam_log_prob_gain"] = float(np.mean(b_logp - g_logp))
        final = b_scores
    log("test examples (greedy):\n" + examples(test, g_hyps, prep.task.source_unit, prep.task.target_unit, 8))
    summary.update(
        split="test",
        decoder=f"beam{config.beam}" if config.beam > 1 else "greedy",
        exact_match=final.exact_match,
        wer=final.wer,
        token_error_rate=final.token_error_rate,
        n=final.n,
        test_decode_s=time.perf_counter() - t0,
    )
    return summary


def _plot(config: Config, prep: Prepared, params, out: Path) -> None:
    if config.attention == "none":
        return
    greedy = make_decoder(prep.max_len)
    maps = attention_maps(
        params, prep.task.test[:4], prep.src_vocab, prep.tgt_vocab, greedy, config.eval_batch_size, config.pad_multiple
    )
    plot_attention(maps, out / "attention.png", f"{prep.task.name}: attention of the greedy output")


def train(config: Config, task: P.Task | None = None, log=None) -> dict:
    """Train on ``config`` (or on ``task``), evaluate on the test split; return the summary dict."""
    check_config(config)
    if (config.steps is None) == (config.minutes is None):
        raise UserError("give exactly one budget: --steps S or --minutes M")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    prep = prepare(config, task)
    check_vocab_fits_beam(config.beam, prep.tgt_vocab)
    out = checkpoint.ensure_writable_dir(config.out) if config.out else None
    log(
        f"task {prep.task.name}: {prep.task.description}; {prep.task.sizes()} pairs, "
        f"{len(prep.train.sources)} training examples; vocab {len(prep.src_vocab)} -> {len(prep.tgt_vocab)}"
    )
    result = _fit(config, prep, out, log)
    params = result.state.params
    summary = _test(config, prep, params, log)
    if out is not None:
        _plot(config, prep, params, out)
    summary.update(
        steps=result.steps,
        elapsed_s=result.elapsed_s,
        examples_per_s=result.items_per_s,
        hardware=_hardware(),
        out=str(out) if out is not None else None,
    )
    if out is not None:
        with open(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
    return summary
