"""Character-level language model: train, evaluate, checkpoint, resume, sample (``rnn-jax charlm``).

The model reads characters ``x_1..x_T`` and predicts each next one::

    e_t = E[x_t]                   (an embedding; or the lecture's one-hot vector with --embed 0)
    h_t = stack of cells(h_{t-1}, e_t)      lstm | gru | vanilla, any depth, dropout between layers
    p(x_{t+1} | x_<=t) = softmax(h_t W + b)

and is trained on the mean cross-entropy (nats per character) with truncated BPTT: each batch continues
the ``B`` streams of the previous one, starting from its final carry with the gradient cut.

``train(CharLMConfig(...))`` does everything the command line does; ``experiments/char_lm.py`` calls it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_jax import checkpoint, decode
from rnn_jax import train as T
from rnn_jax.cells import CELLS, gru_init, lstm_init, vanilla_init
from rnn_jax.data import text as textdata
from rnn_jax.errors import UserError
from rnn_jax.scan import run_stack, zeros_carry

__all__ = [
    "CharLMConfig",
    "LMParams",
    "init_params",
    "forward",
    "loss_fn",
    "token_step",
    "train",
    "load_model",
    "generate",
    "cli_main",
]

LN2 = math.log(2.0)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_FIELDS = ("cell", "hidden", "layers", "embed")
DATA_FIELDS = ("batch", "seq_len", "batching", "seed", "val_fraction")


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
    """Everything a char-LM run depends on. Budget: ``steps`` or ``minutes`` (``minutes=2`` if neither)."""

    # data
    text: str | None = None  # a UTF-8 file; None: the corpus below
    corpus: str | None = None  # "python-stdlib" (default), "tinyshakespeare"
    val_fraction: float = 0.1
    batching: str = "tbptt"  # "tbptt" (B streams, carry passed on) or "random" (independent windows)
    # model
    cell: str = "gru"  # defaults by measurement: see docs/charlm.md
    hidden: int = 384
    layers: int = 1
    embed: int = 64  # 0: one-hot inputs, as in the lecture
    dropout: float = 0.0  # between layers
    # optimisation
    batch: int = 64
    seq_len: int = 32
    lr: float = 4e-3
    warmup: int = 100
    weight_decay: float = 0.0
    clip: float = 1.0
    final_lr_fraction: float = 0.05
    steps: int | None = None
    minutes: float | None = None
    # machinery
    dtype: str = "float32"  # compute dtype; params, carry and optimiser stay float32
    devices: int | None = None  # split the batch over this many devices (None: one device, no mesh)
    unroll: int = 1
    eval_every: int = 250
    checkpoint_every: int = 250
    eval_streams: int = 64
    eval_window: int = 256
    eval_chars: int | None = None  # evaluate on the first N validation characters (None: all)
    samples: int = 2  # lines sampled at each evaluation
    sample_len: int = 160
    seed: int = 0
    out: str = "runs/charlm"
    resume: bool = False
    progress: bool = True


DEFAULT_MINUTES = 2.0


class LMParams(NamedTuple):
    """Params of the language model; ``embed`` is None for one-hot inputs, ``head_*`` None for a vanilla stack
    (the lecture's vanilla cell has its own output head ``W_hy``, which then emits the logits)."""

    embed: Any  # [V, E] or None
    layers: tuple  # one cell params per layer
    head_W: Any  # [H, V] or None
    head_b: Any  # [V] or None


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


def _positive_int(name, value, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_config(cfg: CharLMConfig) -> CharLMConfig:
    """Reject bad values with one clear line; fill in the default budget."""
    if cfg.cell not in CELLS:
        raise UserError(f"cell must be one of {sorted(CELLS)}, got {cfg.cell!r}")
    if cfg.batching not in ("tbptt", "random"):
        raise UserError(f"batching must be 'tbptt' or 'random', got {cfg.batching!r}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    for name in ("hidden", "layers", "batch", "seq_len", "eval_every", "checkpoint_every", "eval_streams"):
        _positive_int(name.replace("_", " "), getattr(cfg, name))
    for name in ("eval_window", "sample_len", "unroll"):
        _positive_int(name.replace("_", " "), getattr(cfg, name))
    _positive_int("embed size", cfg.embed, minimum=0)
    _positive_int("samples per evaluation", cfg.samples, minimum=0)
    if cfg.eval_chars is not None:
        _positive_int("eval chars", cfg.eval_chars, minimum=2)
    if cfg.devices is not None:
        _positive_int("devices", cfg.devices)
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"dropout must lie in [0, 1), got {cfg.dropout}")
    for name in ("lr", "clip"):
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value!r}")
    if cfg.steps is not None and cfg.minutes is not None:
        raise UserError("give either --steps or --minutes, not both")
    if cfg.steps is not None:
        _positive_int("steps", cfg.steps)
    if cfg.minutes is not None and not (math.isfinite(cfg.minutes) and cfg.minutes > 0):
        raise UserError(f"minutes must be a positive number, got {cfg.minutes!r}")
    if cfg.steps is None and cfg.minutes is None:
        cfg = dataclasses.replace(cfg, minutes=DEFAULT_MINUTES)
    if cfg.text is not None and cfg.corpus is not None:
        raise UserError("give either --text or --corpus, not both")
    return cfg


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


def init_params(key, cfg: CharLMConfig, vocab_size: int) -> LMParams:
    """Embedding ``N(0, 1)``, cells as their own ``*_init``, head ``N(0, 1/H)`` and zero bias."""
    k_embed, k_head, *k_layers = jax.random.split(key, 2 + cfg.layers)
    in_size = cfg.embed or vocab_size
    layers = []
    for layer, k in enumerate(k_layers):
        n_in = in_size if layer == 0 else cfg.hidden
        if cfg.cell == "vanilla":
            n_out = vocab_size if layer == cfg.layers - 1 else cfg.hidden
            layers.append(vanilla_init(k, n_in, cfg.hidden, n_out))
        else:
            layers.append({"lstm": lstm_init, "gru": gru_init}[cfg.cell](k, n_in, cfg.hidden))
    embed = jax.random.normal(k_embed, (vocab_size, cfg.embed)) if cfg.embed else None
    if cfg.cell == "vanilla":
        head_W = head_b = None
    else:
        head_W = jax.random.normal(k_head, (cfg.hidden, vocab_size)) / math.sqrt(cfg.hidden)
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
    cell = CELLS[cfg.cell]
    return tuple(zeros_carry(cell, p, (batch,)) for p in params.layers)


def forward(params: LMParams, cfg: CharLMConfig, carries, x_BT, *, key=None):
    """Logits ``[B, T, V]`` for inputs ``[B, T]`` from the given per-layer carries; returns ``(carries, logits)``."""
    finals, h_BTH = run_stack(
        CELLS[cfg.cell],
        params.layers,
        list(carries),
        _embed(params, x_BT),
        dropout_rate=cfg.dropout,
        key=key,
        unroll=cfg.unroll,
    )
    return tuple(finals), _head(params, h_BTH)


def _nll(logits, targets):
    # log-softmax in float32 whatever the compute dtype
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def loss_fn(params: LMParams, carries, batch: textdata.TextBatch, key, *, cfg: CharLMConfig):
    """Mean cross-entropy of the next character (nats/char), starting from ``carries`` (zeroed where a row
    restarts); returns ``(loss, (aux, final_carries))`` as :func:`rnn_jax.train.make_train_step` wants."""
    inputs_BT, targets_BT, reset_B = batch

    def reset(c):
        return jnp.where(jnp.reshape(reset_B, reset_B.shape + (1,) * (c.ndim - 1)), jnp.zeros_like(c), c)

    carries = jax.tree.map(reset, carries)
    finals, logits = forward(params, cfg, carries, inputs_BT, key=key if cfg.dropout > 0 else None)
    loss = jnp.mean(_nll(logits, targets_BT))
    return loss, ({}, finals)


def token_step(cfg: CharLMConfig):
    """The decoding step ``(params, carries, token) -> (carries, logits_V)`` for one example."""
    cell = CELLS[cfg.cell]

    def step(params: LMParams, carries, token):
        x = _embed(params, token)
        new = []
        for p, c in zip(params.layers, carries, strict=True):
            c, x = cell(p, c, x)
            new.append(c)
        return tuple(new), _head(params, x).astype(jnp.float32)

    return step


# ---------------------------------------------------------------------------------------------------
# Evaluation and sampling
# ---------------------------------------------------------------------------------------------------


def make_evaluator(cfg: CharLMConfig, val_ids: np.ndarray, compute_dtype):
    """``evaluate(params) -> mean nats/char`` over the validation text, as parallel streams with the carry
    passed from window to window."""
    x_NEW, y_NEW = textdata.eval_windows(val_ids, cfg.eval_streams, cfg.eval_window)
    n_chars = y_NEW.size

    @jax.jit
    def window(params, carries, x_EW, y_EW):
        p = T.cast_floating(params, compute_dtype)
        carries, logits = forward(p, cfg, T.cast_floating(carries, compute_dtype), x_EW)
        return T.cast_floating(carries, jnp.float32), jnp.sum(_nll(logits, y_EW))

    def evaluate(params) -> float:
        carries = zero_carries(cfg, params, x_NEW.shape[1])
        total = 0.0
        for x_EW, y_EW in zip(x_NEW, y_NEW, strict=True):
            carries, s = window(params, carries, x_EW, y_EW)
            total += float(s)
        return total / n_chars

    return evaluate


@partial(jax.jit, static_argnames=("cfg", "length", "top_k", "nucleus"))
def _generate(params, prime_P, keys_N, temperature, top_p, *, cfg, length, top_k, nucleus):
    # temperature and top_p are traced (no recompile per value); top_k fixes a shape, so it is static.
    step = token_step(cfg)

    def one(key):
        carries = jax.tree.map(lambda c: c[0], zero_carries(cfg, params, 1))
        carries, logits = decode.prime(step, params, carries, prime_P)
        out = decode.sample(
            step,
            params,
            carries,
            logits,
            key,
            max_len=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p if nucleus else None,
        )
        return out.tokens

    return jax.vmap(one)(keys_N)


def generate(
    params: LMParams,
    cfg: CharLMConfig,
    vocab: textdata.Vocab,
    prime: str,
    key,
    *,
    n: int = 1,
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    compute_dtype=None,
) -> list[str]:
    """``n`` continuations of ``prime`` (each ``length`` characters), sampled with ``decode.sample``."""
    decode.check_sampling_args(vocab.size, max_len=length, temperature=temperature, top_k=top_k, top_p=top_p)
    prime_P = decode.check_prime(prime, vocab.chars)
    tokens = _generate(
        T.cast_floating(params, compute_dtype),
        jnp.asarray(prime_P),
        jax.random.split(key, n),
        jnp.float32(temperature),
        jnp.float32(1.0 if top_p is None else top_p),
        cfg=_model_cfg(cfg),
        length=length,
        top_k=top_k,
        nucleus=top_p is not None,
    )
    return [vocab.decode(row) for row in np.asarray(tokens)]


def _model_cfg(cfg: CharLMConfig) -> CharLMConfig:
    """Only the fields that shape the model (so that jit caches do not depend on budgets and paths)."""
    return CharLMConfig(**{f: getattr(cfg, f) for f in (*MODEL_FIELDS, "dropout", "unroll")})


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def _build(cfg: CharLMConfig, vocab_size: int, total_steps: int):
    params = init_params(jax.random.key(cfg.seed), cfg, vocab_size)
    optimizer = T.make_optimizer(
        cfg.lr,
        total_steps=total_steps,
        warmup_steps=cfg.warmup,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip,
        final_fraction=cfg.final_lr_fraction,
    )
    state = T.init_state(
        params, optimizer, jax.random.fold_in(jax.random.key(cfg.seed), 1), carry=zero_carries(cfg, params, cfg.batch)
    )
    return state, optimizer


def _text_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()[:16]


def _check_resumable(meta: dict, cfg: CharLMConfig, text_hash: str, where: Path):
    stored = meta.get("config", {})
    for name in MODEL_FIELDS + DATA_FIELDS:
        if name in stored and stored[name] != getattr(cfg, name):
            raise UserError(
                f"the checkpoint in {where} was trained with {name}={stored[name]!r}, this run asks for "
                f"{getattr(cfg, name)!r}; resume with the same settings"
            )
    if meta.get("text_sha256") not in (None, text_hash):
        raise UserError(f"the checkpoint in {where} was trained on another text; resume on the same text")


def train(cfg: CharLMConfig) -> dict:
    """Train (or resume) a char-LM as ``cfg`` says; return the summary the command line prints as JSON."""
    cfg = check_config(cfg)
    out = checkpoint.ensure_writable_dir(cfg.out)  # before any work: fail fast
    log = partial(print, file=sys.stderr)

    if cfg.resume and checkpoint.latest(out) is None:
        raise UserError(f"nothing to resume: {out} holds no checkpoint (latest{checkpoint.SUFFIX})")
    text, source = textdata.load_corpus(cfg.corpus, cfg.text)
    meta = checkpoint.read_meta(out) if cfg.resume else None
    if meta is not None:
        if meta.get("kind") != "charlm":
            raise UserError(f"the checkpoint in {out} is not a char-LM's (kind {meta.get('kind')!r})")
        vocab = textdata.Vocab(meta["vocab"])
    else:
        vocab = textdata.Vocab.from_text(text)
    ids = vocab.encode(text)
    split = textdata.split_text(ids, val_fraction=cfg.val_fraction)
    textdata.check_sizes(split, batch=cfg.batch, seq_len=cfg.seq_len)
    text_hash = _text_hash(ids)
    if meta is not None:
        _check_resumable(meta, cfg, text_hash, out)

    mesh = T.make_mesh(cfg.devices) if cfg.devices is not None else None
    if mesh is not None and cfg.batch % cfg.devices:
        raise UserError(f"the batch size {cfg.batch} does not divide by the {cfg.devices} devices; use a multiple")
    compute_dtype = DTYPES[cfg.dtype]

    state, optimizer = _build(cfg, vocab.size, cfg.steps or 10**9)
    if meta is not None:
        state, meta = checkpoint.restore(out, state, expect={"vocab": vocab.chars})
        if cfg.steps is not None:
            state = state._replace(opt_state=T.set_total_steps(state.opt_state, cfg.steps))
        log(f"resuming {out} at step {int(state.step)}")
    else:
        for stale in ("metrics.jsonl", "loss.png", "best.ckpt", "latest.ckpt"):
            (out / stale).unlink(missing_ok=True)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    log(
        f"charlm: {source}: {len(text):,} characters, vocabulary {vocab.size}, "
        f"{len(split.train):,} train / {len(split.val):,} validation; {cfg.layers}x{cfg.cell} H={cfg.hidden} "
        f"({n_params:,} params), B={cfg.batch} T={cfg.seq_len} {cfg.batching}, {cfg.dtype}"
        + (f", {cfg.devices} devices" if mesh else "")
    )

    batcher_cls = textdata.StreamBatches if cfg.batching == "tbptt" else partial(textdata.RandomWindows, seed=cfg.seed)
    batcher = batcher_cls(split.train, cfg.batch, cfg.seq_len)
    step_fn = T.make_train_step(
        partial(loss_fn, cfg=_model_cfg(cfg)), optimizer, mesh=mesh, compute_dtype=compute_dtype, has_carry=True
    )
    val_ids = split.val if cfg.eval_chars is None else split.val[: cfg.eval_chars]
    val_loss = make_evaluator(_model_cfg(cfg), val_ids, compute_dtype)
    prime = "\n" if "\n" in vocab.chars else vocab.chars[0]

    def evaluate(s: T.TrainState) -> dict:
        loss = val_loss(s.params)
        result = {"val_loss": loss, "val_bpc": loss / LN2}
        if cfg.samples:
            key = jax.random.fold_in(jax.random.key(cfg.seed + 1), int(s.step))
            lines = generate(s.params, cfg, vocab, prime, key, n=cfg.samples, length=cfg.sample_len,
                             compute_dtype=compute_dtype)  # fmt: skip
            result["sample"] = "\n---\n".join(lines)
        return result

    ckpt_meta = {
        "config": dataclasses.asdict(cfg),
        "vocab": vocab.chars,
        "text_sha256": text_hash,
        "source": source,
        "kind": "charlm",
    }
    result = T.fit(
        state,
        step_fn,
        batcher,
        steps=cfg.steps,
        minutes=cfg.minutes,
        evaluate=evaluate,
        eval_every=cfg.eval_every,
        checkpointer=checkpoint.Checkpointer(out, ckpt_meta),
        checkpoint_every=cfg.checkpoint_every,
        out_dir=out,
        items_per_step=cfg.batch * cfg.seq_len,
        item_name="chars",
        progress=cfg.progress,
    )
    best = result.best_eval or result.last_eval
    return {
        "val_loss": result.last_eval["val_loss"],
        "val_bpc": result.last_eval["val_bpc"],
        "best_val_loss": best["val_loss"],
        "steps": result.steps,
        "chars_per_sec": result.items_per_s,
        "elapsed_s": result.elapsed_s,
        "params": n_params,
        "out": str(out),
    }


# ---------------------------------------------------------------------------------------------------
# Loading a trained model
# ---------------------------------------------------------------------------------------------------


def load_model(ckpt: str, which: str = "best") -> tuple[LMParams, CharLMConfig, textdata.Vocab, dict]:
    """Params, config and vocabulary from a run directory (its ``best`` checkpoint, else its ``latest``)."""
    directory = Path(ckpt)
    if not directory.exists():
        raise UserError(f"no such checkpoint directory: {directory}")
    path = checkpoint.checkpoint_path(directory, which) if directory.is_dir() else directory
    if directory.is_dir() and not path.is_file():
        path = checkpoint.latest(directory) or path
    meta = checkpoint.read_meta(path)
    if meta.get("kind") != "charlm":
        raise UserError(f"{path} is not a char-LM checkpoint (kind {meta.get('kind')!r})")
    known = {f.name for f in dataclasses.fields(CharLMConfig)}
    cfg = CharLMConfig(**{k: v for k, v in meta["config"].items() if k in known})
    vocab = textdata.Vocab(meta["vocab"])
    template, _ = _build(cfg, vocab.size, 1)
    state, meta = checkpoint.restore(path, template, expect={"vocab": vocab.chars})
    return state.params, cfg, vocab, meta


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _train_parser(sub):
    d = CharLMConfig()
    # No argparse defaults: what was not given is taken from CharLMConfig, or from the checkpoint on --resume.
    p = sub.add_parser(
        "train", help="train (or --resume) a character-level language model", argument_default=argparse.SUPPRESS
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="PATH", help="a UTF-8 text file to train on")
    src.add_argument(
        "--corpus", metavar="NAME", help=f"python-stdlib (default, no download) or {', '.join(textdata.CORPORA)}"
    )
    p.add_argument("--cell", choices=sorted(CELLS), help=f"(default {d.cell})")
    p.add_argument("--hidden", type=int, help=f"hidden units per layer (default {d.hidden})")
    p.add_argument("--layers", type=int, help=f"(default {d.layers})")
    p.add_argument("--embed", type=int, help=f"embedding size; 0 for one-hot inputs (default {d.embed})")
    p.add_argument("--dropout", type=float, help=f"dropout between layers (default {d.dropout})")
    p.add_argument("--seq-len", type=int, help=f"characters per BPTT window (default {d.seq_len})")
    p.add_argument("--batch", type=int, help=f"parallel streams per batch (default {d.batch})")
    p.add_argument("--batching", choices=("tbptt", "random"), help=f"(default {d.batching})")
    p.add_argument("--lr", type=float, help=f"peak learning rate, AdamW with warm-up + cosine (default {d.lr})")
    p.add_argument("--warmup", type=int, help=f"warm-up steps (default {d.warmup})")
    p.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    p.add_argument("--clip", type=float, help=f"global gradient-norm clip (default {d.clip})")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help=f"time budget (default {DEFAULT_MINUTES:g} minutes)")
    budget.add_argument("--steps", type=int, help="step budget (total, resumed steps included)")
    p.add_argument("--eval-every", type=int, help=f"steps between evaluations (default {d.eval_every})")
    p.add_argument("--checkpoint-every", type=int, help=f"(default {d.checkpoint_every})")
    p.add_argument("--eval-chars", type=int, help="validate on the first N validation characters (default all)")
    p.add_argument("--samples", type=int, help=f"lines sampled at each evaluation (default {d.samples})")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="compute dtype; params stay float32 (default float32)")
    p.add_argument("--devices", type=int, help="split each batch over N devices (a data-parallel mesh)")
    p.add_argument("--unroll", type=int, help=f"scan steps per loop iteration, speed only (default {d.unroll})")
    p.add_argument("--out", help=f"run directory: checkpoints, metrics.jsonl, loss.png (default {d.out})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--seed", type=int, help=f"(default {d.seed})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(given: dict) -> CharLMConfig:
    """The run's config: the flags given, then (on ``--resume``) the checkpoint's config, then the defaults."""
    given = dict(given)
    progress = not given.pop("no_progress", False)
    base = CharLMConfig()
    if given.get("resume"):
        out = Path(given.get("out", base.out))
        if checkpoint.latest(out) is None:
            raise UserError(f"nothing to resume: {out} holds no checkpoint (latest{checkpoint.SUFFIX})")
        stored = checkpoint.read_meta(out).get("config", {})
        known = {f.name for f in dataclasses.fields(CharLMConfig)}
        base = CharLMConfig(**{k: v for k, v in stored.items() if k in known})
        if "steps" in given or "minutes" in given:  # a new budget replaces the stored one
            base = dataclasses.replace(base, steps=None, minutes=None)
    return dataclasses.replace(base, **given, progress=progress)


def _sample_parser(sub):
    p = sub.add_parser("sample", help="sample text from a trained model")
    p.add_argument("--ckpt", required=True, metavar="DIR", help="a run directory (uses its best checkpoint)")
    p.add_argument("--which", choices=("best", "latest"), default="best")
    p.add_argument("--prime", default=None, help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p


def cli_main(argv: list[str], prog: str = "rnn-jax charlm") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _train_parser(sub)
    _sample_parser(sub)
    args = parser.parse_args(argv)
    if args.action == "train":
        given = {k: v for k, v in vars(args).items() if k != "action"}
        summary = train(config_from_args(given))
        print(json.dumps(summary))
        return 0
    params, cfg, vocab, _ = load_model(args.ckpt, args.which)
    prime = args.prime if args.prime is not None else ("\n" if "\n" in vocab.chars else vocab.chars[0])
    _positive_int("length", args.length)
    (text,) = generate(
        params,
        cfg,
        vocab,
        prime,
        jax.random.key(args.seed),
        length=args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        compute_dtype=DTYPES[cfg.dtype],
    )
    print(prime + text)
    return 0
