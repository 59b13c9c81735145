"""``rnn-jax seq2seq train|translate|evaluate|export``: the trainer and a trained model from the command line.

Every flag of ``train`` is a field of :class:`~rnn_jax.apps.seq2seq.Config` (``--hidden-size``, with the
older spellings ``--hidden``, ``--embed``, ``--batch``, ``--lr``, ``--warmup``, ``--no-progress`` and
``--unidirectional`` kept as aliases); ``--out`` defaults to ``runs/seq2seq-TASK``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rnn_jax import distributed, harness
from rnn_jax.apps.seq2seq.config import KIND, Config
from rnn_jax.apps.seq2seq.inference import (
    EXPORT_DTYPES,
    SHIPPED_MODELS,
    Model,
    export_model,
    load_model,
    score_split,
    translate_each,
)
from rnn_jax.apps.seq2seq.training import train
from rnn_jax.errors import UserError
from rnn_jax.harness import field

__all__ = ["TranslateConfig", "EvaluateConfig", "ExportConfig", "cli_main", "config_from_args"]


_MODEL_HELP = f"a model shipped with the package ({', '.join(SHIPPED_MODELS)}), instead of --ckpt"


@dataclasses.dataclass(frozen=True)
class _ModelChoice:
    """The model a command reads: a run's checkpoint (``--ckpt``, ``--which``) or a shipped one (``--model``)."""

    ckpt: str | None = field(None, "a run directory (its best checkpoint) or a .ckpt file", metavar="DIR")
    model: str | None = field(None, _MODEL_HELP, metavar="NAME")
    which: str = field("best", "which checkpoint of the run directory", choices=("best", "latest"))


@dataclasses.dataclass(frozen=True)
class TranslateConfig(_ModelChoice):
    """The settings of ``rnn-jax seq2seq translate``: a checkpoint or a shipped model, and the beam."""

    beam: int = field(1, "beam width (1: greedy)")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(_ModelChoice):
    """The settings of ``rnn-jax seq2seq evaluate``: score a model on its own task's test (or val) split."""

    beam: int = field(5, "beam width (1: greedy)")
    split: str = field("test", "the split to score", choices=("test", "val"))
    limit: int | None = field(None, "score only the first N pairs of the split")
    pairs: str | None = field(None, "a pairs file to split and score instead of the run's own", metavar="FILE.tsv")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The settings of ``rnn-jax seq2seq export``: a run's params alone, in half precision."""

    ckpt: str | None = field(None, "a run directory (its best checkpoint) or a .ckpt file", metavar="DIR",
                             required=True)  # fmt: skip
    which: str = field("best", "which checkpoint of the run directory", choices=("best", "latest"))
    to: str | None = field(None, "the file to write", metavar="FILE.ckpt", required=True)
    dtype: str = field("float16", "the params' dtype in the file", choices=EXPORT_DTYPES)
    info: str | None = field(None, "a JSON file whose object goes into the header (command, metrics)",
                             metavar="FILE.json")  # fmt: skip


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Sequence-to-sequence trainer and translator.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train_p = sub.add_parser("train", help="train on a task or a TSV file; the last stdout line is the test JSON")
    harness.add_config_arguments(train_p, Config, defaults=dataclasses.replace(Config(), out="runs/seq2seq-TASK"))
    train_p.add_argument("--unidirectional", dest="bidirectional", action="store_false", default=argparse.SUPPRESS,
                         help="a forward-only encoder (the same as --no-bidirectional)")  # fmt: skip
    translate_p = sub.add_parser("translate", help="decode inputs with a trained model")
    harness.add_config_arguments(translate_p, TranslateConfig)
    translate_p.add_argument("inputs", nargs="+", metavar="WORD", help="the sources to translate")
    evaluate_p = sub.add_parser("evaluate", help="score a model on its task's test split (one JSON line)")
    harness.add_config_arguments(evaluate_p, EvaluateConfig)
    export_p = sub.add_parser("export", help="write a run's params alone in half precision (a shippable model)")
    harness.add_config_arguments(export_p, ExportConfig)
    return parser


def _load(c: _ModelChoice) -> Model:
    """The model of ``--ckpt`` or of ``--model``: exactly one of them."""
    if (c.ckpt is None) == (c.model is None):
        raise UserError("give one of --ckpt DIR (a trained run) or --model NAME (a shipped model)")
    return load_model(c.ckpt, c.which) if c.ckpt is not None else load_model(name=c.model)


def config_from_args(given: dict | argparse.Namespace) -> Config:
    """The run's config: the flags given, over (with ``resume``) the checkpoint's config, over the defaults.

    Without ``--out`` the run directory is ``runs/seq2seq-TASK`` (``TASK``: the task, or the pairs file's name).
    """
    given = dict(vars(given) if isinstance(given, argparse.Namespace) else given)
    given = {k: v for k, v in given.items() if k not in ("action", "inputs")}
    if "out" not in given:
        name = Path(given["pairs"]).stem if given.get("pairs") else given.get("task", Config.task)
        given["out"] = f"runs/seq2seq-{name}"
    if given.get("resume"):
        return harness.resumed_config(Config, given["out"], KIND, given)
    return harness.config_from_args(Config, given)


def cli_main(argv: list[str], prog: str = "rnn-jax seq2seq") -> int:
    """``train``/``evaluate``: the test metrics as one JSON line; ``translate``: one ``input<TAB>output`` line
    for each input it can translate, each other named on stderr (exit 1); ``export``: one line naming the
    file written."""
    args = _parser(prog).parse_args(argv)
    if args.action == "train":
        summary = train(config_from_args(args)).summary()
        if distributed.is_main_process():  # several processes: process 0 alone prints
            print(json.dumps(summary))
        return 0
    if args.action == "evaluate":
        ec = harness.config_from_args(EvaluateConfig, args)
        if ec.limit is not None:
            harness.check_int("limit", ec.limit)
        model = _load(ec)
        result = score_split(model, ec.split, ec.beam, ec.limit, pairs=ec.pairs)
        print(json.dumps({**result, "model": ec.model or ec.ckpt}))
        return 0
    if args.action == "export":
        xc = harness.config_from_args(ExportConfig, args)
        info = json.loads(Path(xc.info).read_text(encoding="utf-8")) if xc.info else {}
        path = export_model(load_model(xc.ckpt, xc.which), xc.to, dtype=xc.dtype, info=info)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, params in {xc.dtype})")
        return 0
    tc = harness.config_from_args(TranslateConfig, args)
    harness.check_int("beam", tc.beam)
    return print_translations(translate_each(_load(tc), args.inputs, tc.beam), prog)


def print_translations(results, prog: str, failed: str = "inputs could not be translated") -> int:
    """``source<TAB>output`` on stdout for each translated input; on stderr each refused input with its reason
    and a warning for each output cut, empty or beyond the training lengths. 1 if any was refused, else 0."""
    refused = 0
    for r in results:
        if r.error is None:
            print(f"{r.source}\t{r.output}", flush=True)
        if r.notice() is not None:
            refused += r.error is not None
            print(f"{prog}: {'skipped' if r.error is not None else 'warning'}: {r.notice()}", file=sys.stderr)
    if refused:
        print(f"{prog}: {refused} of {len(results)} {failed}", file=sys.stderr)
    return 1 if refused else 0
