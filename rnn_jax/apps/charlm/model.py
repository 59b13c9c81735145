"""The char-LM's params, forward pass, loss and one-token decoding step, and the training state built on them.

The model reads characters ``x_1..x_T`` and predicts each next one::

    e_t = E[x_t]                   (an embedding; or the lecture's one-hot vector with embed_size=0)
    h_t = stack of cells(h_{t-1}, e_t)      any depth, dropout between layers and before the output layer
    p(x_{t+1} | x_<=t) = softmax(h_t W + b)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnn_jax import harness, losses
from rnn_jax.apps.charlm.config import MODEL_FIELDS, CharLMConfig, is_vanilla, model_cell
from rnn_jax.cells import resolve_cell
from rnn_jax.data import text as textdata
from rnn_jax.scan import zeros_carry
from rnn_jax.stacks import inverted_dropout, run_stack
from rnn_jax.train import init_state, make_optimizer

__all__ = [
    "LMParams",
    "init_params",
    "zero_carries",
    "forward",
    "nll",
    "loss_fn",
    "token_step",
    "model_cfg",
    "build_state",
]


class LMParams(NamedTuple):
    """Params of the language model; ``embed`` is None for one-hot inputs, ``head_*`` None for a vanilla stack
    (the lecture's vanilla cell has its own output head ``W_hy``, which then emits the logits)."""

    embed: Any  # [V, E] or None
    layers: tuple  # one cell params per layer
    head_W: Any  # [H, V] or None
    head_b: Any  # [V] or None


def init_params(key, cfg: CharLMConfig, vocab_size: int) -> LMParams:
    """Embedding ``N(0, 1)``, cells as their own ``cell.init``, head ``N(0, 1/H)`` and zero bias."""
    k_embed, k_head, *k_layers = jax.random.split(key, 2 + cfg.layers)
    hidden, cell, vanilla = cfg.hidden_size, model_cell(cfg), is_vanilla(cfg)
    layers = []
    for layer, k in enumerate(k_layers):
        n_in = (cfg.embed_size or vocab_size) if layer == 0 else hidden
        if vanilla and layer == cfg.layers - 1:  # the lecture's head W_hy emits the logits
            layers.append(harness.init_cell("vanilla", k, n_in, hidden, out_size=vocab_size))
        else:
            layers.append(cell.init(k, n_in, hidden))
    embed = jax.random.normal(k_embed, (vocab_size, cfg.embed_size)) if cfg.embed_size else None
    if vanilla:
        head_W = head_b = None
    else:
        head_W = jax.random.normal(k_head, (hidden, vocab_size)) / math.sqrt(hidden)
        head_b = jnp.zeros((vocab_size,))
    return LMParams(embed, tuple(layers), head_W, head_b)


def _dtype(params: LMParams):
    return jax.tree.leaves(params.layers)[0].dtype


def _vocab_size(params: LMParams) -> int:
    return params.head_b.shape[0] if params.head_b is not None else params.layers[-1].b_y.shape[0]


def _embed(params: LMParams, x):
    if params.embed is not None:
        return params.embed[x]
    return jax.nn.one_hot(x, _vocab_size(params), dtype=_dtype(params))


def _head(params: LMParams, h):
    if params.head_W is None:
        return h
    return h @ params.head_W + _leading_ones(params.head_b, jnp.ndim(h))


def _leading_ones(b_V, ndim: int):
    """``b_V`` with leading size-1 axes up to ``ndim`` (explicit broadcasting, no rank promotion)."""
    return b_V.reshape((1,) * (ndim - 1) + b_V.shape)


def zero_carries(cfg: CharLMConfig, params: LMParams, batch: int):
    cell = resolve_cell(cfg.cell)
    return tuple(zeros_carry(cell, p, (batch,)) for p in params.layers)


def _run_kwargs(cfg: CharLMConfig) -> dict:
    """``run``'s speed settings: ``unroll=None`` and ``impl="auto"`` leave the choice to ``run``."""
    return {"unroll": cfg.unroll, "impl": cfg.impl}


def forward(params: LMParams, cfg: CharLMConfig, carries, x_BT, *, key=None):
    """Logits ``[B, T, V]`` for inputs ``[B, T]`` from the given per-layer carries; returns ``(carries, logits)``.

    Input ids outside ``[0, V)`` are a :class:`UserError` when the call is eager (concrete values); under
    ``jit`` check them where the data enters (:func:`rnn_jax.losses.check_token_ids`).
    """
    losses.check_token_ids(x_BT, _vocab_size(params), "inputs")
    # Dropout on every non-recurrent connection (Zaremba et al. 2014): between layers (run_stack) and on
    # the features the output layer reads, so that --dropout regularises a one-layer model too.
    k_stack, k_out = jax.random.split(key) if key is not None else (None, None)
    finals, h_BTH = run_stack(
        resolve_cell(cfg.cell),
        params.layers,
        list(carries),
        _embed(params, x_BT),
        dropout_rate=cfg.dropout,
        key=k_stack,
        **_run_kwargs(cfg),
    )
    if params.head_W is not None:  # a vanilla stack's last cell is the output layer itself (W_hy)
        h_BTH = inverted_dropout(k_out, cfg.dropout, h_BTH)
    return tuple(finals), _head(params, h_BTH)


def nll(logits, targets):
    """Cross-entropy of each target, log-softmax in float32 whatever the compute dtype."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def loss_fn(params: LMParams, carries, batch: textdata.TextBatch, key, *, cfg: CharLMConfig):
    """Mean cross-entropy of the next character (nats/char), starting from ``carries`` (zeroed where a row
    restarts); returns ``(loss, (aux, final_carries))`` as :func:`rnn_jax.train.make_train_step` wants."""
    inputs_BT, targets_BT, reset_B = batch

    def reset(c):
        return jnp.where(jnp.reshape(reset_B, reset_B.shape + (1,) * (c.ndim - 1)), jnp.zeros_like(c), c)

    carries = jax.tree.map(reset, carries)
    finals, logits = forward(params, cfg, carries, inputs_BT, key=key if cfg.dropout > 0 else None)
    loss = jnp.mean(nll(logits, targets_BT))
    return loss, ({}, finals)


def token_step(cfg: CharLMConfig):
    """The decoding step ``(params, carries, token) -> (carries, logits_V)`` for one example."""
    cell = resolve_cell(cfg.cell)

    def step(params: LMParams, carries, token):
        x = _embed(params, token)
        new = []
        for p, c in zip(params.layers, carries, strict=True):
            c, x = cell(p, c, x)
            new.append(c)
        return tuple(new), _head(params, x).astype(jnp.float32)

    return step


def model_cfg(cfg: CharLMConfig) -> CharLMConfig:
    """Only the fields that shape the computation (so that jit caches do not depend on budgets and paths)."""
    return CharLMConfig(**{f: getattr(cfg, f) for f in (*MODEL_FIELDS, "dropout", "unroll", "impl")})


def build_state(cfg: CharLMConfig, vocab_size: int, total_steps: int):
    """A fresh :class:`~rnn_jax.train.TrainState` (params from ``cfg.seed``, zero TBPTT carries) and its
    optimiser; also the template a checkpoint is restored into."""
    params = init_params(jax.random.key(cfg.seed), cfg, vocab_size)
    optimizer = make_optimizer(
        cfg.learning_rate,
        total_steps=total_steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
        final_fraction=cfg.final_lr_fraction,
    )
    carry = zero_carries(cfg, params, cfg.batch_size)
    state = init_state(params, optimizer, jax.random.fold_in(jax.random.key(cfg.seed), 1), carry=carry)
    return state, optimizer
