"""The char-LM trainer's configs (their fields are the command line's flags), their checks, and the cell a
config names: resolved to a :class:`~rnn_jax.Cell`, and recorded in a checkpoint so that loading finds it."""

from __future__ import annotations

import dataclasses

from rnn_jax import harness
from rnn_jax.cells import CELLS, Cell, resolve_cell
from rnn_jax.data import text as textdata
from rnn_jax.errors import UserError
from rnn_jax.harness import field, shared_field
from rnn_jax.train import check_device_count

__all__ = [
    "KIND",
    "MODEL_FIELDS",
    "DATA_FIELDS",
    "CharLMConfig",
    "SampleConfig",
    "check_config",
    "model_cell",
    "is_vanilla",
]

KIND = "charlm"
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


def check_config(cfg: CharLMConfig) -> CharLMConfig:
    """Reject bad values with one line naming the field; fill in the default budget. ``cell`` comes back as
    a built-in's name or a user's :class:`Cell`."""
    cell = model_cell(cfg)
    builtin = CELLS.get(cell.name) is cell
    # The harness checks cells by name; a user's Cell was checked just now, so its check sees a valid name.
    cfg = harness.check_config(dataclasses.replace(cfg, cell=cell.name if builtin else "gru"))
    cfg = dataclasses.replace(cfg, cell=cell.name if builtin else cell)
    if cfg.batching not in ("tbptt", "random"):
        raise UserError(f"batching must be 'tbptt' or 'random', got {cfg.batching!r}")
    for name in ("eval_streams", "eval_window", "sample_len"):
        harness.check_int(name, getattr(cfg, name))
    harness.check_int("samples", cfg.samples, minimum=0)
    harness.check_int("eval_chars", cfg.eval_chars, minimum=2, optional=True)
    sources = [name for name in ("text", "text_path", "corpus") if getattr(cfg, name) is not None]
    if len(sources) > 1:
        raise UserError(f"give one text source: text, text_path or corpus, not {' and '.join(sources)}")
    if cfg.devices is not None:
        check_device_count(cfg.devices)  # before the batch's divisibility: too few devices is the real problem
    if cfg.devices is not None and cfg.batch_size % cfg.devices:
        raise UserError(f"batch_size {cfg.batch_size} does not divide by the {cfg.devices} devices; use a multiple")
    return cfg


def model_cell(cfg: CharLMConfig) -> Cell:
    """The :class:`Cell` of ``cfg.cell`` (a name, a Cell or ``"module:attr"``); it must bring an ``init``."""
    cell = resolve_cell(cfg.cell)
    if cell.init is None:
        raise UserError(
            f"the cell {cell.name!r} has no init; the trainer needs one: "
            f"Cell(..., init=fn(key, in_size, hidden_size, dtype) -> params)"
        )
    return cell


def is_vanilla(cfg: CharLMConfig) -> bool:
    return resolve_cell(cfg.cell) is CELLS["vanilla"]
