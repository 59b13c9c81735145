"""``rnn-jax g2p WORD...``: English words to ARPAbet phonemes with the G2P model shipped in the package.

The model is the project's own seq2seq model trained on CMUdict (stress stripped; the training command and
its test PER/WER are in the README and in the file's header), stored as float16 params in
``rnn_jax/models/``: nothing to train and nothing to download. It knows the letters ``a``-``z``; a word is
read as follows (:func:`word_parts`):

- case does not matter (the model lower-cases, :meth:`~rnn_jax.apps.seq2seq.Model.normalize`);
- apostrophes are silent and dropped: ``don't`` is pronounced as ``dont`` (of CMUdict's words with an
  apostrophe whose spelling without it is a word too, 92% are pronounced the same);
- a hyphenated compound is pronounced part by part: ``well-known`` as ``well`` then ``known`` (85% of
  CMUdict's hyphenated words whose parts are words are pronounced as their parts in a row);
- a word with a digit is refused (spell the number out), as is any other symbol, by name;
- a word longer than :data:`~rnn_jax.apps.seq2seq.inference.MAX_INPUT_LEN` letters is refused.

Every word that can be pronounced is printed (``word<TAB>PHONEMES``); each refused word is named on stderr
with the reason, and the exit status is then 1. An output that reached the decoding length limit before its
end, that came out empty, or whose word is longer than any the model was trained on (28 letters) is printed
with a warning on stderr.
"""

from __future__ import annotations

import argparse

from rnn_jax import harness
from rnn_jax.apps.seq2seq.cli import print_translations
from rnn_jax.apps.seq2seq.inference import Translation, load_model, translate_each
from rnn_jax.errors import UserError

__all__ = ["word_parts", "pronounce", "pronounce_each", "cli_main"]

APOSTROPHES = "'\u2019"
HYPHENS = "-\u2010\u2011"


def word_parts(word: str) -> list[str] | str:
    """The parts of ``word`` to pronounce one after another, or why it cannot be pronounced.

    Apostrophes are dropped, hyphens split the word, digits are refused; other symbols are left for the
    model to refuse by name.
    """
    digits = sorted({c for c in word if c.isdigit()})
    if digits:
        return f"{word!r} has digits {digits}: spell the number out (e.g. 'two' for '2')"
    kept = "".join(c for c in word if c not in APOSTROPHES)
    for hyphen in HYPHENS[1:]:
        kept = kept.replace(hyphen, HYPHENS[0])
    parts = [p for p in kept.split(HYPHENS[0]) if p.strip()]
    return parts if parts else f"{word!r} has no letters"


def pronounce_each(words: list[str], beam: int = 5, model=None) -> list[Translation]:
    """A :class:`~rnn_jax.apps.seq2seq.Translation` per word (``output``: space-separated phonemes; ``error``:
    why the word was refused; ``cut``: a part reached the decoding length limit; ``unseen_length``: a part is
    longer than every training word), by the shipped model
    unless ``model``. One refused word does not stop the others."""
    if isinstance(words, str):
        raise TypeError(f"words must be a list of strings, got the string {words!r}; pass [{words!r}]")
    if not words:
        raise UserError("nothing to pronounce: give at least one word")
    model = load_model(name="g2p") if model is None else model
    split = [word_parts(w) for w in words]
    parts = [p for s in split if not isinstance(s, str) for p in s]
    done = iter(translate_each(model, parts, beam) if parts else [])
    results = []
    for word, s in zip(words, split, strict=True):
        if isinstance(s, str):
            results.append(Translation(word, "", error=s))
            continue
        got = [next(done) for _ in s]
        bad = next((t.error for t in got if t.error is not None), None)
        output = "" if bad else " ".join(t.output for t in got if t.output)
        cut, unseen = any(t.cut for t in got), any(t.unseen_length for t in got)
        results.append(Translation(word, output, cut=cut, error=bad, unseen_length=unseen))
    return results


def pronounce(words: list[str], beam: int = 5, model=None) -> list[str]:
    """The ARPAbet pronunciation of each word (space-separated phonemes), by the shipped model unless ``model``;
    the first word that cannot be pronounced is a :class:`UserError` naming it and the reason."""
    results = pronounce_each(words, beam, model)
    bad = next((r.error for r in results if r.error is not None), None)
    if bad is not None:
        raise UserError(bad)
    return [r.output for r in results]


def cli_main(argv: list[str], prog: str = "rnn-jax g2p") -> int:
    """Print ``word<TAB>PHONEMES`` for each word that can be pronounced; name each other on stderr (exit 1)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="+", metavar="WORD", help="the words to pronounce")
    parser.add_argument("--beam", type=int, default=5, help="beam width (1: greedy; default 5)")
    args = parser.parse_args(argv)
    harness.check_int("beam", args.beam)
    return print_translations(pronounce_each(args.words, args.beam), prog, "words could not be pronounced")
