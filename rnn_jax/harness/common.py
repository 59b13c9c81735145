"""What every trainer's config shares: the canonical fields, their checks, the budget, dtypes and cells by name.

Every application names the same setting the same way (``hidden_size``, ``batch_size``, ``learning_rate``,
``clip_norm``...) by declaring it with :func:`shared_field`, which carries the one help line and the old
spellings (``--hidden``, ``--batch``, ``--lr``, ``--clip``) as aliases; only the default is the app's::

    @dataclasses.dataclass(frozen=True)
    class MyConfig:
        hidden_size: int = shared_field("hidden_size", 128)
        steps: int | None = shared_field("steps")
        minutes: float | None = shared_field("minutes")

:func:`check_config` then checks every canonical field the config has (messages name the field), and
fills in the one default budget (:data:`DEFAULT_MINUTES` when neither ``steps`` nor ``minutes`` is given).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from rnn_jax.cells import CELLS, vanilla_init
from rnn_jax.dtypes import COMPUTE_DTYPES, DTYPES
from rnn_jax.errors import UserError
from rnn_jax.harness.config import field
from rnn_jax.scan import IMPLS
from rnn_jax.topologies import cell_init

__all__ = [
    "DEFAULT_MINUTES",
    "DTYPES",
    "SHARED_FIELDS",
    "shared_field",
    "compute_dtype",
    "init_cell",
    "check_config",
    "check_int",
    "check_number",
    "check_fits",
]

DEFAULT_MINUTES = 2.0
"""The budget of every trainer when neither ``steps`` nor ``minutes`` is given."""

# name -> (help, aliases, word for None, choices)
SHARED_FIELDS: dict[str, tuple[str, tuple[str, ...], str, tuple | None]] = {
    "cell": ("recurrent cell", (), "none", tuple(CELLS)),
    "hidden_size": ("hidden units per layer", ("hidden",), "none", None),
    "embed_size": ("embedding size (0: one-hot inputs)", ("embed",), "none", None),
    "layers": ("stacked recurrent layers", (), "none", None),
    "dropout": ("dropout rate between layers and before the output layer, in training", (), "none", None),
    "batch_size": ("sequences per batch", ("batch",), "none", None),
    "seq_len": ("time steps per training window", (), "none", None),
    "learning_rate": ("peak learning rate (AdamW, linear warm-up, cosine decay)", ("lr",), "none", None),
    "warmup_steps": ("steps of linear learning-rate warm-up", ("warmup",), "none", None),
    "weight_decay": ("decoupled weight decay on matrices", (), "none", None),
    "clip_norm": ("clip the gradient to this global norm", ("clip",), "none", None),
    "final_lr_fraction": ("the cosine decays to this fraction of the peak learning rate", (), "none", None),
    "steps": ("step budget, resumed steps included (none: use minutes)", (), "none", None),
    "minutes": (f"time budget in minutes ({DEFAULT_MINUTES:g} when neither budget is given)", (), "none", None),
    "dtype": ("compute dtype; params and optimiser stay float32", (), "none", COMPUTE_DTYPES),
    "devices": ("split each batch over N devices, a data-parallel mesh (none: one device)", (), "none", None),
    "unroll": ("scan steps per loop iteration (auto: run's own choice)", (), "auto", None),
    "impl": ("the scan algorithm passed to run (auto: run's choice per platform)", (), "none", IMPLS),
    "eval_every": ("steps between evaluations", (), "none", None),
    "checkpoint_every": ("steps between latest-checkpoint saves", (), "none", None),
    "seed": ("seed of the init, the batches and the samples", (), "none", None),
    "out": ("run directory: checkpoints, metrics.jsonl, loss.png", (), "none", None),
    "resume": ("continue the run in out from its latest checkpoint", (), "none", None),
    "verbose": ("progress bar and evaluation output on stderr", ("progress",), "none", None),
}


def shared_field(name: str, default: Any = None):
    """The canonical field ``name`` with the app's ``default``: its help line and aliases come from here."""
    help_text, aliases, none, choices = SHARED_FIELDS[name]
    return field(default, help_text, aliases=aliases, none=none, choices=choices)


def compute_dtype(name: str):
    """The compute dtype called ``name`` (one of :data:`~rnn_jax.dtypes.COMPUTE_DTYPES`): the train step runs in it;
    params, optimiser state and the loss stay float32. A :class:`UserError` naming the field otherwise."""
    if name not in COMPUTE_DTYPES:
        raise UserError(f"dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
    return DTYPES[name]


def init_cell(kind: str, key, in_size: int, hidden_size: int, out_size: int | None = None, dtype=jnp.float32):
    """A cell's params by name; a vanilla cell's own head ``W_hy`` maps to ``out_size`` (``hidden_size``
    by default), so a vanilla stack's last layer can emit the logits itself, as in the lecture."""
    if kind == "vanilla" and out_size is not None:
        return vanilla_init(key, in_size, hidden_size, out_size, dtype)
    return cell_init(kind, key, in_size, hidden_size, dtype)


def check_int(name: str, value, minimum: int = 1, optional: bool = False):
    """``value`` is an integer ``>= minimum`` (or ``None`` when ``optional``); else a :class:`UserError`."""
    if optional and value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value, *, low: float = 0.0, high: float = math.inf, closed: str = "()"):
    """``value`` is a finite number in the interval ``low..high`` (``closed`` says which ends belong)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (value >= low if closed[0] == "[" else value > low)
    ok = ok and (value <= high if closed[1] == "]" else value < high)
    if not ok:
        raise UserError(f"{name} must be a number in {closed[0]}{low:g}, {high:g}{closed[1]}, got {value!r}")


_INTS = {"hidden_size": 1, "layers": 1, "batch_size": 1, "seq_len": 1, "eval_every": 1, "checkpoint_every": 1,
         "embed_size": 0, "warmup_steps": 0, "seed": 0}  # fmt: skip
_OPTIONAL_INTS = ("steps", "devices", "unroll")
_NUMBERS = {"learning_rate": (0.0, math.inf, "()"), "clip_norm": (0.0, math.inf, "()"),
            "weight_decay": (0.0, math.inf, "[)"), "dropout": (0.0, 1.0, "[)"),
            "final_lr_fraction": (0.0, 1.0, "[]")}  # fmt: skip


def check_config(cfg, *, training: bool = True):
    """Check every canonical field ``cfg`` has (messages name the field) and that the model fits in memory
    (:func:`check_fits`); return ``cfg`` with the budget filled in: ``minutes = DEFAULT_MINUTES`` when
    neither ``steps`` nor ``minutes`` is given."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for name in ("cell", "dtype", "impl"):
        choices = SHARED_FIELDS[name][3]
        if name in names and getattr(cfg, name) not in choices:
            raise UserError(f"{name} must be one of {list(choices)}, got {getattr(cfg, name)!r}")
    for name, minimum in _INTS.items():
        if name in names:
            check_int(name, getattr(cfg, name), minimum)
    for name in _OPTIONAL_INTS:
        if name in names:
            check_int(name, getattr(cfg, name), 1, optional=True)
    for name, (low, high, closed) in _NUMBERS.items():
        if name in names:
            check_number(name, getattr(cfg, name), low=low, high=high, closed=closed)
    check_fits(cfg, training=training)
    return _check_budget(cfg, names)


_GATES = {"vanilla": 1, "gru": 3, "lstm": 4}


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no such query here: nothing to check against
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_fits(cfg, *, training: bool = True, memory_bytes: int | None = None) -> None:
    """Refuse, before anything is allocated, a model whose parameters cannot fit in this machine's memory.

    A lower bound from the canonical fields: each of ``layers`` recurrent layers holds at least its gates'
    recurrent matrices, ``G H^2`` float32 numbers (``G`` = 1 vanilla, 3 gru, 4 lstm), and the first its
    input matrices ``G H E``; training keeps params, gradients and AdamW's two moments (4 copies).
    """
    hidden = getattr(cfg, "hidden_size", None)
    if not isinstance(hidden, int) or isinstance(hidden, bool):
        return
    layers, embed = getattr(cfg, "layers", 1), getattr(cfg, "embed_size", 0) or 0
    gates = _GATES.get(getattr(cfg, "cell", "vanilla"), 1)
    params = gates * hidden * (hidden * (layers if isinstance(layers, int) else 1) + embed)
    needed = params * 4 * (4 if training else 1)
    available = memory_bytes if memory_bytes is not None else _memory_bytes()
    if available is not None and needed > available:
        what = "params, gradients and AdamW's two moments" if training else "its params"
        raise UserError(
            f"hidden_size={hidden} needs at least {_gb(needed)} for {what} ({params:,} float32 numbers), more "
            f"than this machine's {_gb(available)} of memory; use a smaller hidden_size (or fewer layers)"
        )


def _check_budget(cfg, names):
    if "steps" not in names or "minutes" not in names:
        return cfg
    if cfg.steps is not None and cfg.minutes is not None:
        raise UserError(f"give one budget, steps or minutes, not both (got steps={cfg.steps}, minutes={cfg.minutes})")
    if cfg.minutes is not None:
        check_number("minutes", cfg.minutes)
    if cfg.steps is None and cfg.minutes is None:
        return dataclasses.replace(cfg, minutes=DEFAULT_MINUTES)
    return cfg
