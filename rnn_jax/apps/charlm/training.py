"""Character-level language model: train, evaluate, checkpoint, resume, sample (``rnn-jax charlm``).

The model reads characters ``x_1..x_T`` and predicts each next one::

    e_t = E[x_t]                   (an embedding; or the lecture's one-hot vector with embed_size=0)
    h_t = stack of cells(h_{t-1}, e_t)      lstm | gru | vanilla, any depth, dropout between layers
                                            and before the output layer
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

from rnn_jax import checkpoint, decode, losses
from rnn_jax import distributed as D
from rnn_jax import harness as H
from rnn_jax import train as T
from rnn_jax.cells import CELLS, Cell, import_path, resolve_cell
from rnn_jax.data import text as textdata
from rnn_jax.errors import UserError
from rnn_jax.harness import field, shared_field
from rnn_jax.scan import zeros_carry
from rnn_jax.stacks import inverted_dropout, run_stack

__all__ = [
    "CharLMConfig",
    "SampleConfig",
    "LMParams",
    "TrainResult",
    "LoadedModel",
    "init_params",
    "forward",
    "loss_fn",
    "token_step",
    "make_evaluator",
    "train",
    "load_model",
    "generate",
    "cli_main",
]

KIND = "charlm"
LN2 = math.log(2.0)
MODEL_FIELDS = ("cell", "hidden_size", "layers", "embed_size")
DATA_FIELDS = ("batch_size", "seq_len", "batching", "seed", "val_fraction")


@dataclasses.dataclass(frozen=True)
class CharLMConfig:
    """Everything a char-LM run depends on; the command line's flags are these fields (``--hidden-size``,
    old spellings such as ``--hidden`` too). Budget: ``steps`` or ``minutes`` (2 minutes if neither).

    The text comes from one of ``text`` (the text itself, Python only), ``text_path`` (a UTF-8 file; the
    CLI's ``--text``) or ``corpus`` (a name; the default corpus when all three are ``None``).

    ``cell`` is a built-in cell's name, or from Python your own :class:`rnn_jax.Cell` (it needs ``init``;
    its output ``y`` must have ``hidden_size`` features) or its import path ``"module:attr"``. Checkpoints
    record the cell: a user cell by its import path where it has one, so that loading finds it.
    """

    # data
    text_path: str | None = field(None, "a UTF-8 text file to train on", aliases=("text",), metavar="PATH")
    text: str | None = field(None, "the training text itself (from Python)", cli=False)
    corpus: str | None = field(None, f"python-stdlib (the default, no download) or {', '.join(textdata.CORPORA)}")
    val_fraction: float = field(0.1, "the last fraction of the text validates")
    batching: str = field("tbptt", "tbptt: B streams, carry passed on; random: windows", choices=("tbptt", "random"))
    # model (defaults by measurement: see docs/charlm.md)
    cell: str = shared_field("cell", "gru")  # or, from Python, an rnn_jax.Cell with an init, or "module:attr"
    hidden_size: int = shared_field("hidden_size", 256)
    layers: int = shared_field("layers", 2)
    embed_size: int = shared_field("embed_size", 64)  # 0: one-hot inputs, as in the lecture
    dropout: float = shared_field("dropout", 0.0)
    # optimisation
    batch_size: int = shared_field("batch_size", 64)
    seq_len: int = shared_field("seq_len", 32)
    learning_rate: float = shared_field("learning_rate", 4e-3)
    warmup_steps: int = shared_field("warmup_steps", 100)
    weight_decay: float = shared_field("weight_decay", 0.2)
    clip_norm: float = shared_field("clip_norm", 1.0)
    final_lr_fraction: float = shared_field("final_lr_fraction", 0.05)
    steps: int | None = shared_field("steps")
    minutes: float | None = shared_field("minutes")
    # machinery
    dtype: str = shared_field("dtype", "float32")
    devices: int | None = shared_field("devices")
    unroll: int | None = shared_field("unroll")
    impl: str = shared_field("impl", "auto")
    eval_every: int = shared_field("eval_every", 500)
    checkpoint_every: int = shared_field("checkpoint_every", 250)
    eval_streams: int = field(64, "parallel carried streams of the validation text")
    eval_window: int = field(256, "characters per validation window")
    eval_chars: int | None = field(None, "validate on the first N validation characters (none: all)")
    samples: int = field(2, "lines sampled at each evaluation")
    sample_len: int = field(160, "characters per sampled line")
    seed: int = shared_field("seed", 0)
    out: str = shared_field("out", "runs/charlm")
    resume: bool = shared_field("resume", False)
    verbose: bool = shared_field("verbose", True)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """``rnn-jax charlm sample``: what to sample from which run."""

    ckpt: str | None = field(None, "a run directory (its best checkpoint) or a .ckpt file", metavar="DIR",
                             required=True)  # fmt: skip
    which: str = field("best", "which checkpoint of the run directory", choices=("best", "latest"))
    prime: str | None = field(None, "text to start from (none: a newline)", metavar="TEXT")
    length: int = field(500, "characters to generate")
    temperature: float = field(1.0, "softmax temperature; 0 is greedy")
    top_k: int | None = field(None, "sample among the k most likely characters (none: all)")
    top_p: float | None = field(None, "nucleus sampling: the smallest set with this probability (none: all)")
    seed: int = field(0, "seed of the sampling")


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


def check_config(cfg: CharLMConfig) -> CharLMConfig:
    """Reject bad values with one line naming the field; fill in the default budget. ``cell`` comes back as
    a built-in's name or a user's :class:`Cell`."""
    cell = model_cell(cfg)
    builtin = CELLS.get(cell.name) is cell
    # The harness checks cells by name; a user's Cell was checked just now, so its check sees a valid name.
    cfg = H.check_config(dataclasses.replace(cfg, cell=cell.name if builtin else "gru"))
    cfg = dataclasses.replace(cfg, cell=cell.name if builtin else cell)
    if cfg.batching not in ("tbptt", "random"):
        raise UserError(f"batching must be 'tbptt' or 'random', got {cfg.batching!r}")
    for name in ("eval_streams", "eval_window", "sample_len"):
        H.check_int(name, getattr(cfg, name))
    H.check_int("samples", cfg.samples, minimum=0)
    H.check_int("eval_chars", cfg.eval_chars, minimum=2, optional=True)
    sources = [name for name in ("text", "text_path", "corpus") if getattr(cfg, name) is not None]
    if len(sources) > 1:
        raise UserError(f"give one text source: text, text_path or corpus, not {' and '.join(sources)}")
    if cfg.devices is not None:
        T.check_device_count(cfg.devices)  # before the batch's divisibility: too few devices is the real problem
    if cfg.devices is not None and cfg.batch_size % cfg.devices:
        raise UserError(f"batch_size {cfg.batch_size} does not divide by the {cfg.devices} devices; use a multiple")
    return cfg


# ---------------------------------------------------------------------------------------------------
# The cell: built in, or the user's
# ---------------------------------------------------------------------------------------------------


def model_cell(cfg: CharLMConfig) -> Cell:
    """The :class:`Cell` of ``cfg.cell`` (a name, a Cell or ``"module:attr"``); it must bring an ``init``."""
    cell = resolve_cell(cfg.cell)
    if cell.init is None:
        raise UserError(
            f"the cell {cell.name!r} has no init; the trainer needs one: "
            f"Cell(..., init=fn(key, in_size, hidden_size, dtype) -> params)"
        )
    return cell


def cell_record(cell: Cell) -> dict:
    """What a checkpoint says about its cell: the name, and for a user's cell where to import it from."""
    builtin = CELLS.get(cell.name) is cell
    return {"name": cell.name, "builtin": builtin, "import_path": None if builtin else import_path(cell),
            "module": getattr(cell.step, "__module__", None)}  # fmt: skip


def _stored_cell_spec(cell: Cell) -> str:
    """``cell`` as the stored config spells it: a built-in's name, else its import path, else its name."""
    record = cell_record(cell)
    return record["name"] if record["builtin"] else record["import_path"] or record["name"]


def _is_vanilla(cfg: CharLMConfig) -> bool:
    return resolve_cell(cfg.cell) is CELLS["vanilla"]


def _loaded_cell(run, ckpt, given) -> str | Cell:
    """The cell a checkpoint needs: ``given`` when the caller passes one, else the one it records."""
    if given is not None:
        return resolve_cell(given)
    record = run.meta.get("cell") or {"name": run.config.cell, "builtin": run.config.cell in CELLS}
    if record["builtin"]:
        return record["name"]
    path = record.get("import_path")
    how = f"pass it: load_model({str(ckpt)!r}, cell=<that Cell>)"
    if path is None:
        where = record.get("module") or "a place no other process can import"
        raise UserError(f"{ckpt} was trained with the user cell {record['name']!r} defined in {where}; {how}")
    try:
        return resolve_cell(path)
    except UserError as err:
        raise UserError(f"{ckpt} was trained with the cell {record['name']!r} from {path}: {err}; {how}") from None


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


def init_params(key, cfg: CharLMConfig, vocab_size: int) -> LMParams:
    """Embedding ``N(0, 1)``, cells as their own ``cell.init``, head ``N(0, 1/H)`` and zero bias."""
    k_embed, k_head, *k_layers = jax.random.split(key, 2 + cfg.layers)
    hidden, cell, vanilla = cfg.hidden_size, model_cell(cfg), _is_vanilla(cfg)
    layers = []
    for layer, k in enumerate(k_layers):
        n_in = (cfg.embed_size or vocab_size) if layer == 0 else hidden
        if vanilla and layer == cfg.layers - 1:  # the lecture's head W_hy emits the logits
            layers.append(H.init_cell("vanilla", k, n_in, hidden, out_size=vocab_size))
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
    cell = resolve_cell(cfg.cell)

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


def make_evaluator(cfg: CharLMConfig, windows: textdata.EvalWindows, compute_dtype):
    """``evaluate(params) -> mean nats/char`` over every target of ``windows`` (:func:`textdata.eval_windows`):
    parallel streams, the carry passed from window to window, padding masked out."""
    n_chars = float(windows.mask_NEW.sum())

    @jax.jit
    def window(params, carries, x_EW, y_EW, m_EW):
        p = T.cast_floating(params, compute_dtype)
        carries, logits = forward(p, cfg, T.cast_floating(carries, compute_dtype), x_EW)
        return T.cast_floating(carries, jnp.float32), jnp.sum(_nll(logits, y_EW) * m_EW)

    def evaluate(params) -> float:
        carries = zero_carries(cfg, params, windows.inputs_NEW.shape[1])
        total = 0.0
        for x_EW, y_EW, m_EW in zip(*windows, strict=True):
            carries, s = window(params, carries, x_EW, y_EW, m_EW)
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
        nucleus_p = top_p if nucleus else None
        out = decode.sample(step, params, carries, logits, key, max_len=length, temperature=temperature,
                            top_k=top_k, top_p=nucleus_p)  # fmt: skip
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
    include_prime: bool = False,
) -> list[str]:
    """``n`` samples of ``length`` characters that continue ``prime`` (``decode.sample``).

    Each string returned is the continuation alone (``length`` characters), without the prime;
    ``include_prime=True`` returns ``prime + continuation`` instead. ``temperature=0`` is greedy.
    Every character of ``prime`` must be in ``vocab``.
    """
    decode.check_sampling_args(vocab.size, max_len=length, temperature=temperature, top_k=top_k, top_p=top_p)
    prime_P = losses.check_token_ids(decode.check_prime(prime, vocab.chars), vocab.size, "prime tokens")
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
    head = prime if include_prime else ""
    return [head + vocab.decode(row) for row in np.asarray(tokens)]


def _model_cfg(cfg: CharLMConfig) -> CharLMConfig:
    """Only the fields that shape the computation (so that jit caches do not depend on budgets and paths)."""
    return CharLMConfig(**{f: getattr(cfg, f) for f in (*MODEL_FIELDS, "dropout", "unroll", "impl")})


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


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


def _build(cfg: CharLMConfig, vocab_size: int, total_steps: int):
    params = init_params(jax.random.key(cfg.seed), cfg, vocab_size)
    optimizer = T.make_optimizer(
        cfg.learning_rate,
        total_steps=total_steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
        final_fraction=cfg.final_lr_fraction,
    )
    carry = zero_carries(cfg, params, cfg.batch_size)
    state = T.init_state(params, optimizer, jax.random.fold_in(jax.random.key(cfg.seed), 1), carry=carry)
    return state, optimizer


def _text_hash(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, np.int32).tobytes()).hexdigest()[:16]


class _Data(NamedTuple):
    """The run's text, encoded and split, and where it came from."""

    vocab: textdata.Vocab
    split: textdata.Split
    source: str
    n_chars: int
    text_hash: str
    meta: dict | None  # the checkpoint's meta when resuming


def _load_data(cfg: CharLMConfig) -> _Data:
    """Read and check the text (and, on resume, the checkpoint's vocabulary and settings); writes nothing."""
    meta = H.resume_meta(cfg.out, KIND) if cfg.resume else None
    text, source = textdata.load_corpus(cfg.corpus, cfg.text_path, cfg.text)
    vocab = textdata.Vocab(meta["vocab"]) if meta is not None else textdata.Vocab.from_text(text)
    ids = vocab.encode(text)
    split = textdata.split_text(ids, val_fraction=cfg.val_fraction)
    textdata.check_sizes(split, batch=cfg.batch_size, seq_len=cfg.seq_len)
    text_hash = _text_hash(ids)
    if meta is not None:
        stored = H.stored_config(CharLMConfig, meta)
        spelled = dataclasses.replace(cfg, cell=_stored_cell_spec(resolve_cell(cfg.cell)))  # as stored
        H.check_resumable(stored, spelled, MODEL_FIELDS + DATA_FIELDS, cfg.out)
        if meta.get("text_sha256") not in (None, text_hash):
            raise UserError(f"the checkpoint in {cfg.out} was trained on another text; resume on the same text")
    return _Data(vocab, split, source, len(text), text_hash, meta)


def _start(cfg: CharLMConfig, data: _Data, out: Path, log):
    """The state to train from (fresh, or the latest checkpoint) and the optimiser."""
    state, optimizer = _build(cfg, data.vocab.size, cfg.steps or 10**9)
    if data.meta is not None:
        state, _ = H.restore_latest(out, state, expect={"vocab": data.vocab.chars})
        if cfg.steps is not None:
            state = state._replace(opt_state=T.set_total_steps(state.opt_state, cfg.steps))
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


def _val_windows(cfg: CharLMConfig, split: textdata.Split) -> textdata.EvalWindows:
    """Every validation character (or the first ``eval_chars``), the last training character in front as
    the first one's context."""
    val = split.val if cfg.eval_chars is None else split.val[: cfg.eval_chars]
    return textdata.eval_windows(np.concatenate([split.train[-1:], val]), cfg.eval_streams, cfg.eval_window)


def _make_evaluate(cfg: CharLMConfig, data: _Data, compute_dtype):
    """``evaluate(state) -> {val_loss, val_bpc, sample}`` for :func:`rnn_jax.harness.fit`."""
    val_loss = make_evaluator(_model_cfg(cfg), _val_windows(cfg, data.split), compute_dtype)
    vocab = data.vocab
    prime = "\n" if "\n" in vocab.chars else vocab.chars[0]

    def evaluate(s: T.TrainState) -> dict:
        loss = val_loss(s.params)
        result = {"val_loss": loss, "val_bpc": loss / LN2}
        if cfg.samples:  # logged in metrics.jsonl; printed only when verbose
            key = jax.random.fold_in(jax.random.key(cfg.seed + 1), int(s.step))
            lines = generate(s.params, cfg, vocab, prime, key, n=cfg.samples, length=cfg.sample_len,
                             compute_dtype=compute_dtype)  # fmt: skip
            result["sample"] = "\n---\n".join(lines)
        return result

    return evaluate


def train(cfg: CharLMConfig) -> TrainResult:
    """Train (or, with ``resume``, continue) a char-LM as ``cfg`` says; see :class:`TrainResult`.

    Nothing is written when the config or the text is refused (:class:`UserError` naming the field or
    the file). ``verbose=False`` silences the progress bar, the samples and the evaluation lines.
    """
    cfg = check_config(cfg)
    data = _load_data(cfg)
    main, many = D.is_main_process(), jax.process_count() > 1  # several processes: process 0 writes and prints
    mesh = T.make_mesh(cfg.devices) if cfg.devices is not None or many else None
    out = H.prepare(cfg.out, resume=cfg.resume) if main else Path(cfg.out)  # the first write, after every check
    log = partial(print, file=sys.stderr) if cfg.verbose and main else (lambda *a, **k: None)
    state, optimizer, n_params = _start(cfg, data, out, log)
    compute_dtype = H.compute_dtype(cfg.dtype)
    if cfg.batching == "tbptt":
        batcher = textdata.StreamBatches(data.split.train, cfg.batch_size, cfg.seq_len)
    else:
        batcher = textdata.RandomWindows(data.split.train, cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    if many:  # each process feeds its own rows (TBPTT: its own streams, whose carry lives on its devices)
        batcher = D.ProcessBatches(batcher, cfg.batch_size, mesh)
    step_fn = T.make_train_step(partial(loss_fn, cfg=_model_cfg(cfg)), optimizer, mesh=mesh,
                                compute_dtype=compute_dtype, has_carry=True)  # fmt: skip
    cell = resolve_cell(cfg.cell)
    meta = H.run_meta(KIND, dataclasses.replace(cfg, text=None, cell=_stored_cell_spec(cell)), vocab=data.vocab.chars,
                      text_sha256=data.text_hash, source=data.source, cell=cell_record(cell))  # fmt: skip
    options = H.fit_options(cfg, item_name="chars")._replace(verbose=cfg.verbose and main)
    result = H.fit(state, step_fn, batcher, options, evaluate=_make_evaluate(cfg, data, compute_dtype),
                   checkpointer=D.for_processes(checkpoint.Checkpointer(out, meta)),
                   out_dir=out if main else None)  # fmt: skip
    last, best = result.last_eval, result.best_eval or result.last_eval
    return TrainResult(
        val_loss=last["val_loss"], val_bpc=last["val_bpc"], best_val_loss=best["val_loss"],
        best_val_bpc=best["val_bpc"], best_step=best["step"], steps=result.steps,
        val_chars=int(_val_windows(cfg, data.split).mask_NEW.sum()), chars_per_sec=result.items_per_s,
        elapsed_s=result.elapsed_s, n_params=n_params, out=str(out), params=result.state.params, vocab=data.vocab,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Loading a trained model
# ---------------------------------------------------------------------------------------------------


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: ``params, config, vocab, meta = load_model(run_dir)``.

    Attributes:
      params: the model's :class:`LMParams` (float32).
      config: the run's :class:`CharLMConfig` (a config stored by an older release is translated).
      vocab: the character vocabulary (``vocab.chars[i]`` is the character of id ``i``).
      meta: the checkpoint's meta dict (``step``, ``metrics`` of a best checkpoint, ``source``...).
    """

    params: LMParams
    config: CharLMConfig
    vocab: textdata.Vocab
    meta: dict


def load_model(ckpt: str, which: str = "best", cell: Cell | str | None = None) -> LoadedModel:
    """The model of a run directory (its ``best`` checkpoint, else its ``latest``) or of a ``.ckpt`` file.

    A run of a user's cell loads it from the import path its checkpoint records; where it has none (a cell
    defined in ``__main__`` or inside a function), pass the cell: ``load_model(run_dir, cell=my_cell)``.
    The returned ``config.cell`` is then the :class:`Cell` itself.
    """
    run = H.read_run(ckpt, which, KIND, CharLMConfig)
    config = dataclasses.replace(run.config, cell=_loaded_cell(run, ckpt, cell))
    vocab = textdata.Vocab(run.meta["vocab"])
    template, _ = _build(config, vocab.size, 1)
    params = H.load_params(run, template, expect={"vocab": vocab.chars})
    return LoadedModel(params, config, vocab, run.meta)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train_p = sub.add_parser("train", help="train (or --resume) a character-level language model")
    H.add_config_arguments(train_p, CharLMConfig)
    sample_p = sub.add_parser("sample", help="sample text from a trained model")
    H.add_config_arguments(sample_p, SampleConfig)
    return parser


def config_from_args(given: dict | argparse.Namespace) -> CharLMConfig:
    """The run's config: the flags given, over (with ``resume``) the checkpoint's config, over the defaults."""
    given = {k: v for k, v in dict(vars(given) if isinstance(given, argparse.Namespace) else given).items()
             if k != "action"}  # fmt: skip
    if given.get("resume"):
        return H.resumed_config(CharLMConfig, given.get("out", CharLMConfig.out), KIND, given)
    return H.config_from_args(CharLMConfig, given)


def _sample(args: argparse.Namespace) -> str:
    sc = H.config_from_args(SampleConfig, args)
    model = load_model(sc.ckpt, sc.which)
    vocab = model.vocab
    prime = sc.prime if sc.prime is not None else ("\n" if "\n" in vocab.chars else vocab.chars[0])
    H.check_int("length", sc.length)
    (text,) = generate(model.params, model.config, vocab, prime, jax.random.key(sc.seed), length=sc.length,
                       temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                       compute_dtype=H.compute_dtype(model.config.dtype), include_prime=True)  # fmt: skip
    return text


def cli_main(argv: list[str], prog: str = "rnn-jax charlm") -> int:
    args = _parser(prog).parse_args(argv)
    if args.action == "train":
        summary = train(config_from_args(args)).summary()
        if D.is_main_process():
            print(json.dumps(summary))
    else:
        print(_sample(args))
    return 0
