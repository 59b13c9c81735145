"""Character-level text data: corpora, vocabularies, and batches for truncated BPTT.

Corpora (:func:`load_corpus`):

- ``"python-stdlib"`` (the default): a fixed list of pure-Python modules of the standard library
  (:data:`STDLIB_MODULES`), read from the running interpreter's own ``Lib/`` directory and joined in
  that order. Every install has it: no download, no file to supply. Its exact text depends on the
  Python version (0.88 MB and 96 distinct characters on CPython 3.11).
- ``"tinyshakespeare"``: Karpathy's 1.1 MB Shakespeare, downloaded once from :data:`CORPORA` into the
  cache directory (``$RNN_JAX_CACHE`` or ``~/.cache/rnn_jax``) and verified by its SHA-256.
- any UTF-8 file (:func:`load_text`).

Batches for truncated BPTT (:class:`StreamBatches`): the training text is cut into ``B`` equal
streams, one per batch row; batch ``k`` holds the ``k``-th window of ``T`` characters of every stream,
so row ``b`` of batch ``k + 1`` continues row ``b`` of batch ``k`` and the model's carry can be passed
on. When the streams run out they start again from their beginnings, and the batch says so
(``reset_B``) so the carry is zeroed. :class:`RandomWindows` draws independent windows instead (the
carry is zeroed every batch). Both are pure functions of the batch number ``k`` (the data cursor), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rnn_jax.errors import UserError

__all__ = [
    "STDLIB_MODULES",
    "CORPORA",
    "Vocab",
    "Split",
    "TextBatch",
    "StreamBatches",
    "RandomWindows",
    "load_text",
    "stdlib_corpus",
    "download",
    "load_corpus",
    "split_text",
    "eval_windows",
]

# Pure-Python standard library modules whose source is plain ASCII in CPython 3.10 to 3.13, in a fixed order
# (about 0.9 MB of text, 96 distinct characters).
STDLIB_MODULES = (
    "argparse",
    "textwrap",
    "difflib",
    "calendar",
    "bisect",
    "string",
    "pprint",
    "dataclasses",
    "contextlib",
    "copy",
    "csv",
    "configparser",
    "fnmatch",
    "glob",
    "graphlib",
    "gettext",
    "numbers",
    "operator",
    "queue",
    "sched",
    "shutil",
    "tempfile",
    "traceback",
    "optparse",
    "secrets",
    "timeit",
    "uuid",
    "wave",
    "colorsys",
    "reprlib",
    "cmd",
    "code",
    "ipaddress",
)

# name -> (canonical URL, SHA-256 of the file)
CORPORA = {
    "tinyshakespeare": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}

DEFAULT_CORPUS = "python-stdlib"


# ---------------------------------------------------------------------------------------------------
# Text sources
# ---------------------------------------------------------------------------------------------------


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{where} is not UTF-8 text: byte {data[err.start]:#04x} at offset {err.start} cannot be decoded"
        ) from None


def load_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file; a missing, unreadable, empty or non-UTF-8 file is a :class:`UserError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; expected a UTF-8 text file") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    text = _decode(data, str(path))
    if not text:
        raise UserError(f"{path} is empty; give a text of at least a few thousand characters")
    return text


def stdlib_corpus() -> str:
    """The default corpus: the source of :data:`STDLIB_MODULES`, read from this interpreter's library."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in STDLIB_MODULES:
        path = lib / f"{name}.py"
        if path.is_file():
            parts.append(_decode(path.read_bytes(), str(path)))
    if not parts:
        raise UserError(
            f"this Python installation ships no standard library sources in {lib}; pass --text PATH instead"
        )
    return "".join(parts)


def cache_dir() -> Path:
    return Path(os.environ.get("RNN_JAX_CACHE") or Path.home() / ".cache" / "rnn_jax")


def download(url: str, sha256: str, path: str | os.PathLike, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``path`` once, checking its SHA-256; later calls read the cached file.

    The file is written atomically (temporary file, then rename) and only after its hash matched.
    """
    path = Path(path)
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
        return path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"could not download {url}: {getattr(err, 'reason', err)}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise UserError(f"the file downloaded from {url} has SHA-256 {got}, expected {sha256}; not using it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def load_corpus(name: str | None = None, text_path: str | os.PathLike | None = None) -> tuple[str, str]:
    """Return ``(text, description)`` for ``--text PATH`` or ``--corpus NAME`` (the default corpus if neither)."""
    if text_path is not None and name is not None:
        raise UserError("give either a text file or a corpus name, not both")
    if text_path is not None:
        return load_text(text_path), str(text_path)
    name = name or DEFAULT_CORPUS
    if name == DEFAULT_CORPUS:
        return stdlib_corpus(), f"{DEFAULT_CORPUS} ({len(STDLIB_MODULES)} modules)"
    if name not in CORPORA:
        known = ", ".join([DEFAULT_CORPUS, *CORPORA])
        raise UserError(f"unknown corpus {name!r}; known corpora: {known}")
    url, sha = CORPORA[name]
    path = download(url, sha, cache_dir() / f"{name}.txt")
    return load_text(path), name


# ---------------------------------------------------------------------------------------------------
# Vocabulary and split
# ---------------------------------------------------------------------------------------------------


class Vocab(NamedTuple):
    """A character vocabulary: ``chars[i]`` is the character with id ``i`` (sorted, so it is reproducible)."""

    chars: str

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> np.ndarray:
        """``[len(text)]`` int32 ids; characters outside the vocabulary are a :class:`UserError` naming them."""
        index = self.index()
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise UserError(f"characters {unknown} are not in the vocabulary of {self.size} characters")
        lookup = np.zeros(max(map(ord, index)) + 1, np.int32)
        lookup[[ord(c) for c in index]] = list(index.values())
        return lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)] if text else np.zeros(0, np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


class Split(NamedTuple):
    """Encoded training and validation ids."""

    train: np.ndarray
    val: np.ndarray


def split_text(ids: np.ndarray, *, val_fraction: float = 0.1) -> Split:
    """The first ``1 - val_fraction`` of the text trains, the last ``val_fraction`` validates."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"the validation fraction must lie in (0, 1), got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    return Split(ids[: len(ids) - n_val], ids[len(ids) - n_val :])


def check_sizes(split: Split, *, batch: int, seq_len: int, eval_streams: int = 1) -> None:
    """The text must hold at least one batch of ``batch`` sequences of ``seq_len + 1`` characters, and the
    validation part one sequence per evaluation stream."""
    for name, value in dict(batch=batch, seq_len=seq_len).items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise UserError(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")
    need_train = batch * (seq_len + 1)
    if len(split.train) < need_train:
        total = len(split.train) + len(split.val)
        raise UserError(
            f"the text is too short: {total} characters, of which {len(split.train)} for training; one batch of "
            f"{batch} sequences of {seq_len}+1 characters needs {need_train} (lower --batch or --seq-len, or give "
            "a longer text)"
        )
    if len(split.val) < 2:
        raise UserError(f"the validation part of the text has {len(split.val)} characters; it needs at least 2")


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------


class TextBatch(NamedTuple):
    """One training batch: inputs, next-character targets, and whether each row starts a new stream."""

    inputs_BT: np.ndarray  # int32
    targets_BT: np.ndarray  # int32
    reset_B: np.ndarray  # bool: zero the carry of this row before reading it


class StreamBatches:
    """``B`` parallel streams through the text for truncated BPTT; ``batches(k)`` is a pure function of ``k``.

    Stream ``b`` is ``ids[b * S : (b + 1) * S]`` with ``S = len(ids) // B``; batch ``k`` holds window
    ``w = k mod W`` (``W = (S - 1) // T`` windows per stream): inputs ``stream[w T : w T + T]`` and targets
    shifted by one. ``reset_B`` is True at ``w = 0``, where the streams (re)start.
    """

    def __init__(self, ids: np.ndarray, batch: int, seq_len: int):
        S = len(ids) // batch
        self.windows = (S - 1) // seq_len
        if self.windows < 1:
            raise UserError(f"{len(ids)} characters cannot fill {batch} streams of {seq_len}+1 characters")
        self.streams_BS = np.asarray(ids[: batch * S], np.int32).reshape(batch, S)
        self.batch, self.seq_len = batch, seq_len

    def __call__(self, k: int) -> TextBatch:
        w = k % self.windows
        t0 = w * self.seq_len
        chunk = self.streams_BS[:, t0 : t0 + self.seq_len + 1]
        return TextBatch(chunk[:, :-1], chunk[:, 1:], np.full((self.batch,), w == 0))


class RandomWindows:
    """Independent random windows: batch ``k`` draws ``B`` start positions from ``default_rng([seed, k])``."""

    def __init__(self, ids: np.ndarray, batch: int, seq_len: int, seed: int = 0):
        if len(ids) < seq_len + 1:
            raise UserError(f"{len(ids)} characters cannot fill a window of {seq_len}+1 characters")
        self.ids = np.asarray(ids, np.int32)
        self.batch, self.seq_len, self.seed = batch, seq_len, seed
        self._offsets = np.arange(seq_len + 1)

    def __call__(self, k: int) -> TextBatch:
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(0, len(self.ids) - self.seq_len, size=self.batch)
        chunk = self.ids[starts[:, None] + self._offsets[None, :]]
        return TextBatch(chunk[:, :-1], chunk[:, 1:], np.ones((self.batch,), bool))


def eval_windows(ids: np.ndarray, streams: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation text as ``streams`` parallel streams cut into windows: ``(inputs_NEW, targets_NEW)``.

    Every character but the first of each stream is predicted exactly once, with the carry passed from
    window to window (as in training), so the mean loss is the per-character loss of the text. The
    stream length is cut to a multiple of ``window`` (at most ``window`` characters per stream dropped).
    """
    streams = max(1, min(streams, len(ids) - 1))
    S = (len(ids) - 1) // streams  # predictable characters per stream
    window = max(1, min(window, S))
    n = S // window
    L = n * window
    x = np.stack([ids[b * S : b * S + L] for b in range(streams)]).astype(np.int32)
    y = np.stack([ids[b * S + 1 : b * S + L + 1] for b in range(streams)]).astype(np.int32)
    to_windows = lambda a: a.reshape(streams, n, window).transpose(1, 0, 2)  # noqa: E731
    return to_windows(x), to_windows(y)
