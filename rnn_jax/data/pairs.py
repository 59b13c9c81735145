"""Pairs of token sequences: splits by hash rank, TSV files of pairs, vocabularies and padded batches.

A data set is a :class:`Task`: a list of :class:`Pair` per split. A pair holds the source tokens and
*every* acceptable target (a word with two pronunciations has two); training uses each target as its own
example, and evaluation counts an output as correct if it matches any of them. Splits are made by ranking
keys by their BLAKE2b hash (:func:`split_by_key`): no key is in two splits, and a split depends on
neither numpy nor the data's order. The seq2seq trainer's named tasks (reversal, dates, CMUdict...) are
:mod:`rnn_jax.apps.seq2seq.tasks`.

``load_pairs_file(path)`` reads a tab-separated file ``source<TAB>target`` per line (repeated sources
with different targets become one pair with several targets) and splits it by source with the same
hash ranking (10% test, 10% validation, at least one of each). Sequences are capped at
``max_source_len`` / ``max_target_len`` tokens (500 each by default): a longer line is an error, or is
skipped and counted (``skip_long``).

Batches (:func:`batches`) are bucketed by length: examples of similar length go together and each
batch is padded to a multiple of ``pad_multiple``, so few distinct shapes are compiled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from rnn_jax.errors import UserError

__all__ = [
    "PAD",
    "BOS",
    "EOS",
    "SPECIALS",
    "UNK",
    "UNK_ID",
    "Pair",
    "Task",
    "Vocab",
    "Batch",
    "Encoded",
    "tokenize",
    "detokenize",
    "split_by_key",
    "load_pairs_file",
    "encode_pairs",
    "batches",
    "pad_batch",
]

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>")
UNK, UNK_ID = "<unk>", 3
RESERVED = (*SPECIALS, UNK)
MAX_SOURCE_LEN = MAX_TARGET_LEN = 500  # tokens: a pairs file's caps (a batch of 128 at 500 x 500 attention fits)


class Pair(NamedTuple):
    """One source and every acceptable target, as token tuples."""

    source: tuple[str, ...]
    targets: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Task:
    """A task's three splits and how its strings are cut into tokens.

    ``source_unit`` / ``target_unit``: ``"char"`` (every character a token) or ``"word"`` (tokens
    separated by spaces, e.g. ARPAbet phonemes).
    """

    name: str
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    source_unit: str = "char"
    target_unit: str = "char"
    description: str = ""
    skipped_long: int = 0  # lines of a pairs file skipped for a sequence over the length caps (skip_long)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def tokenize(text: str, unit: str) -> tuple[str, ...]:
    """Cut ``text`` into tokens: characters (``unit="char"``) or space-separated words (``"word"``)."""
    if unit == "char":
        return tuple(text)
    if unit == "word":
        return tuple(text.split())
    raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")


def detokenize(tokens: Sequence[str], unit: str) -> str:
    """The inverse of :func:`tokenize`."""
    return ("" if unit == "char" else " ").join(tokens)


# ---------------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Token <-> id, with ``<pad>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2 first, then ``<unk>`` = 3.

    :meth:`build` always reserves ``<unk>`` (the id of a token the training split never showed); a
    vocabulary read back from an older checkpoint may lack it, and then every unknown token is an error.
    """

    symbols: tuple[str, ...]

    def __post_init__(self):
        if tuple(self.symbols[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {self.symbols[:3]}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("a vocabulary must not repeat symbols")
        if UNK in self.symbols and self.symbols.index(UNK) != UNK_ID:
            raise ValueError(f"{UNK} must have id {UNK_ID}, got {self.symbols.index(UNK)}")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.symbols)})

    @classmethod
    def build(cls, sequences) -> Vocab:
        """Every token seen in ``sequences`` (an iterable of token tuples), sorted, after the specials and ``<unk>``."""
        seen = set()
        for seq in sequences:
            seen.update(seq)
        clash = seen & set(RESERVED)
        if clash:
            raise UserError(f"the data contains reserved symbols {sorted(clash)}")
        return cls(RESERVED + tuple(sorted(seen)))

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def has_unknown(self) -> bool:
        """Whether ``<unk>`` has an id (every vocabulary :meth:`build` makes has one)."""
        return UNK in self._index

    def encode(self, tokens: Sequence[str], *, what: str = "input", unknown: bool = False) -> list[int]:
        """Token ids of ``tokens``. A token outside the vocabulary is a :class:`UserError` naming it, or with
        ``unknown=True`` (evaluating a split the vocabulary was not built from) the id of ``<unk>``."""
        if unknown and self.has_unknown:
            return [self._index.get(t, UNK_ID) if t not in RESERVED else UNK_ID for t in tokens]
        missing = [t for t in tokens if t not in self._index or t in RESERVED]
        if missing:
            known = " ".join(s for s in self.symbols if s not in RESERVED)
            shown = sorted(set(missing))
            raise UserError(f"{what} {''.join(tokens)!r} has symbols outside the vocabulary: {shown}; known: {known}")
        return [self._index[t] for t in tokens]

    def decode(self, ids: Sequence[int]) -> tuple[str, ...]:
        """Tokens of ``ids`` up to the first EOS, without PAD/BOS (``<unk>`` stays, matching no reference)."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.symbols[i])
        return tuple(out)

    def to_json(self) -> list[str]:
        return list(self.symbols)

    @classmethod
    def from_json(cls, symbols: Sequence[str]) -> Vocab:
        return cls(tuple(symbols))


# ---------------------------------------------------------------------------------------------------
# Deterministic splits
# ---------------------------------------------------------------------------------------------------


def _hash_rank(keys: Sequence[str], salt: str) -> list[str]:
    """``keys`` ordered by the BLAKE2b hash of ``salt + ":" + key``: stable across platforms and versions."""

    def h(k: str) -> bytes:
        return hashlib.blake2b(f"{salt}:{k}".encode(), digest_size=8).digest()

    return sorted(keys, key=lambda k: (h(k), k))


def split_by_key(pairs: dict[str, Pair], salt: str, n_test: int, n_val: int) -> tuple[list, list, list]:
    """``(train, val, test)`` of ``pairs`` by the hash rank of their keys: the first ``n_test`` keys are the
    test split, the next ``n_val`` validation, the rest training; a key's split depends on the key alone."""
    ranked = _hash_rank(list(pairs), salt)
    test, val, train = ranked[:n_test], ranked[n_test : n_test + n_val], ranked[n_test + n_val :]
    return [pairs[k] for k in train], [pairs[k] for k in val], [pairs[k] for k in test]


# ---------------------------------------------------------------------------------------------------
# Pairs from a file
# ---------------------------------------------------------------------------------------------------


def _utf8_lines(path: str) -> list[str]:
    """The file's lines, or a :class:`UserError` naming the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return list(io.StringIO(data.decode("utf-8"), newline=None))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(
            f"pairs file {path!r} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
            "save it as UTF-8 (e.g. iconv -t UTF-8)"
        ) from None


def load_pairs_file(
    path: str | os.PathLike,
    source_unit: str = "char",
    target_unit: str = "char",
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    max_source_len: int = MAX_SOURCE_LEN,
    max_target_len: int = MAX_TARGET_LEN,
    skip_long: bool = False,
) -> Task:
    """Read ``source<TAB>target`` lines (UTF-8); blank lines and lines starting with ``#`` are skipped.

    A source over ``max_source_len`` tokens or a target over ``max_target_len`` (a batch is padded to its
    longest sequence, so one long line multiplies a step's memory) is an error naming the line, or, with
    ``skip_long``, is left out and counted in the task's ``skipped_long``.

    Raises :class:`UserError` naming the file, the line number and the line for a malformed or too long
    line, and for a file without at least three distinct sources (one per split).
    """
    path = os.fspath(path)
    for name, value in (("max_source_len", max_source_len), ("max_target_len", max_target_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if not os.path.isfile(path):
        raise UserError(f"pairs file {path!r} does not exist")
    grouped: dict[str, list[tuple[str, ...]]] = {}
    skipped = 0
    for lineno, raw in enumerate(_utf8_lines(path), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UserError(
                f"{path}:{lineno}: expected 'source<TAB>target' (2 tab-separated fields), "
                f"got {len(fields)} field(s): {line!r}"
            )
        src, tgt = (tokenize(x, u) for x, u in zip(fields, (source_unit, target_unit), strict=True))
        if not src or not tgt or not "".join(src).strip() or not "".join(tgt).strip():
            raise UserError(f"{path}:{lineno}: source and target must both be non-empty, got {line!r}")
        for tok in src + tgt:
            if tok in RESERVED:
                raise UserError(f"{path}:{lineno}: the reserved symbol {tok!r} is not allowed: {line!r}")
        too_long = _too_long(src, tgt, max_source_len, max_target_len)
        if too_long and skip_long:
            skipped += 1
            continue
        if too_long:
            raise UserError(f"{path}:{lineno}: {too_long}; raise the cap, or skip such lines (skip_long)")
        key = detokenize(src, source_unit)
        targets = grouped.setdefault(key, [])
        if tgt not in targets:
            targets.append(tgt)
    if not grouped:
        raise UserError(f"pairs file {path!r} has no pairs (expected lines 'source<TAB>target')")
    if len(grouped) < 3:
        raise UserError(
            f"pairs file {path!r} has {len(grouped)} distinct source(s); need at least 3 (train, val, test)"
        )
    n = len(grouped)
    n_test = max(1, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    pairs = {k: Pair(tokenize(k, source_unit), tuple(v)) for k, v in grouped.items()}
    train, val, test = split_by_key(pairs, "pairs", n_test, n_val)
    name = os.path.splitext(os.path.basename(path))[0]
    note = f" ({skipped} line(s) over the length caps skipped)" if skipped else ""
    return Task(name, train, val, test, source_unit, target_unit, f"pairs from {path}{note}", skipped)


def _too_long(src: Sequence[str], tgt: Sequence[str], max_source_len: int, max_target_len: int) -> str:
    """What is over the caps ('' when nothing): the side, its length and the cap."""
    if len(src) > max_source_len:
        return f"the source has {len(src):,} tokens, over max_source_len {max_source_len}"
    if len(tgt) > max_target_len:
        return f"the target has {len(tgt):,} tokens, over max_target_len {max_target_len}"
    return ""


# ---------------------------------------------------------------------------------------------------
# Encoding and batching
# ---------------------------------------------------------------------------------------------------


class Encoded(NamedTuple):
    """A split as ids: one row per training example (one per target of every pair).

    ``pair_index[i]`` is the pair row ``i`` came from, so that evaluation can compare a decoded output
    with all targets of its source.
    """

    sources: list[list[int]]
    targets: list[list[int]]
    pair_index: list[int]


def encode_pairs(
    pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab, *, all_targets: bool = True, unknown: bool = False
) -> Encoded:
    """Ids of every pair; with ``all_targets`` one row per target, else one row per pair (its first target).

    ``unknown=True`` maps tokens outside the vocabularies to ``<unk>`` (a split they were not built from).
    """
    sources, targets, index = [], [], []
    for i, pair in enumerate(pairs):
        src = src_vocab.encode(pair.source, unknown=unknown)
        for tgt in pair.targets if all_targets else pair.targets[:1]:
            sources.append(src)
            targets.append(tgt_vocab.encode(tgt, what="target", unknown=unknown))
            index.append(i)
    return Encoded(sources, targets, index)


class Batch(NamedTuple):
    """A padded batch (numpy, ready for ``jax.device_put``).

    ``src`` [B, S] source ids (PAD after ``src_len``); ``tgt_in`` [B, T] decoder inputs ``<s> y_1 ..``;
    ``tgt_out`` [B, T] what each step must predict ``y_1 .. </s>``; ``tgt_len`` [B] = len(y) + 1;
    ``weight`` [B] 1 for real rows, 0 for the rows that fill the last batch of an evaluation.
    ``index`` [B] the row numbers in the :class:`Encoded` split (-1 for filler rows).
    """

    src: np.ndarray
    src_len: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray
    tgt_len: np.ndarray
    weight: np.ndarray
    index: np.ndarray


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]] | None,
    *,
    batch_size: int | None = None,
    pad_multiple: int = 8,
    index: Sequence[int] | None = None,
) -> Batch:
    """Pad one batch; ``batch_size`` larger than the rows adds filler rows with weight 0.

    Lengths are rounded up to a multiple of ``pad_multiple`` so that only a few shapes are compiled.
    Without ``targets`` (translation) the target arrays have one step of ``<s>``.
    """
    n = len(sources)
    B = batch_size or n
    if n < 1 or B < n:
        raise ValueError(f"a batch needs 1..{B} rows, got {n}")
    S = _round_up(max(len(s) for s in sources), pad_multiple)
    T = _round_up(max(len(t) for t in targets) + 1, pad_multiple) if targets is not None else 1
    src = np.full((B, S), PAD, np.int32)
    src_len = np.ones((B,), np.int32)  # filler rows: length 1 keeps attention well defined
    tgt_in = np.full((B, T), PAD, np.int32)
    tgt_out = np.full((B, T), PAD, np.int32)
    tgt_len = np.zeros((B,), np.int32)
    tgt_in[:, 0] = BOS
    weight = np.zeros((B,), np.float32)
    idx = np.full((B,), -1, np.int64)
    for r in range(n):
        s = sources[r]
        src[r, : len(s)] = s
        src_len[r] = len(s)
        if targets is not None:
            t = targets[r]
            tgt_in[r, 1 : len(t) + 1] = t
            tgt_out[r, : len(t)] = t
            tgt_out[r, len(t)] = EOS
            tgt_len[r] = len(t) + 1
        weight[r] = 1.0
        idx[r] = r if index is None else index[r]
    return Batch(src, src_len, tgt_in, tgt_out, tgt_len, weight, idx)


def batches(
    data: Encoded,
    batch_size: int,
    *,
    rng: np.random.Generator | None = None,
    pad_multiple: int = 8,
    bucket_batches: int = 50,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Length-bucketed batches of ``data``.

    With ``rng`` (training): shuffle, then sort chunks of ``bucket_batches * batch_size`` examples by
    length and cut them into batches, and shuffle the batches: similar lengths share a batch (little
    padding) while the order stays random. Without ``rng`` (evaluation): sorted by length, every row
    exactly once, the last batch filled up with weight-0 rows so that every batch has ``batch_size`` rows.
    """
    n = len(data.sources)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    lengths = np.array([len(s) + len(t) for s, t in zip(data.sources, data.targets, strict=True)])
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        groups = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    else:
        perm = rng.permutation(n)
        chunk = bucket_batches * batch_size
        groups = []
        for c in range(0, n, chunk):
            part = perm[c : c + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        groups = [groups[i] for i in rng.permutation(len(groups))]
    for g in groups:
        if drop_last and len(g) < batch_size:
            continue
        yield pad_batch(
            [data.sources[i] for i in g],
            [data.targets[i] for i in g],
            batch_size=batch_size,
            pad_multiple=pad_multiple,
            index=g,
        )
