"""``rnn-jax launch``: N processes of an rnn-jax command (or a script) on 127.0.0.1: multi-host on one machine."""

from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from rnn_jax.distributed.runtime import INITIALIZATION_TIMEOUT_S, _check_coordinator, _check_timeout, check_port_free
from rnn_jax.errors import UserError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(devices_per_process: int) -> dict:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def _relay(stream, prefix: bytes, out, lock: threading.Lock) -> None:
    """Copy a child's output to ``out`` whole line by whole line (also each ``\\r``-refreshed progress line),
    each prefixed, so that the children's lines never interleave mid-line."""
    pending = b""
    for chunk in iter(lambda: stream.read1(4096), b""):
        pieces = (pending + chunk).splitlines(keepends=True)
        pending = pieces.pop() if not pieces[-1].endswith((b"\n", b"\r")) else b""
        # A lone line end (tqdm's refresh) gets no label.
        text = b"".join(p if p in (b"\n", b"\r", b"\r\n") else prefix + p for p in pieces)
        with lock:
            out.write(text)
            out.flush()
    if pending:
        with lock:
            out.write(prefix + pending + b"\n")
            out.flush()


def _exit_description(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _child_argv(command: Sequence[str], flags: list[str]) -> list[str]:
    """``rnn-jax CMD FLAGS ARGS``, or ``python SCRIPT ARGS FLAGS`` (a script that calls initialize_from_argv)."""
    if command[0] in ("python", "python3"):
        return [sys.executable, *command[1:], *flags]
    return [sys.executable, "-m", "rnn_jax.cli", command[0], *flags, *command[1:]]


class _Stopped(Exception):
    """A SIGTERM or SIGHUP that reached ``launch`` while its children ran."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_stop_signals():
    """Handlers that turn the first SIGTERM or SIGHUP into :class:`_Stopped` (later ones are ignored, so that
    the children are stopped in peace); returns a function that puts the old handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers: launch from a thread keeps the defaults
    received = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
            raise _Stopped(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def launch(
    command: Sequence[str],
    processes: int,
    devices_per_process: int,
    *,
    port: int | None = None,
    connect_timeout_s: float | None = None,
) -> int:
    """Run ``rnn-jax COMMAND`` as ``processes`` processes of ``devices_per_process`` CPU devices on 127.0.0.1.

    ``COMMAND`` is an ``rnn-jax`` command (``["charlm", "train", ...]``) or ``["python", SCRIPT, ...]`` for a
    script of your own that passes its arguments through :func:`initialize_from_argv`.

    Each child gets ``--coordinator 127.0.0.1:PORT --num-processes N --process-id I`` (and
    ``--connect-timeout``, when given) and ``XLA_FLAGS=--xla_force_host_platform_device_count=K``; its output
    is prefixed with ``[pI]``. A header on stderr says what started. Returns 0 when every child succeeds;
    when one fails, the others are stopped and one line names the first that failed (status 1). SIGINT,
    SIGTERM and SIGHUP stop every child too (status 130, 143, 129).
    """
    if not command:
        raise UserError("give the command to run after --, e.g. rnn-jax launch --processes 2 -- charlm train")
    for name, value in (("processes", processes), ("devices-per-process", devices_per_process)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value!r}")
    flags = (
        []
        if connect_timeout_s is None
        else ["--connect-timeout", f"{_check_timeout('--connect-timeout', connect_timeout_s):g}"]
    )
    if port is not None:
        _check_coordinator(f"127.0.0.1:{port}")
        check_port_free(port)
    address = f"127.0.0.1:{port or _free_port()}"
    print(f"rnn-jax launch: {processes} processes x {devices_per_process} CPU device(s) = "
          f"{processes * devices_per_process} devices, coordinator {address}", file=sys.stderr, flush=True)  # fmt: skip
    env = _child_env(devices_per_process)
    procs, relays, lock = [], [], threading.Lock()
    restore = _on_stop_signals()
    try:
        for i in range(processes):
            own = ["--coordinator", address, "--num-processes", str(processes), "--process-id", str(i), *flags]
            p = subprocess.Popen(_child_argv(command, own), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
            procs.append(p)
            relay = threading.Thread(target=_relay, args=(p.stdout, f"[p{i}] ".encode(), sys.stdout.buffer, lock))
            relay.daemon = True
            relay.start()
            relays.append(relay)
        return _wait_all(procs)
    except _Stopped as stop:
        running = sum(p.poll() is None for p in procs)
        print(f"rnn-jax launch: {stop}: stopping the {running} process(es) still running", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        _stop(procs)
        restore()
        for relay in relays:
            relay.join(timeout=5)


def _wait_all(procs: Sequence[subprocess.Popen]) -> int:
    """0 once every process exited 0; 1 (and one line naming it) as soon as one fails.

    One thread per child waits for it and queues its exit, so the process named is the first that failed
    (a peer that dies makes the others fail a moment later: the lowest-numbered failure is often one of them).
    """
    exits: queue.Queue = queue.Queue()
    for i, p in enumerate(procs):
        threading.Thread(target=lambda i=i, p=p: exits.put((i, p.wait())), daemon=True).start()
    for _ in procs:
        while True:
            try:
                i, code = exits.get(timeout=1.0)  # a timeout, so that signal handlers run while waiting
                break
            except queue.Empty:
                continue
        if code != 0:
            others = sum(p.poll() is None for p in procs)
            what = f"process {i} {_exit_description(code)}, the first to fail; stopping the {others} still running"
            print(f"rnn-jax launch: error: {what}", file=sys.stderr, flush=True)
            return 1
    return 0


def cli_main(argv: Sequence[str], prog: str = "rnn-jax launch") -> int:
    """``rnn-jax launch --processes N --devices-per-process K -- COMMAND ...``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run an rnn-jax command as N processes on this machine (CPU devices), connected by JAX's "
        "distributed runtime: the multi-host path on one computer. The trainers' mesh spans every device of "
        "every process (N x K) unless their --devices asks for fewer.",
        epilog="example: rnn-jax launch --processes 2 --devices-per-process 2 -- charlm train --steps 50 "
        "(4 devices in all, 2 in each process). SIGINT, SIGTERM and SIGHUP stop every process.",
    )
    parser.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
    parser.add_argument("--devices-per-process", type=int, default=1, help="CPU devices in each process (default 1)")
    parser.add_argument("--port", type=int, help="the coordinator's port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        help=f"seconds each process waits for all to connect (default {INITIALIZATION_TIMEOUT_S})",
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="-- then an rnn-jax command, or python SCRIPT ARGS",
    )
    args = parser.parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return launch(
        command, args.processes, args.devices_per_process, port=args.port, connect_timeout_s=args.connect_timeout
    )
