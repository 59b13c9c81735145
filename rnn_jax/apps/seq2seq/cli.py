"""``rnn-jax seq2seq train|translate``: the trainer and a trained model from the command line.

Every flag of ``train`` is a field of :class:`~rnn_jax.apps.seq2seq.Config` (``--hidden-size``, with the
older spellings ``--hidden``, ``--embed``, ``--batch``, ``--lr``, ``--warmup``, ``--no-progress`` and
``--unidirectional`` kept as aliases); ``--out`` defaults to ``runs/seq2seq-TASK``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rnn_jax import distributed as D
from rnn_jax import harness as H
from rnn_jax.apps.seq2seq.config import KIND, Config
from rnn_jax.apps.seq2seq.inference import load_model, translate
from rnn_jax.apps.seq2seq.training import train
from rnn_jax.harness import field

__all__ = ["TranslateConfig", "cli_main", "config_from_args"]


@dataclasses.dataclass(frozen=True)
class TranslateConfig:
    """The settings of ``rnn-jax seq2seq translate``."""

    ckpt: str | None = field(None, "a run directory (its best checkpoint) or a .ckpt file", metavar="DIR",
                             required=True)  # fmt: skip
    which: str = field("best", "which checkpoint of the run directory", choices=("best", "latest"))
    beam: int = field(1, "beam width (1: greedy)")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Sequence-to-sequence trainer and translator.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train_p = sub.add_parser("train", help="train on a task or a TSV file; the last stdout line is the test JSON")
    H.add_config_arguments(train_p, Config, defaults=dataclasses.replace(Config(), out="runs/seq2seq-TASK"))
    train_p.add_argument("--unidirectional", dest="bidirectional", action="store_false", default=argparse.SUPPRESS,
                         help="a forward-only encoder (the same as --no-bidirectional)")  # fmt: skip
    translate_p = sub.add_parser("translate", help="decode inputs with a trained model")
    H.add_config_arguments(translate_p, TranslateConfig)
    translate_p.add_argument("inputs", nargs="+", metavar="WORD", help="the sources to translate")
    return parser


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
        return H.resumed_config(Config, given["out"], KIND, given)
    return H.config_from_args(Config, given)


def cli_main(argv: list[str], prog: str = "rnn-jax seq2seq") -> int:
    """``train``: print the test metrics as one JSON line; ``translate``: one ``input<TAB>output`` line each."""
    args = _parser(prog).parse_args(argv)
    if args.action == "train":
        summary = train(config_from_args(args)).summary()
        if D.is_main_process():  # several processes: process 0 alone prints
            print(json.dumps(summary))
        return 0
    tc = H.config_from_args(TranslateConfig, args)
    H.check_int("beam", tc.beam)
    model = load_model(tc.ckpt, tc.which)
    for text, output in zip(args.inputs, translate(model, args.inputs, tc.beam), strict=True):
        print(f"{text}\t{output}")
    return 0
