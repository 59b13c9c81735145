"""Scoring the char-LM: the validation loss over every validation character (parallel carried streams, padding
masked out) and the evaluation the fit loop calls, which logs that loss in bits per character and a few samples."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnn_jax.apps.charlm.config import CharLMConfig
from rnn_jax.apps.charlm.data import Data, val_windows
from rnn_jax.apps.charlm.inference import default_prime, generate
from rnn_jax.apps.charlm.model import forward, model_cfg, nll, zero_carries
from rnn_jax.data import text as textdata
from rnn_jax.train import TrainState, cast_floating

__all__ = ["LN2", "make_evaluator", "make_evaluate"]

LN2 = math.log(2.0)


def make_evaluator(cfg: CharLMConfig, windows: textdata.EvalWindows, compute_dtype):
    """``evaluate(params) -> mean nats/char`` over every target of ``windows`` (:func:`textdata.eval_windows`):
    parallel streams, the carry passed from window to window, padding masked out."""
    n_chars = float(windows.mask_NEW.sum())

    @jax.jit
    def window(params, carries, x_EW, y_EW, m_EW):
        p = cast_floating(params, compute_dtype)
        carries, logits = forward(p, cfg, cast_floating(carries, compute_dtype), x_EW)
        return cast_floating(carries, jnp.float32), jnp.sum(nll(logits, y_EW) * m_EW)

    def evaluate(params) -> float:
        carries = zero_carries(cfg, params, windows.inputs_NEW.shape[1])
        total = 0.0
        for x_EW, y_EW, m_EW in zip(*windows, strict=True):
            carries, s = window(params, carries, x_EW, y_EW, m_EW)
            total += float(s)
        return total / n_chars

    return evaluate


def make_evaluate(cfg: CharLMConfig, data: Data, compute_dtype):
    """``evaluate(state) -> {val_loss, val_bpc, sample}`` for :func:`rnn_jax.harness.fit`."""
    val_loss = make_evaluator(model_cfg(cfg), val_windows(cfg, data.split), compute_dtype)
    vocab = data.vocab
    prime = default_prime(vocab)

    def evaluate(s: TrainState) -> dict:
        loss = val_loss(s.params)
        result = {"val_loss": loss, "val_bpc": loss / LN2}
        if cfg.samples:  # logged in metrics.jsonl; printed only when verbose
            key = jax.random.fold_in(jax.random.key(cfg.seed + 1), int(s.step))
            lines = generate(s.params, cfg, vocab, prime, key, n=cfg.samples, length=cfg.sample_len,
                             compute_dtype=compute_dtype)  # fmt: skip
            result["sample"] = "\n---\n".join(lines)
        return result

    return evaluate
