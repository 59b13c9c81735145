"""The run directory of every application: prepare, resume, load.

A run directory (``out``) holds ``latest.ckpt``, ``best.ckpt``, ``metrics.jsonl`` and ``loss.png``. Every
checkpoint's meta is :func:`run_meta`: ``{"kind": app, "config": fields, "config_format": 2, ...}``. An
application's ``train`` does, in this order::

    cfg = check_config(cfg)                               # 1. validate: nothing is written yet
    meta = resume_meta(cfg.out, "myapp") if cfg.resume else None
    ...load the data, check it...                         # 2. still nothing written
    out = prepare(cfg.out, resume=cfg.resume)             # 3. the first write: create, probe, clean
    state, meta = restore_latest(out, template)           #    (on resume)

so that a failed validation leaves no empty ``out`` directory. Loading a trained model::

    run = read_run(ckpt, "best", "myapp", MyConfig)       # path, migrated config, meta
    params = load_params(run, template)

``read_run`` translates configs stored by older releases (old field names) with
:func:`rnn_jax.harness.config.migrate_config`, so every checkpoint an earlier main wrote still loads.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rnn_jax import checkpoint
from rnn_jax.errors import UserError
from rnn_jax.harness.config import CONFIG_FORMAT, config_to_dict, migrate_config, replace_config

__all__ = [
    "STALE_FILES",
    "RunInfo",
    "run_meta",
    "resume_meta",
    "resumed_config",
    "stored_config",
    "check_resumable",
    "LOCK_FILE",
    "lock",
    "prepare",
    "release",
    "restore_latest",
    "read_run",
    "load_params",
]

STALE_FILES = ("metrics.jsonl", "loss.png", "best.ckpt", "latest.ckpt")
"""What a fresh run (not ``resume``) removes from its directory, for every application."""

LOCK_FILE = ".lock"
"""The file a running trainer holds locked (``flock``) in its run directory, with its pid, host and start."""

# The run directories this process holds, by resolved path -> open lock file descriptor. A kernel lock
# belongs to the process, so the table of what it holds does too; the kernel drops the locks when it dies.
_HELD: dict[Path, int] = {}


def run_meta(kind: str, config, **extra) -> dict:
    """The meta every checkpoint of a run carries: the app, its config (field names) and ``extra``."""
    return {"kind": kind, "config": config_to_dict(config), "config_format": CONFIG_FORMAT, **extra}


def resume_meta(out: str | os.PathLike, kind: str) -> dict:
    """The meta of ``out/latest.ckpt`` (read only); a :class:`UserError` if there is none or it is another app's."""
    out = Path(out)
    if checkpoint.latest(out) is None:
        raise UserError(f"nothing to resume: {out} holds no checkpoint (latest{checkpoint.SUFFIX})")
    meta = checkpoint.read_meta(out)
    if meta.get("kind") != kind:
        raise UserError(f"the checkpoint in {out} is not a {kind} checkpoint (kind {meta.get('kind')!r})")
    return meta


def stored_config(config_type: type, meta: Mapping, where: str | os.PathLike | None = None):
    """The config a checkpoint's meta stores, old field names translated, and checked as a config from the
    command line is (types, then :func:`rnn_jax.harness.check_config`): a :class:`UserError` naming ``where``."""
    from rnn_jax.harness.common import check_config
    from rnn_jax.harness.config import check_field_types

    try:
        config = migrate_config(config_type, meta.get("config", {}), meta.get("config_format"))
        check_field_types(config)
        record = meta.get("cell")
        user_cell = isinstance(record, Mapping) and record.get("builtin") is False
        # A user's cell is stored by import path or name and resolved by the app when it loads; the shared
        # checks, which know cells by name, see the smallest built-in in its place.
        check_config(dataclasses.replace(config, cell="vanilla") if user_cell else config, training=False)
    except UserError as err:
        raise UserError(f"the config stored in {where or 'the checkpoint'} is not valid: {err}") from None
    return config


def resumed_config(config_type: type, out: str | os.PathLike, kind: str, given: Mapping[str, Any]):
    """The config of ``--resume``: the checkpoint's, then the fields ``given`` (a new budget replaces the old)."""
    base = stored_config(config_type, resume_meta(out, kind), checkpoint.checkpoint_path(out, "latest"))
    where = {k: v for k, v in (("resume", True), ("out", str(out))) if hasattr(base, k)}
    return replace_config(base, {**dict(given), **where})


def check_resumable(stored, cfg, names: Sequence[str], where) -> None:
    """The fields ``names`` that shape the model and the data must match the checkpoint's to resume it."""
    for name in names:
        if getattr(stored, name) != getattr(cfg, name):
            raise UserError(
                f"the checkpoint in {where} was trained with {name}={getattr(stored, name)!r}, this run asks for "
                f"{getattr(cfg, name)!r}; resume with the same settings"
            )


def prepare(out: str | os.PathLike, *, resume: bool) -> Path:
    """Create ``out``, check it is writable and lock it for this run (:func:`lock`); remove the temporary files
    a killed save left, and on a fresh run the :data:`STALE_FILES` of an earlier run.

    Call it after every check of the config and the data: it is the first thing a run writes. In a
    multi-process run only process 0 (the writer) calls it.
    """
    out = checkpoint.ensure_writable_dir(out)
    lock(out)
    checkpoint.remove_stale_temporaries(out)
    if not resume:
        for name in STALE_FILES:
            (out / name).unlink(missing_ok=True)
    return out


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its name yet"


def lock(out: str | os.PathLike) -> Path:
    """Hold ``out/.lock`` (``flock``, exclusive) until this process ends or :func:`release`; write the holder
    (pid, host, start time) into it. Another process holding it is a :class:`UserError` naming that run.
    The kernel drops the lock when its process dies, so a killed run leaves nothing stuck."""
    out = Path(out)
    key = out.resolve()
    if key in _HELD:
        return out
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{out} is in use by another run ({_holder(path)}); wait for it to end, stop it, or give another out"
        ) from None
    except OSError:  # a file system without locks: run unlocked rather than not at all
        os.close(fd)
        return out
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode())
    _HELD[key] = fd
    return out


def release(out: str | os.PathLike) -> None:
    """Give up the lock :func:`prepare` took on ``out`` (it is given up anyway when the process ends)."""
    fd = _HELD.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)


def restore_latest(out: str | os.PathLike, template, expect: Mapping | None = None):
    """``(state, meta)`` of ``out/latest.ckpt`` restored into ``template``'s structure."""
    return checkpoint.restore(checkpoint.checkpoint_path(out, "latest"), template, expect=expect)


class RunInfo(NamedTuple):
    """A checkpoint found by :func:`read_run`: its file, its (migrated) config and its meta."""

    path: Path
    config: Any
    meta: dict


def read_run(ckpt: str | os.PathLike, which: str, kind: str, config_type: type) -> RunInfo:
    """The ``best`` (else ``latest``) checkpoint of a run directory, or a checkpoint file, with its config."""
    path = Path(ckpt)
    if not path.exists():
        raise UserError(f"no such checkpoint directory: {path}")
    if which not in ("best", "latest"):
        raise UserError(f"which must be 'best' or 'latest', got {which!r}")
    if path.is_dir():
        named = checkpoint.checkpoint_path(path, which)
        path = named if named.is_file() else checkpoint.checkpoint_path(path, "latest")
    meta = checkpoint.read_meta(path)
    if meta.get("kind") != kind:
        raise UserError(f"{path} is not a {kind} checkpoint (kind {meta.get('kind')!r})")
    return RunInfo(path, stored_config(config_type, meta, path), meta)


def load_params(run: RunInfo, template, expect: Mapping | None = None):
    """The params of the checkpoint of ``run``, restored into ``template`` (a state of the same model)."""
    state, _ = checkpoint.restore(run.path, template, expect=expect)
    return state.params
