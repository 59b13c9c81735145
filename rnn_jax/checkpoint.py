"""Checkpoints: one msgpack file per checkpoint, arrays keyed by path, versioned, checksummed, written atomically.

A checkpoint is a :class:`~rnn_jax.train.TrainState` (or any pytree of arrays) plus a JSON ``meta`` dict;
:func:`restore` fills a template of the same structure by key path, migrating older formats
(:data:`MIGRATIONS`) and refusing a mismatch with one line. The format, the migrations and why this is not
orbax: docs/faults.md, "The checkpoint file".
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from rnn_jax.errors import UserError

__all__ = [
    "FORMAT",
    "SUFFIX",
    "MIGRATIONS",
    "Stored",
    "Migration",
    "save",
    "restore",
    "read_meta",
    "fill_from_template",
    "checkpoint_path",
    "latest",
    "best",
    "ensure_writable_dir",
    "remove_stale_temporaries",
    "Checkpointer",
]

FORMAT = "rnn_jax.checkpoint/3"
_SIGNS = (b"rnn_jax.checkpoint", b"sha256", b"body")  # what the ends of a file of ours hold
SUFFIX = ".ckpt"
_EXPECTED = f"a {SUFFIX} file written by rnn_jax's checkpoint.save (a run directory's latest{SUFFIX} or best{SUFFIX})"


class Stored(NamedTuple):
    """A checkpoint as read: its arrays by key path (``jax.tree_util.keystr``; PRNG keys as key_data) and meta."""

    arrays: dict[str, np.ndarray]
    meta: dict


Migration = Callable[[Stored, Mapping[str, Any]], Stored]
"""An application's migration: ``(stored, template_arrays) -> stored``, ``template_arrays`` by key path."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _paths_and_leaves(tree) -> tuple[list[tuple[str, Any]], Any]:
    """``[(keystr, leaf)]`` in flatten order, and the treedef."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in flat], treedef


def _host_array(leaf) -> np.ndarray:
    return np.asarray(jax.device_get(jax.random.key_data(leaf) if _is_key(leaf) else leaf))


# ---------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------


def _open_new(directory: Path, name: str) -> tuple[int, str]:
    """A new file next to ``name``, created with mode 0666 so that the umask decides (mkstemp's is 0600), and
    locked (``flock``) while it is written: :func:`remove_stale_temporaries` removes only unlocked ones."""
    while True:
        tmp = str(directory / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # a name drawn twice: draw again
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, tmp


def _write_error(path: Path, err: OSError) -> UserError:
    what = "no space left on the device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    return UserError(f"cannot write {path}: {what}; {kept} (free space or give another directory, then resume)")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix; an
    :class:`OSError` (a full disk) is a :class:`UserError` naming ``path``, the temporary file removed."""
    fd, tmp = _open_new(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # while the lock is held: no cleaner takes a file being written
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.ckpt.*.tmp`` files a killed writer left in ``directory``; a file that a live writer
    holds (locked) stays. Returns the files removed."""
    removed = []
    for tmp in Path(directory).glob(f".*{SUFFIX}.*.tmp"):
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:  # gone meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            continue
        else:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def save(path: str | os.PathLike, state: Any, meta: Mapping | None = None) -> Path:
    """Atomically write ``state`` (any pytree of arrays, keys included) and a JSON-able ``meta`` to ``path``,
    with the SHA-256 of its contents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves, _ = _paths_and_leaves(state)
    body = serialization.msgpack_serialize({
        "meta": json.dumps(dict(meta or {})),
        "arrays": {name: _host_array(leaf) for name, leaf in leaves},
        "keys": {name: str(leaf.dtype) for name, leaf in leaves if _is_key(leaf)},
    })  # fmt: skip
    payload = {"format": FORMAT, "sha256": _digest(FORMAT, body), "body": body}
    _atomic_write(path, serialization.msgpack_serialize(payload))
    return path


def _digest(fmt: str, body: bytes) -> str:
    return hashlib.sha256(fmt.encode("utf-8") + body).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def _from_v1(payload: dict, template_paths: list[str]) -> dict:
    """Format 1 -> 2: stored leaf ``i`` (flatten order) goes to the template's ``i``-th key path."""
    leaves = payload["leaves"]
    if len(leaves) != len(template_paths):
        raise UserError(
            f"{payload['path']} (format 1, matched by leaf order) holds {len(leaves)} arrays and this model has "
            f"{len(template_paths)}: it comes from another model or configuration; restore it into a template "
            "built from its stored config"
        )
    arrays = {name: leaves[str(i)] for i, name in enumerate(template_paths)}
    keys = {template_paths[int(i)]: dtype for i, dtype in dict(payload.get("keys", {})).items()}
    return {"format": FORMAT, "meta": payload["meta"], "arrays": arrays, "keys": keys, "path": payload["path"]}


def _from_v2(payload: dict, template_paths: list[str]) -> dict:
    """Format 2 -> 3: the same arrays and meta (format 2 had no checksum, so there was nothing to check)."""
    return {**payload, "format": FORMAT}


MIGRATIONS: dict[str, Callable[[dict, list[str]], dict]] = {
    "rnn_jax.checkpoint/1": _from_v1,
    "rnn_jax.checkpoint/2": _from_v2,
}
"""One function per format step: ``MIGRATIONS[f](payload, template_paths)`` is the payload in the next format."""


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        inside = path / f"latest{SUFFIX}"
        if not inside.is_file():
            raise UserError(
                f"the directory {path} holds no latest{SUFFIX}: expected a run directory with a checkpoint, "
                f"or {_EXPECTED}; give a run directory that holds latest{SUFFIX} (a run's --out), or a checkpoint file"
            )
        return inside
    if not path.is_file():
        raise UserError(
            f"no checkpoint at {path} (no such file): expected {_EXPECTED}; give a run directory that holds "
            f"latest{SUFFIX}, or a checkpoint file"
        )
    return path


def _damaged(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} is a damaged rnn_jax checkpoint: {why}; its bytes changed after it was written (a disk or a copy "
        "went wrong): use another checkpoint (best.ckpt or latest.ckpt of the run) or a backup"
    )


def _verified(path: Path, data: bytes) -> dict:
    """The payload of ``data``: a format-3 file's checksum checked, a file of ours that does not parse said
    damaged, a file not ours said so."""
    not_ours = f"{path} is not an rnn_jax checkpoint: expected {_EXPECTED}; give a run directory or a {SUFFIX} file"
    ours = any(sign in data[:256] + data[-256:] for sign in _SIGNS)  # the map's keys come sorted: body first
    try:
        payload = serialization.msgpack_restore(data)
    except Exception:  # msgpack raises several unrelated types for bytes that are not a checkpoint
        raise (_damaged(path, "it does not parse") if ours else UserError(not_ours)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise _damaged(path, "its header is unreadable") if ours else UserError(not_ours)
    if "sha256" not in payload and "body" not in payload:  # formats 1 and 2: no checksum
        if payload["format"] == FORMAT:
            raise _damaged(path, "its checksum and contents are missing")
        return payload  # an unknown (newer) format is refused by the caller, a damaged older one there too
    stored, body = payload.get("sha256"), payload.get("body")
    if not isinstance(stored, str) or not isinstance(body, bytes):
        raise _damaged(path, "its checksum or contents are missing")
    found = _digest(payload["format"], body)
    if found != stored:
        raise _damaged(path, f"the SHA-256 of its contents is {found[:16]}..., the file records {stored[:16]}...")
    try:
        inner = serialization.msgpack_restore(body)
    except Exception:
        raise _damaged(path, "its contents do not parse") from None
    if not isinstance(inner, dict):
        raise _damaged(path, "its contents are not a table")
    return {**inner, "format": payload["format"]}


def _load(path: str | os.PathLike) -> dict:
    """The raw payload of a checkpoint file (or ``DIR/latest.ckpt``), meta decoded, in its stored format."""
    path = _resolve(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    payload = _verified(path, data)
    if payload["format"] != FORMAT and payload["format"] not in MIGRATIONS:
        raise UserError(
            f"{path} has checkpoint format {payload['format']!r}, which this rnn_jax cannot read (it reads "
            f"{FORMAT!r} and {', '.join(map(repr, MIGRATIONS))}); load it with the rnn_jax version that wrote it"
        )
    try:
        payload["meta"] = json.loads(payload["meta"])
    except (KeyError, TypeError, ValueError):
        raise _damaged(path, "its meta is not JSON") from None
    if not isinstance(payload["meta"], dict) or not isinstance(payload.get("arrays", payload.get("leaves")), dict):
        raise _damaged(path, "its meta or arrays are missing")
    payload["path"] = str(path)
    return payload


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict of a checkpoint file (or of ``DIR/latest.ckpt`` for a directory), as stored."""
    return _load(path)["meta"]


def fill_from_template(*paths: str) -> Migration:
    """A migration for leaves a model gained: each of ``paths`` (``keystr`` form) that a checkpoint lacks takes
    the template's value. Paths the checkpoint has are kept, so current checkpoints pass unchanged."""

    def migrate(stored: Stored, template_arrays: Mapping[str, Any]) -> Stored:
        unknown = [p for p in paths if p not in template_arrays]
        if unknown:
            raise UserError(
                f"fill_from_template: {', '.join(unknown)} not among the template's key paths "
                f"({', '.join(list(template_arrays)[:4])}, ...); pass paths as jax.tree_util.keystr writes them"
            )
        filled = {p: _host_array(template_arrays[p]) for p in paths if p not in stored.arrays}
        return stored._replace(arrays={**stored.arrays, **filled})

    return migrate


def _check_expected(where: str, meta: Mapping, expect: Mapping) -> None:
    for name, want in expect.items():
        got = meta.get(name)
        if _jsonable(got) != _jsonable(want):
            raise UserError(
                f"{where} was made by another model: its {name} is {got!r}, this one's is {_jsonable(want)!r}"
            )


def _check_paths(where: str, stored: Mapping, template_paths: list[str]) -> None:
    missing = [p for p in template_paths if p not in stored]
    extra = sorted(set(stored) - set(template_paths))
    if not (missing or extra):
        return
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} array(s) this model has ({', '.join(missing[:4])})")
    if extra:
        parts.append(f"holds {len(extra)} array(s) this model does not have ({', '.join(extra[:4])})")
    raise UserError(
        f"{where} {' and '.join(parts)}: it comes from another model or configuration; a model that gained "
        "or renamed a field loads older checkpoints through restore(..., migrate=...) (see rnn_jax.checkpoint)"
    )


def _leaf(where: str, name: str, got: np.ndarray, want):
    """The stored array ``got`` as the template leaf ``want`` (a PRNG key rebuilt), shape and dtype checked."""
    got = np.asarray(got)
    if _is_key(want):
        want_shape = jax.random.key_data(want).shape
        if got.shape != want_shape:
            raise UserError(f"{where}: the PRNG key at {name} has shape {got.shape}, expected {want_shape}")
        return jax.random.wrap_key_data(jnp.asarray(got), impl=jax.random.key_impl(want))
    want_shape, want_dtype = tuple(jnp.shape(want)), jnp.result_type(want)
    if got.shape != want_shape or got.dtype != want_dtype:
        raise UserError(
            f"{where}: {name} has shape {got.shape} and dtype {got.dtype}, this model expects {want_shape} "
            f"and {want_dtype}: the checkpoint comes from another model or configuration"
        )
    return jnp.asarray(got)


def restore(
    path: str | os.PathLike,
    template: Any,
    *,
    expect: Mapping | None = None,
    migrate: Migration | None = None,
) -> tuple[Any, dict]:
    """Load the checkpoint at ``path`` (a file, or a directory meaning its ``latest``) into ``template``'s structure.

    Args:
      path: a checkpoint file or a directory holding ``latest.ckpt``.
      template: a pytree with the key paths, shapes and dtypes the checkpoint must have.
      expect: meta fields that must be equal (e.g. the model config); a mismatch is a :class:`UserError`.
      migrate: the application's :data:`Migration` for checkpoints of an older version of its model (runs
        after the format migrations, before ``expect`` is checked).

    Returns:
      ``(state, meta)``: the restored pytree (JAX arrays, keys rebuilt) and the (migrated) meta.
    """
    payload = _load(path)
    where = payload["path"]
    leaves, treedef = _paths_and_leaves(template)
    names = [name for name, _ in leaves]
    while payload["format"] != FORMAT:
        payload = MIGRATIONS[payload["format"]](payload, names)
    stored = Stored(dict(payload["arrays"]), payload["meta"])
    if migrate is not None:
        stored = migrate(stored, dict(leaves))
    _check_expected(where, stored.meta, dict(expect or {}))
    _check_paths(where, stored.arrays, names)
    restored = [_leaf(where, name, stored.arrays[name], want) for name, want in leaves]
    return jax.tree.unflatten(treedef, restored), stored.meta


def _jsonable(value):
    return json.loads(json.dumps(value))


def checkpoint_path(directory: str | os.PathLike, name: str = "latest") -> Path:
    return Path(directory) / f"{name}{SUFFIX}"


def latest(directory: str | os.PathLike) -> Path | None:
    """``DIR/latest.ckpt`` if it exists, else ``None``."""
    path = checkpoint_path(directory, "latest")
    return path if path.is_file() else None


def best(directory: str | os.PathLike) -> Path | None:
    """``DIR/best.ckpt`` if it exists, else ``None``."""
    path = checkpoint_path(directory, "best")
    return path if path.is_file() else None


def ensure_writable_dir(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check that a file can be written there (before any training)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"cannot write to the output directory {directory}: {err.strerror or err}") from None
    return directory


class Checkpointer:
    """Saves ``latest`` / ``best`` checkpoints of a run into one directory, all with the same base ``meta``.

    ``save(state, name, info)`` stores ``{**meta, **info, "step": step, "cursor": step}``: the data cursor is
    the step for trainers whose batches are a pure function of the step (see :func:`rnn_jax.harness.fit`).
    """

    def __init__(self, directory: str | os.PathLike, meta: Mapping | None = None):
        self.directory = ensure_writable_dir(directory)
        self.meta = dict(meta or {})
        self.last_saved_step: int | None = None

    def save(self, state, name: str = "latest", info: Mapping | None = None) -> Path:
        step = int(state.step)
        meta = {**self.meta, **dict(info or {}), "step": step, "cursor": step, "name": name}
        path = save(checkpoint_path(self.directory, name), state, meta)
        if name == "latest":
            self.last_saved_step = step
        return path
