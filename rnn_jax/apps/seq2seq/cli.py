"""``rnn-jax seq2seq train|translate``: the trainer and a trained model from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rnn_jax.apps.seq2seq.config import ATTENTIONS, CELL_KINDS, COMPUTE_DTYPES, Config
from rnn_jax.apps.seq2seq.inference import load_model, translate
from rnn_jax.apps.seq2seq.training import train
from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError

__all__ = ["cli_main", "config_from_args"]


def _train_parser(sub):
    d = Config()
    p = sub.add_parser("train", help="train on a task or a TSV file; the last stdout line is the test JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", help=f"one of {', '.join(P.TASKS)}")
    src.add_argument("--pairs", metavar="FILE.tsv", help="tab-separated source<TAB>target lines")
    p.add_argument("--source-unit", choices=("char", "word"), default=d.source_unit, help="TSV source tokens")
    p.add_argument("--target-unit", choices=("char", "word"), default=d.target_unit, help="TSV target tokens")
    p.add_argument("--keep-stress", action="store_true", help="g2p: keep ARPAbet stress digits (AH0, OW1)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget")
    budget.add_argument("--steps", type=int, help="total training steps (resumed steps included)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for the test metrics (1: greedy)")
    p.add_argument("--length-penalty", type=float, default=d.length_penalty)
    p.add_argument("--cell", choices=CELL_KINDS, default=d.cell)
    p.add_argument("--unidirectional", action="store_true", help="a forward-only encoder")
    p.add_argument("--attention", choices=ATTENTIONS, default=d.attention)
    p.add_argument("--embed", type=int, default=d.embed_size, dest="embed_size")
    p.add_argument("--hidden", type=int, default=d.hidden_size, dest="hidden_size")
    p.add_argument("--layers", type=int, default=d.layers, help="depth of the encoder and of the decoder")
    p.add_argument("--dropout", type=float, default=d.dropout, help="between layers and before the output layer")
    p.add_argument("--batch", type=int, default=d.batch_size, dest="batch_size")
    p.add_argument("--lr", type=float, default=d.learning_rate, dest="learning_rate")
    p.add_argument("--warmup", type=int, default=d.warmup_steps, dest="warmup_steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--teacher-forcing", type=float, default=d.teacher_forcing, help="final teacher-forcing ratio")
    p.add_argument("--teacher-forcing-decay-steps", type=int, default=d.teacher_forcing_decay_steps)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-size", type=int, default=d.eval_size)
    p.add_argument(
        "--pad-multiple", type=int, default=d.pad_multiple, help="pad lengths to a multiple (fewer shapes to compile)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", choices=sorted(COMPUTE_DTYPES), default=d.dtype, help="compute dtype of the train step")
    p.add_argument("--devices", type=int, default=None, help="split each batch over N devices (a data mesh)")
    p.add_argument("--out", default=None, help="run directory (default runs/seq2seq-TASK)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest.ckpt")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> Config:
    name = args.task if args.task is not None else Path(args.pairs).stem
    return Config(
        task=args.task or "pairs",
        pairs=args.pairs,
        source_unit=args.source_unit,
        target_unit=args.target_unit,
        keep_stress=args.keep_stress,
        cell=args.cell,
        bidirectional=not args.unidirectional,
        attention=args.attention,
        embed_size=args.embed_size,
        hidden_size=args.hidden_size,
        layers=args.layers,
        dropout=args.dropout,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        teacher_forcing=args.teacher_forcing,
        teacher_forcing_decay_steps=args.teacher_forcing_decay_steps,
        steps=args.steps,
        minutes=args.minutes,
        beam=args.beam,
        length_penalty=args.length_penalty,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        pad_multiple=args.pad_multiple,
        seed=args.seed,
        dtype=args.dtype,
        devices=args.devices,
        out=args.out or f"runs/seq2seq-{name}",
        resume=args.resume,
        progress=not args.no_progress,
    )


def cli_main(argv: list[str], prog: str = "rnn-jax seq2seq") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sequence-to-sequence trainer: reversal, sorting, addition, dates, G2P, or any TSV of pairs.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _train_parser(sub)
    tr = sub.add_parser("translate", help="decode inputs with a trained model")
    tr.add_argument("--ckpt", required=True, help="a run directory (its best checkpoint) or a .ckpt file")
    tr.add_argument("--beam", type=int, default=1)
    tr.add_argument("--which", choices=("best", "latest"), default="best")
    tr.add_argument("inputs", nargs="+", metavar="WORD")
    args = parser.parse_args(argv)
    if args.action == "train":
        if args.task is not None and args.task not in P.TASKS:
            raise UserError(f"unknown task {args.task!r}; expected one of {', '.join(P.TASKS)} (or --pairs FILE.tsv)")
        summary = train(config_from_args(args))
        print(json.dumps(summary))
        return 0
    if args.beam < 1:
        raise UserError(f"beam width must be an integer >= 1, got {args.beam}")
    model = load_model(args.ckpt, args.which)
    for text, output in zip(args.inputs, translate(model, args.inputs, args.beam), strict=True):
        print(f"{text}\t{output}")
    return 0
