"""``rnn-jax g2p WORD...``: English words to ARPAbet phonemes with the G2P model shipped in the package.

The model is the project's own seq2seq model trained on CMUdict (stress stripped; the training command and
its test PER/WER are in the README and in the file's header), stored as float16 params in
``rnn_jax/models/``: nothing to train and nothing to download. Words are lower-cased; the model knows the
letters ``a``-``z`` and refuses other symbols by name.
"""

from __future__ import annotations

import argparse

from rnn_jax import harness as H
from rnn_jax.apps.seq2seq.inference import load_model, translate

__all__ = ["pronounce", "cli_main"]


def pronounce(words: list[str], beam: int = 5, model=None) -> list[str]:
    """The ARPAbet pronunciation of each word (space-separated phonemes), by the shipped model unless ``model``."""
    model = load_model(name="g2p") if model is None else model
    return translate(model, [w.lower() for w in words], beam)


def cli_main(argv: list[str], prog: str = "rnn-jax g2p") -> int:
    """Print ``word<TAB>PHONEMES`` for each word."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", metavar="WORD", help="the words to pronounce")
    parser.add_argument("--beam", type=int, default=5, help="beam width (1: greedy; default 5)")
    args = parser.parse_args(argv)
    H.check_int("beam", args.beam)
    for word, phonemes in zip(args.words, pronounce(args.words, args.beam), strict=True):
        print(f"{word}\t{phonemes}")
    return 0
