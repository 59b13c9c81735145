"""Checkpoints: one msgpack file per checkpoint, written atomically; ``latest`` and ``best`` kept.

A checkpoint is a whole :class:`~rnn_jax.train.TrainState` (params, optimiser state, step, PRNG key,
TBPTT carry) plus a JSON ``meta`` dict (config, vocabulary, data cursor, metrics). Files::

    DIR/latest.ckpt     the most recent state (overwritten in place, atomically)
    DIR/best.ckpt       the state with the best validation metric so far

Atomic: the bytes go to a temporary file in the same directory, are flushed and ``fsync``-ed, and the
file is renamed over the old one with ``os.replace`` (atomic on POSIX), then the directory is synced. A
process killed at any moment leaves either the old checkpoint or the new one, never a torn file.

Restoring needs a *template*: a state of the right structure (e.g. freshly initialised from the same
config). The stored tree structure, every leaf's shape and dtype, and any ``expect``-ed meta fields must
match it, otherwise :class:`~rnn_jax.errors.UserError` says what differs: a checkpoint from another
model is refused rather than half-loaded.

PRNG keys are stored as their raw bits (``jax.random.key_data``) and rebuilt with
``jax.random.wrap_key_data`` using the template key's implementation.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from rnn_jax.errors import UserError

__all__ = [
    "FORMAT",
    "SUFFIX",
    "save",
    "restore",
    "read_meta",
    "checkpoint_path",
    "latest",
    "best",
    "ensure_writable_dir",
    "Checkpointer",
]

FORMAT = "rnn_jax.checkpoint/1"
SUFFIX = ".ckpt"


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save(path: str | os.PathLike, state: Any, meta: Mapping | None = None) -> Path:
    """Atomically write ``state`` (any pytree of arrays, keys included) and a JSON-able ``meta`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves, treedef = jax.tree.flatten(state)
    arrays, key_dtypes = {}, {}
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            key_dtypes[str(i)] = str(leaf.dtype)
            leaf = jax.random.key_data(leaf)
        arrays[str(i)] = np.asarray(jax.device_get(leaf))
    payload = {
        "format": FORMAT,
        "treedef": str(treedef),
        "meta": json.dumps(dict(meta or {})),
        "keys": key_dtypes,
        "leaves": arrays,
    }
    _atomic_write(path, serialization.msgpack_serialize(payload))
    return path


def _load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / f"latest{SUFFIX}"
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: expected a file written by rnn_jax (e.g. DIR/latest{SUFFIX})")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types for bad bytes
        raise UserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an rnn_jax checkpoint (expected format {FORMAT!r})")
    payload["meta"] = json.loads(payload["meta"])
    payload["path"] = str(path)
    return payload


def read_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` dict of a checkpoint file (or of ``DIR/latest.ckpt`` for a directory)."""
    return _load(path)["meta"]


def restore(path: str | os.PathLike, template: Any, *, expect: Mapping | None = None) -> tuple[Any, dict]:
    """Load the checkpoint at ``path`` (a file, or a directory meaning its ``latest``) into ``template``'s structure.

    Args:
      path: a checkpoint file or a directory holding ``latest.ckpt``.
      template: a pytree with the structure, shapes and dtypes the checkpoint must have.
      expect: meta fields that must be equal (e.g. the model config); a mismatch is a :class:`UserError`.

    Returns:
      ``(state, meta)``: the restored pytree (JAX arrays, keys rebuilt) and the stored meta.
    """
    payload = _load(path)
    where = payload["path"]
    meta = payload["meta"]
    for name, want in dict(expect or {}).items():
        got = meta.get(name)
        if _jsonable(got) != _jsonable(want):
            raise UserError(
                f"{where} was made by another model: its {name} is {got!r}, this one's is {_jsonable(want)!r}"
            )
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    stored = payload["leaves"]
    if len(stored) != len(paths_leaves) or payload["treedef"] != str(treedef):
        raise UserError(
            f"{where} holds a different kind of state ({len(stored)} arrays) than this model expects "
            f"({len(paths_leaves)} arrays): it comes from another model or configuration"
        )
    leaves = []
    for i, (key_path, want) in enumerate(paths_leaves):
        got = np.asarray(stored[str(i)])
        name = jax.tree_util.keystr(key_path)
        if _is_key(want):
            want_shape = jax.random.key_data(want).shape
            if got.shape != want_shape:
                raise UserError(f"{where}: the PRNG key at {name} has shape {got.shape}, expected {want_shape}")
            leaves.append(jax.random.wrap_key_data(jnp.asarray(got), impl=jax.random.key_impl(want)))
            continue
        want_shape, want_dtype = tuple(jnp.shape(want)), jnp.result_type(want)
        if got.shape != want_shape or got.dtype != want_dtype:
            raise UserError(
                f"{where}: {name} has shape {got.shape} and dtype {got.dtype}, this model expects {want_shape} "
                f"and {want_dtype}: the checkpoint comes from another model or configuration"
            )
        leaves.append(jnp.asarray(got))
    return jax.tree.unflatten(treedef, leaves), meta


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
    the step for trainers whose batches are a pure function of the step (see :func:`rnn_jax.train.fit`).
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
