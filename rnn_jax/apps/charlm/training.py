"""Training the char-LM: :func:`train` checks the config and the text, then runs the harness's fit loop with
truncated BPTT (each batch continues the ``B`` streams of the previous one from its final carry, the gradient
cut), evaluating, sampling and checkpointing as it goes; ``resume`` continues a run exactly."""

from __future__ import annotations

import dataclasses
import sys
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from rnn_jax import checkpoint, distributed, harness
from rnn_jax.apps.charlm.config import KIND, CharLMConfig, check_config
from rnn_jax.apps.charlm.data import Data, load_data, make_batcher, val_windows
from rnn_jax.apps.charlm.evaluation import make_evaluate
from rnn_jax.apps.charlm.model import LMParams, build_state, loss_fn, model_cfg
from rnn_jax.cells import resolve_cell
from rnn_jax.data import text as textdata
from rnn_jax.harness.usercells import cell_record, stored_cell_spec
from rnn_jax.train import make_mesh, make_train_step, set_total_steps

__all__ = ["TrainResult", "train"]


class TrainResult(NamedTuple):
    """What :func:`train` returns (``summary()`` is the JSON line the command line prints).

    Attributes:
      val_loss, val_bpc: the final model's validation loss (nats/char) and bits per character.
      best_val_loss, best_val_bpc, best_step: the best model's (the one in ``best.ckpt``) and its step.
      steps: the step reached. val_chars: validation characters evaluated (all of them, or ``eval_chars``).
      chars_per_sec: training speed (no compilation, no evaluation). elapsed_s: wall clock of the loop.
      n_params: parameter count. out: the run directory.
      params, vocab: the final model (``load_model(out)`` reads the best one back).
    """

    val_loss: float
    val_bpc: float
    best_val_loss: float
    best_val_bpc: float
    best_step: int
    steps: int
    val_chars: int
    chars_per_sec: float
    elapsed_s: float
    n_params: int
    out: str
    params: LMParams
    vocab: textdata.Vocab

    def summary(self) -> dict:
        """Every field but the model, JSON-able."""
        return {k: v for k, v in self._asdict().items() if k not in ("params", "vocab")}


def _start(cfg: CharLMConfig, data: Data, out: Path, log):
    """The state to train from (fresh, or the latest checkpoint) and the optimiser."""
    state, optimizer = build_state(cfg, data.vocab.size, cfg.steps or 10**9)
    if data.meta is not None:
        state, _ = harness.restore_latest(out, state, expect={"vocab": data.vocab.chars})
        if cfg.steps is not None:
            state = state._replace(opt_state=set_total_steps(state.opt_state, cfg.steps))
        log(f"resuming {out} at step {int(state.step)}")
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    cell_name = resolve_cell(cfg.cell).name
    log(
        f"charlm: {data.source}: {data.n_chars:,} characters, vocabulary {data.vocab.size}, "
        f"{len(data.split.train):,} train / {len(data.split.val):,} validation; {cfg.layers}x{cell_name} "
        f"H={cfg.hidden_size} ({n_params:,} params), B={cfg.batch_size} T={cfg.seq_len} {cfg.batching}, "
        f"{cfg.dtype}" + (f", {cfg.devices} devices" if cfg.devices else "")
    )
    return state, optimizer, n_params


def train(cfg: CharLMConfig) -> TrainResult:
    """Train (or, with ``resume``, continue) a char-LM as ``cfg`` says; see :class:`TrainResult`.

    Nothing is written when the config or the text is refused (:class:`UserError` naming the field or
    the file). ``verbose=False`` silences the progress bar, the samples and the evaluation lines.
    """
    cfg = check_config(cfg)
    data = load_data(cfg)
    main, many = distributed.is_main_process(), jax.process_count() > 1  # process 0 writes and prints
    mesh = make_mesh(cfg.devices) if cfg.devices is not None or many else None
    out = harness.prepare(cfg.out, resume=cfg.resume) if main else Path(cfg.out)  # the first write, after every check
    log = partial(print, file=sys.stderr) if cfg.verbose and main else (lambda *a, **k: None)
    state, optimizer, n_params = _start(cfg, data, out, log)
    compute_dtype = harness.compute_dtype(cfg.dtype)
    batcher = make_batcher(cfg, data.split)
    if many:  # each process feeds its own rows (TBPTT: its own streams, whose carry lives on its devices)
        batcher = distributed.ProcessBatches(batcher, cfg.batch_size, mesh)
    step_fn = make_train_step(partial(loss_fn, cfg=model_cfg(cfg)), optimizer, mesh=mesh,
                              compute_dtype=compute_dtype, has_carry=True)  # fmt: skip
    cell = resolve_cell(cfg.cell)
    stored = dataclasses.replace(cfg, text=None, cell=stored_cell_spec(cell))
    meta = harness.run_meta(KIND, stored, vocab=data.vocab.chars, text_sha256=data.text_hash, source=data.source,
                            cell=cell_record(cell))  # fmt: skip
    options = harness.fit_options(cfg, item_name="chars")._replace(verbose=cfg.verbose and main)
    result = harness.fit(state, step_fn, batcher, options, evaluate=make_evaluate(cfg, data, compute_dtype),
                         checkpointer=distributed.for_processes(checkpoint.Checkpointer(out, meta)),
                         out_dir=out if main else None)  # fmt: skip
    last, best = result.last_eval, result.best_eval or result.last_eval
    return TrainResult(
        val_loss=last["val_loss"], val_bpc=last["val_bpc"], best_val_loss=best["val_loss"],
        best_val_bpc=best["val_bpc"], best_step=best["step"], steps=result.steps,
        val_chars=int(val_windows(cfg, data.split).mask_NEW.sum()), chars_per_sec=result.items_per_s,
        elapsed_s=result.elapsed_s, n_params=n_params, out=str(out), params=result.state.params, vocab=data.vocab,
    )  # fmt: skip
