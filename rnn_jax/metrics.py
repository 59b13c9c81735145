"""Metrics over decoded token sequences: edit distance, token error rate, exact match.

Every function takes hypotheses (one token sequence per input) and, for each input, one or more
acceptable references (a word with two pronunciations has two). Tokens may be characters, phonemes,
words: anything comparable with ``==``.

- **exact match** (word accuracy): the fraction of inputs whose hypothesis equals one of its references.
- **WER** in the G2P sense (word error rate, one "word" per input): ``1 - exact match``.
- **token error rate** (the phoneme error rate, PER, for G2P; the character error rate for text):
  ``sum_i d(hyp_i, ref_i*) / sum_i |ref_i*|`` with ``d`` the Levenshtein distance (insertions,
  deletions and substitutions cost 1) and ``ref_i*`` the reference closest to ``hyp_i`` (the shorter
  one on a tie). It is a ratio of totals, not a mean of per-input ratios, as in speech recognition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["edit_distance", "closest_reference", "exact_match", "token_error_rate", "Scores", "score"]


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``.

    ``D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [a_i != b_j])``, one row at a time.
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _check(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} hypotheses but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if len(refs) == 0:
            raise ValueError(f"input {i} has no reference")


def closest_reference(hypothesis: Sequence, references: Sequence[Sequence]) -> tuple[int, int]:
    """``(distance, reference length)`` of the reference nearest to ``hypothesis`` (shorter on ties)."""
    return min((edit_distance(hypothesis, r), len(r)) for r in references)


def exact_match(hypotheses: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> float:
    """Fraction of inputs whose hypothesis equals any of its references."""
    _check(hypotheses, references)
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    hits = sum(any(tuple(h) == tuple(r) for r in refs) for h, refs in zip(hypotheses, references, strict=True))
    return hits / len(hypotheses)


def token_error_rate(hypotheses: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> float:
    """Total edit distance to the closest references over their total length (PER for G2P)."""
    _check(hypotheses, references)
    edits = total = 0
    for h, refs in zip(hypotheses, references, strict=True):
        d, n = closest_reference(h, refs)
        edits, total = edits + d, total + n
    if total == 0:
        raise ValueError("the references have no tokens: the token error rate is undefined")
    return edits / total


class Scores(NamedTuple):
    exact_match: float
    wer: float
    token_error_rate: float
    n: int

    def as_dict(self) -> dict:
        return self._asdict()


def score(hypotheses: Sequence[Sequence], references: Sequence[Sequence[Sequence]]) -> Scores:
    """All three metrics at once."""
    em = exact_match(hypotheses, references)
    return Scores(em, 1.0 - em, token_error_rate(hypotheses, references), len(hypotheses))
