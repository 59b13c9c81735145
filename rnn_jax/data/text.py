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
    "EvalWindows",
    "eval_windows",
    "check_text",
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


def _shown(path) -> str:
    """A path as an error message shows it: a long string (a text passed where a path belongs) is cut."""
    text = str(path)
    if len(text) <= 200 and "\n" not in text:
        return text
    return f"{text[:40]!r}... ({len(text):,} characters; pass a text itself as text=, a file as text_path=)"


def check_text(text: str, where: str) -> str:
    """A training text must not be binary (NUL bytes) and must hold at least 2 distinct characters."""
    nul = text.find("\x00")
    if nul >= 0:
        raise UserError(f"{where} looks like a binary file (a NUL byte at character {nul}); expected UTF-8 text")
    distinct = len(set(text))
    if distinct < 2:
        raise UserError(f"{where} holds {distinct} distinct character(s); a language model needs at least 2")
    return text


def load_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file; a missing, unreadable, empty, binary or non-UTF-8 file, or one of a single
    repeated character, is a :class:`UserError` naming the path."""
    shown = _shown(path)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no such file: {shown}") from None
    except IsADirectoryError:
        raise UserError(f"{shown} is a directory; expected a UTF-8 text file") from None
    except OSError as err:
        raise UserError(f"cannot read {shown}: {err.strerror or err}") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UserError(f"{shown} looks like a binary file (a NUL byte at offset {nul}); expected UTF-8 text")
    text = _decode(data, shown)
    if not text:
        raise UserError(f"{shown} is empty; give a text of at least a few thousand characters")
    return check_text(text, shown)


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
            f"this Python installation ships no standard library sources in {lib}; "
            "give a text file as text_path (the CLI's --text) instead"
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


def load_corpus(
    name: str | None = None, text_path: str | os.PathLike | None = None, text: str | None = None
) -> tuple[str, str]:
    """Return ``(text, description)`` from one source: ``text`` itself, a ``text_path`` file, or a corpus
    ``name`` (the default corpus if none is given). Every source passes :func:`check_text`."""
    given = [k for k, v in dict(text=text, text_path=text_path, corpus=name).items() if v is not None]
    if len(given) > 1:
        raise UserError(f"give one text source, not {' and '.join(given)}")
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str (the text itself), got {type(text).__name__}")
        return check_text(text, "the text given"), f"the text given ({len(text):,} characters)"
    if text_path is not None:
        return load_text(text_path), _shown(text_path)
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
            f"{batch} sequences of {seq_len}+1 characters needs {need_train} (lower batch_size or seq_len, or give "
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
    """``B`` parallel streams through the text for truncated BPTT; ``batches(k)`` is a pure function of ``k``
    (a :class:`rnn_jax.harness.Batcher`).

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
        self.items_per_step = batch * seq_len  # characters per batch (the harness's Batcher protocol)

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
        self.items_per_step = batch * seq_len
        self._offsets = np.arange(seq_len + 1)

    def __call__(self, k: int) -> TextBatch:
        rng = np.random.default_rng([self.seed, k])
        starts = rng.integers(0, len(self.ids) - self.seq_len, size=self.batch)
        chunk = self.ids[starts[:, None] + self._offsets[None, :]]
        return TextBatch(chunk[:, :-1], chunk[:, 1:], np.ones((self.batch,), bool))


class EvalWindows(NamedTuple):
    """Validation text as parallel streams cut into windows: ``[N, E, W]`` inputs, targets and a 0/1 mask."""

    inputs_NEW: np.ndarray  # int32
    targets_NEW: np.ndarray  # int32
    mask_NEW: np.ndarray  # float32: 1 where a target is a character of the text, 0 on padding


def eval_windows(ids: np.ndarray, streams: int, window: int) -> EvalWindows:
    """Every character of ``ids`` but the first, predicted exactly once, by ``E`` carried streams.

    The ``len(ids) - 1`` targets are cut into ``E = min(streams, len(ids) - 1)`` contiguous streams of
    ``L = ceil((len(ids) - 1) / E)`` (the last ones shorter), each cut into ``N = ceil(L / W)`` windows
    of ``W = min(window, L)``; the carry passes from window to window (as in training), and the tails
    are padded and masked out, so ``mask_NEW.sum() == len(ids) - 1`` and the masked mean loss is the
    per-character loss of the text. To predict the first character too, put its preceding character in front.
    """
    n_targets = len(ids) - 1
    if n_targets < 1:
        raise UserError(f"the validation text needs at least 2 characters, got {len(ids)}")
    E = max(1, min(streams, n_targets))
    L = -(-n_targets // E)
    W = max(1, min(window, L))
    N = -(-L // W)
    x = np.zeros((E, N * W), np.int32)
    y = np.zeros((E, N * W), np.int32)
    m = np.zeros((E, N * W), np.float32)
    for b in range(E):
        n = max(0, min(L, n_targets - b * L))
        x[b, :n], y[b, :n], m[b, :n] = ids[b * L : b * L + n], ids[b * L + 1 : b * L + n + 1], 1.0
    to_windows = lambda a: np.ascontiguousarray(a.reshape(E, N, W).transpose(1, 0, 2))  # noqa: E731
    return EvalWindows(to_windows(x), to_windows(y), to_windows(m))
