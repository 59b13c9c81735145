"""Training the seq2seq model on the trainer harness: the train step, the evaluation hook, the test metrics."""

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

from rnn_jax import checkpoint, distributed
from rnn_jax import harness as H
from rnn_jax import train as training
from rnn_jax.apps.seq2seq.config import KIND, MODEL_FIELDS, Config, check_config
from rnn_jax.apps.seq2seq.data import EpochBatches, Prepared, prepare, teacher_forcing_schedule
from rnn_jax.apps.seq2seq.decoding import check_vocab_fits_beam, make_decoder
from rnn_jax.apps.seq2seq.evaluation import attention_maps, evaluate, examples, val_loss
from rnn_jax.apps.seq2seq.inference import Model
from rnn_jax.apps.seq2seq.model import init_params, loss_fn, make_optimizer, state_template
from rnn_jax.apps.seq2seq.plots import plot_attention
from rnn_jax.cells import resolve_cell
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError
from rnn_jax.harness.usercells import cell_record, stored_cell_spec

__all__ = ["TrainResult", "train", "checkpoint_meta"]


class TrainResult(NamedTuple):
    """What :func:`train` returns; ``summary()`` is the JSON line ``rnn-jax seq2seq train`` prints.

    Attributes:
      exact_match, wer, token_error_rate, n: the test metrics of ``decoder`` (WER = 1 - exact match; the
        token error rate is the edit distance over the reference length) over ``n`` test sources.
      decoder: ``"greedy"``, or ``"beamK"`` when ``config.beam = K > 1``.
      greedy: the greedy test metrics (a dict); beam: beam search's (``None`` without a beam).
      beam_log_prob_gain: the mean log-probability beam search adds over greedy (``None`` without a beam).
      final_val_wer: the final model's validation WER; best_val_wer, best_step: the best one's
        (``best.ckpt``, what :func:`~rnn_jax.apps.seq2seq.load_model` reads back).
      steps: the step reached. elapsed_s: wall clock of the fit loop. test_decode_s: of the test decoding.
      examples_per_s: training speed. hardware: the device. out: the run directory (``None``: none).
      task: the task's name. model: the final model, ready for :func:`~rnn_jax.apps.seq2seq.translate`.
    """

    exact_match: float
    wer: float
    token_error_rate: float
    n: int
    decoder: str
    greedy: dict
    beam: dict | None
    beam_log_prob_gain: float | None
    final_val_wer: float
    best_val_wer: float
    best_step: int
    steps: int
    elapsed_s: float
    test_decode_s: float
    examples_per_s: float
    hardware: str
    out: str | None
    task: str
    model: Model

    def summary(self) -> dict:
        """Every field but the model, JSON-able (a beam's metrics under ``"beamK"``)."""
        summary = {k: v for k, v in self._asdict().items() if k not in ("model", "beam")}
        if self.beam is not None:
            summary[self.decoder] = self.beam
        return summary


def _as_stored(config: Config) -> Config:
    """``config`` as a checkpoint stores it: its cell spelled as a name or an import path (JSON)."""
    return dataclasses.replace(config, cell=stored_cell_spec(config.cell))


def _hardware() -> str:
    dev = jax.devices()[0]
    return f"{dev.platform}:{dev.device_kind} ({os.cpu_count()} CPU cores visible, {platform.machine()})"


def checkpoint_meta(config: Config, prep: Prepared) -> dict:
    """What a checkpoint carries beside the state: the config, the vocabularies, the units, ``max_len``,
    the length budget decoding follows, the longest training source and the cell (a user's by import path)."""
    return H.run_meta(
        KIND,
        _as_stored(config),
        cell=cell_record(resolve_cell(config.cell)),
        src_vocab=prep.src_vocab.to_json(),
        tgt_vocab=prep.tgt_vocab.to_json(),
        source_unit=prep.task.source_unit,
        target_unit=prep.task.target_unit,
        max_len=prep.max_len,
        length_budget=prep.length_budget.to_json(),
        max_source_len=prep.max_source_len,
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
    impl: str
    unroll: int | None

    @classmethod
    def of(cls, c: Config) -> _StepSettings:
        scheduled = c.teacher_forcing < 1.0
        return cls(
            c.learning_rate, c.warmup_steps, c.weight_decay, c.clip_norm, scheduled, c.dtype, c.devices, c.dropout,
            c.impl, c.unroll,
        )  # fmt: skip


@functools.lru_cache(maxsize=8)
def _train_step(s: _StepSettings):
    """The jitted train step, shared by runs with the same optimiser in one process (a resumed run
    compiles nothing again). The schedule's end lives in the optimiser *state*, so it is not part of the key.
    With ``devices`` the batch is split over a ``("data",)`` mesh (params replicated); ``dtype="bfloat16"``
    computes in bfloat16 on float32 master params (see :func:`rnn_jax.train.make_train_step`)."""
    config = Config(
        learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, weight_decay=s.weight_decay, clip_norm=s.clip_norm
    )
    return training.make_train_step(
        partial(loss_fn, scheduled=s.scheduled, dropout=s.dropout, impl=s.impl, unroll=s.unroll),
        make_optimizer(config, 1),
        mesh=training.make_mesh(s.devices) if s.devices is not None or jax.process_count() > 1 else None,
        compute_dtype=H.compute_dtype(s.dtype),
    )


def _check_resume(config: Config) -> None:
    """With ``resume``: ``out`` holds a seq2seq checkpoint whose model fields match (nothing is written)."""
    if not config.resume:
        return
    if config.out is None:
        raise UserError("resume needs the run directory: set out")
    stored = H.stored_config(Config, H.resume_meta(config.out, KIND))
    H.check_resumable(stored, _as_stored(config), MODEL_FIELDS, config.out)


def _initial_state(config: Config, prep: Prepared, out: Path | None, log) -> training.TrainState:
    """A fresh state, or the run's latest checkpoint with ``resume`` (its vocabularies must match)."""
    state = state_template(
        config, len(prep.src_vocab), len(prep.tgt_vocab), make_optimizer(config, config.steps or 10**9)
    )
    if config.resume:
        vocabs = {"src_vocab": prep.src_vocab.to_json(), "tgt_vocab": prep.tgt_vocab.to_json()}
        state, _ = H.restore_latest(out, state, expect=vocabs)
        if config.steps is not None:  # a new step budget moves the schedule's end
            state = state._replace(opt_state=training.set_total_steps(state.opt_state, config.steps))
        log(f"resumed from {checkpoint.latest(out)} at step {int(state.step)}")
    return state


def _validation(config: Config, prep: Prepared, greedy):
    """``evaluate(state) -> metrics`` on the first ``eval_size`` validation pairs (the fit loop's hook)."""
    val_pairs = prep.task.val[: config.eval_size]
    val_data = pairdata.encode_pairs(val_pairs, prep.src_vocab, prep.tgt_vocab, unknown=True)

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


def _fit(config: Config, prep: Prepared, out: Path | None, log) -> H.FitResult:
    state = _initial_state(config, prep, out, log)
    batches = EpochBatches(
        prep.train, config.batch_size, config.seed, config.pad_multiple, teacher_forcing_schedule(config)
    )
    main = distributed.is_main_process()  # several processes: process 0 alone prints and writes
    if jax.process_count() > 1:  # each process feeds its own rows of every batch
        batches = distributed.ProcessBatches(batches, config.batch_size, training.make_mesh(config.devices))
    options = H.fit_options(config, log_every=50, best_metric="val_wer", item_name="examples")
    options = options._replace(verbose=options.verbose and main)
    ckpt = checkpoint.Checkpointer(out, checkpoint_meta(config, prep)) if out is not None else None
    ckpt, out = distributed.for_processes(ckpt), out if main else None
    evaluate_val = _validation(config, prep, make_decoder(prep.length_budget))
    step = _train_step(_StepSettings.of(config))
    return H.fit(state, step, batches, options, evaluate=evaluate_val, checkpointer=ckpt, out_dir=out)


def _test(config: Config, prep: Prepared, params, log) -> dict:
    """Greedy test metrics, and beam search's when ``config.beam > 1``; the final ones under plain keys."""
    t0 = time.perf_counter()
    test, size, units = prep.task.test, config.eval_batch_size, (prep.task.source_unit, prep.task.target_unit)
    greedy = make_decoder(prep.length_budget)
    g_scores, g_hyps, g_logp = evaluate(params, test, prep.src_vocab, prep.tgt_vocab, greedy, batch_size=size)
    result = {"greedy": g_scores.as_dict(), "beam": None, "beam_log_prob_gain": None, "decoder": "greedy"}
    final = g_scores
    if config.beam > 1:
        beam_dec = make_decoder(prep.length_budget, config.beam, config.length_penalty)
        final, _, b_logp = evaluate(params, test, prep.src_vocab, prep.tgt_vocab, beam_dec, batch_size=size)
        result.update(beam=final.as_dict(), beam_log_prob_gain=float(np.mean(b_logp - g_logp)))
        result["decoder"] = f"beam{config.beam}"
    log("test examples (greedy):\n" + examples(test, g_hyps, *units, 8))
    result.update(final.as_dict(), test_decode_s=time.perf_counter() - t0)
    return result


def _plot(config: Config, prep: Prepared, params, out: Path) -> None:
    if config.attention == "none":
        return
    greedy = make_decoder(prep.length_budget)
    maps = attention_maps(
        params, prep.task.test[:4], prep.src_vocab, prep.tgt_vocab, greedy, config.eval_batch_size, config.pad_multiple
    )
    plot_attention(maps, out / "attention.png", f"{prep.task.name}: attention of the greedy output")


def _result(config: Config, prep: Prepared, fitted: H.FitResult, test: dict, out: Path | None) -> TrainResult:
    params = fitted.state.params
    model = Model(params, config, prep.src_vocab, prep.tgt_vocab, prep.task.source_unit, prep.task.target_unit,
                  prep.max_len, prep.length_budget, prep.max_source_len)  # fmt: skip
    best = fitted.best_eval or fitted.last_eval
    return TrainResult(
        **test,
        final_val_wer=fitted.last_eval["val_wer"],
        best_val_wer=best["val_wer"],
        best_step=best["step"],
        steps=fitted.steps,
        elapsed_s=fitted.elapsed_s,
        examples_per_s=fitted.items_per_s,
        hardware=_hardware(),
        out=str(out) if out is not None else None,
        task=prep.task.name,
        model=model,
    )


def train(config: Config, task: pairdata.Task | None = None, log=None) -> TrainResult:
    """Train on ``config`` (or on ``task``, a :class:`rnn_jax.data.pairs.Task`), then score the test split.

    Nothing is written when the config or the data is refused (a :class:`UserError` naming the field or
    the file). ``config.verbose=False`` silences the progress bar and the evaluation output; ``log`` (a
    function of one string) replaces the stderr messages. See :class:`TrainResult` for what comes back.
    """
    config = check_config(config)
    _check_resume(config)
    verbose = config.verbose and distributed.is_main_process()
    log = log or ((lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None))
    prep = prepare(config, task)
    check_vocab_fits_beam(config.beam, prep.tgt_vocab)
    # The model's shapes (nothing computed): a user's cell that does not fit the model is refused here.
    jax.eval_shape(lambda: init_params(config, len(prep.src_vocab), len(prep.tgt_vocab), jax.random.key(0)))
    main = distributed.is_main_process()  # several processes: process 0 alone writes (the others read on resume)
    out = H.prepare(config.out, resume=config.resume) if config.out is not None and main else None  # first write
    out = Path(config.out) if config.out is not None and not main else out
    log(
        f"task {prep.task.name}: {prep.task.description}; {prep.task.sizes()} pairs, "
        f"{len(prep.train.sources)} training examples; vocab {len(prep.src_vocab)} -> {len(prep.tgt_vocab)}"
    )
    fitted = _fit(config, prep, out, log)
    test = _test(config, prep, fitted.state.params, log)
    if out is not None and main:
        _plot(config, prep, fitted.state.params, out)
    result = _result(config, prep, fitted, test, out)
    if out is not None and main:
        (out / "summary.json").write_text(json.dumps(result.summary(), indent=2), encoding="utf-8")
    return result
