"""Multi-process training on JAX's own distributed runtime: one process per host, one mesh over all devices.

JAX's multi-controller model: every process runs the same program; :func:`initialize` connects them
through a coordinator (process 0), after which ``jax.devices()`` lists the devices of *every* process and
a jitted step over a mesh spanning them all runs as one program, its collectives (the gradient
all-reduce) crossing processes (gloo on CPU, NCCL on GPU, ICI on TPU). Each process feeds only the rows
of the global batch that live on its own devices:

    global batch rows [0, B) = process 0's rows [0, B/P) ++ process 1's rows [B/P, 2B/P) ++ ...

(:func:`process_rows` says which rows a process builds; ``rnn_jax.train.shard_batch`` assembles them
into one global array with ``jax.make_array_from_process_local_data``). The truncated-BPTT carry is
split like the batch, so the state carried by a stream stays on the process that builds that stream.
Params are replicated and the loss is a mean over the global batch, so the step computes the same
numbers as one process with the same global device count.

Failure: the coordinator's heartbeat time-out is short (:data:`HEARTBEAT_TIMEOUT_S`), so a process that
dies is noticed within seconds; a collective that loses its peer raises at once, and
:func:`run_command` turns that into one line on stderr and a non-zero exit, instead of a hang.

Command line: every ``rnn-jax`` command takes ``--coordinator HOST:PORT --num-processes N --process-id I``
(stripped by :func:`initialize_from_argv` before the command's own parser sees its arguments); under
SLURM, Open MPI, a Kubernetes indexed job or ``JAX_COORDINATOR_ADDRESS`` no flag is needed, and
``RNN_JAX_DISTRIBUTED=1`` asks for JAX's own detection (Cloud TPU pod slices). ``rnn-jax launch`` starts
N processes on this machine, for trying the multi-host path on one computer.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rnn_jax.errors import UserError

__all__ = [
    "HEARTBEAT_TIMEOUT_S",
    "initialize",
    "initialize_from_argv",
    "split_flags",
    "cluster_detected",
    "is_main_process",
    "process_rows",
    "ProcessBatches",
    "for_processes",
    "host_state",
    "reduce_metrics",
    "MainProcessCheckpointer",
    "run_command",
    "launch",
    "cli_main",
]

HEARTBEAT_TIMEOUT_S = 20  # JAX's own: a process silent this long is declared dead and the others abort
WATCHDOG_STALE_S = 10  # ours, shorter: a peer silent this long makes this process exit with one line
SHUTDOWN_TIMEOUT_S = 30  # how long a finishing process waits for the others at exit
INITIALIZATION_TIMEOUT_S = 60  # how long a process waits for all the others to connect (--connect-timeout)
JAX_TIMEOUT_MARGIN_S = 30  # JAX's own connect deadline comes this much later: ours ends it first, in one line
FLAGS = {
    "--coordinator": "coordinator",
    "--num-processes": "num_processes",
    "--process-id": "process_id",
    "--connect-timeout": "initialization_timeout_s",
}


def _check_coordinator(coordinator: str) -> None:
    host, sep, port = coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(f"--coordinator must be HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator!r}")


def check_port_free(port: int) -> None:
    """A :class:`UserError` naming ``port`` when this machine cannot serve the coordinator on it.

    JAX's coordinator service binds ``[::]:PORT`` (every address, IPv4 too); on a port in use it crashes
    the process, so process 0 checks first with the same bind.
    """
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a closing socket is no conflict
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((host, port))
            return
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port {port} is already in use on this machine, so process 0 cannot serve the coordinator "
                    "there; choose another port (or stop the run that holds it)"
                ) from None
            if err.errno == errno.EACCES:
                raise UserError(f"port {port} needs privileges to open; choose a port above 1023") from None
            if err.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):  # no IPv6 here: try IPv4 alone
                raise UserError(f"cannot open port {port} for the coordinator: {err.strerror}") from None


def _check_timeout(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise UserError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _reachable(address: str, timeout_s: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _connect_alarm(timeout_s: float) -> threading.Timer:
    """A timer that, unless cancelled within ``timeout_s``, ends the process with one line and exit status 2.

    ``jax.distributed.initialize`` waits for every process to register with the coordinator and, at its own
    deadline, aborts the process from C++ (exit 134, a stack trace) where Python cannot catch it. It releases
    the GIL while it waits, so this thread runs and speaks first, naming the address it waited for.
    """

    def expire():
        from jax._src import distributed as jax_distributed  # the address, also when it came from the environment

        state = jax_distributed.global_state
        address, me, n = state.coordinator_address, state.process_id, state.num_processes or "?"
        if me != 0 and address and not _reachable(address):
            what = f"nothing answered at {address} within {timeout_s:g} s (is process 0 running, with that address?)"
        else:
            what = (
                f"not all {n} processes joined the coordinator at {address} within {timeout_s:g} s (each needs "
                f"that --coordinator, --num-processes {n} and its own --process-id)"
            )
        print(f"rnn_jax.distributed: error: process {me} of {n}: {what}; --connect-timeout sets the wait",
              file=sys.stderr, flush=True)  # fmt: skip
        os._exit(2)

    alarm = threading.Timer(timeout_s, expire)
    alarm.daemon = True
    return alarm


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
    initialization_timeout_s: int = INITIALIZATION_TIMEOUT_S,
) -> None:
    """Connect this process to the others (``jax.distributed.initialize``) before JAX starts its backend.

    Arguments left ``None`` come from the environment, as ``jax.distributed.initialize`` reads it:
    ``JAX_COORDINATOR_ADDRESS``, SLURM (``SLURM_NTASKS``, ``SLURM_PROCID``, ...), Open MPI, a Kubernetes
    indexed job, Cloud TPU metadata. On CPU the cross-process collectives are gloo's (TCP).

    A process that cannot connect (no coordinator at the address, a process that never joins) ends after
    ``initialization_timeout_s`` with one line naming the address and exit status 2. Process 0 first checks
    that the coordinator's port is free.

    Raises:
      UserError: JAX's backend already started in this process, the port is in use, or the arguments are
        incomplete and no cluster environment supplies the rest.
    """
    initialization_timeout_s = _check_timeout("--connect-timeout", initialization_timeout_s)
    if coordinator is not None:
        _check_coordinator(coordinator)
    for name, value, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
    if None not in (num_processes, process_id) and process_id >= num_processes:
        raise UserError(f"--process-id must be below --num-processes ({num_processes}), got {process_id}")
    if jax.distributed.is_initialized():
        raise UserError("the distributed runtime is already initialised in this process (initialise it once)")
    if process_id == 0 and coordinator is not None:
        check_port_free(int(coordinator.rpartition(":")[2]))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    alarm = _connect_alarm(initialization_timeout_s)
    alarm.start()
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes,
            process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=math.ceil(initialization_timeout_s) + JAX_TIMEOUT_MARGIN_S,
            heartbeat_timeout_seconds=heartbeat_timeout_s,
            shutdown_timeout_seconds=shutdown_timeout_s,
        )
    except (ValueError, TypeError) as err:
        raise UserError(
            f"cannot start the distributed runtime ({err}); pass --coordinator HOST:PORT --num-processes N "
            "--process-id I, or run under SLURM, Open MPI, Kubernetes or Cloud TPU"
        ) from None
    except RuntimeError as err:
        raise UserError(f"cannot start the distributed runtime: {str(err).splitlines()[0]}") from None
    finally:
        alarm.cancel()
    watchdog = _Watchdog(min(WATCHDOG_STALE_S, heartbeat_timeout_s / 2))
    watchdog.start()
    atexit.register(watchdog.stop)  # before JAX's own exit handler (registered earlier, run later) shuts down


class _Watchdog(threading.Thread):
    """Every second, write this process's beat to the coordinator's key-value store and read everyone's.

    A peer whose beat has not moved for ``stale_s`` (it died, was killed, or its host froze), or a coordinator
    that no longer answers, ends this process with one line on stderr and exit status 1, before JAX's
    heartbeat time-out would abort it with a C++ stack trace.
    """

    def __init__(self, stale_s: float, interval_s: float = 1.0):
        super().__init__(name="rnn_jax-watchdog", daemon=True)
        from jax._src import distributed as jax_distributed  # the runtime's client: no public accessor

        state = jax_distributed.global_state
        self.client, self.me, self.n = state.client, state.process_id, state.num_processes
        self.stale_s, self.interval_s = stale_s, interval_s
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        last_change: dict[str, tuple[str, float]] = {}
        beat = 0
        while not self.stopped.wait(self.interval_s):
            beat += 1
            try:
                self.client.key_value_set(f"rnn_jax/alive/{self.me}", str(beat), allow_overwrite=True)
                beats = dict(self.client.key_value_dir_get("rnn_jax/alive/"))
            except Exception as err:  # noqa: BLE001 - any failure to reach the coordinator
                if not self.stopped.is_set():
                    self._exit(f"lost the coordinator (process 0): {(str(err).strip().splitlines() or [''])[0]}")
                return
            now = time.monotonic()
            for key, value in beats.items():
                if last_change.get(key, (None,))[0] != value:
                    last_change[key] = (value, now)
            for key, (_, since) in last_change.items():
                if now - since > self.stale_s and not self.stopped.is_set():
                    peer = key.rsplit("/", 1)[-1]
                    self._exit(f"process {peer} stopped responding {now - since:.0f} s ago (it died or was killed)")

    def _exit(self, what: str) -> None:
        print(f"rnn_jax.distributed: error: process {self.me} of {self.n}: {what}; stopping this one: "
              f"{resume_hint()}", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(1)


class _LastCheckpoint:
    """What this process knows of its run's checkpoints (set by :class:`MainProcessCheckpointer`), for the
    one line a process prints when a peer dies. Process-wide, like the runtime itself."""

    directory: str | None = None
    step: int | None = None


def resume_hint() -> str:
    """How to go on after a failure: the last checkpoint's step and directory, and ``--resume``."""
    where, step = _LastCheckpoint.directory, _LastCheckpoint.step
    if step is not None:
        return f"the last checkpoint (step {step}, in {where}) is intact; run the same command with --resume to go on"
    if where is not None:
        return f"this run wrote no checkpoint yet; run the same command again (with --resume to go on from {where})"
    return "run the same command again (with --resume to go on from the last checkpoint)"


def split_flags(argv: Sequence[str]) -> tuple[list[str], dict]:
    """``argv`` without ``--coordinator/--num-processes/--process-id/--connect-timeout`` (before any ``--``), and
    their values."""
    rest, found = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = arg.partition("=")
        if name in FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    raise UserError(f"{name} needs a value")
                value, i = argv[i + 1], i + 1
            found[FLAGS[name]] = value
        else:
            rest.append(arg)
        i += 1
    for name in ("num_processes", "process_id"):
        if name in found:
            try:
                found[name] = int(found[name])
            except ValueError:
                raise UserError(f"--{name.replace('_', '-')} must be an integer, got {found[name]!r}") from None
    if "initialization_timeout_s" in found:
        try:
            found["initialization_timeout_s"] = float(found["initialization_timeout_s"])
        except ValueError:
            raise UserError(f"--connect-timeout must be seconds, got {found['initialization_timeout_s']!r}") from None
    return rest, found


def cluster_detected(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process job that ``jax.distributed.initialize`` can read.

    SLURM or Open MPI with more than one task, a Kubernetes indexed job, ``JAX_COORDINATOR_ADDRESS``, a
    multi-host TPU slice that names its workers, or ``RNN_JAX_DISTRIBUTED=1`` (anything JAX detects).
    """
    env = os.environ if environ is None else environ

    def many(name):
        return env.get(name, "1").isdigit() and int(env.get(name, "1")) > 1

    slurm = all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")) and many("SLURM_NTASKS")
    ompi = "OMPI_MCA_orte_hnp_uri" in env and many("OMPI_COMM_WORLD_SIZE")
    k8s = "KUBERNETES_SERVICE_HOST" in env and "JOB_COMPLETION_INDEX" in env
    tpu = "," in env.get("TPU_WORKER_HOSTNAMES", "") + env.get("TPU_PROCESS_ADDRESSES", "")
    forced = env.get("RNN_JAX_DISTRIBUTED", "") not in ("", "0")
    return slurm or ompi or k8s or tpu or forced or "JAX_COORDINATOR_ADDRESS" in env


def initialize_from_argv(argv: Sequence[str]) -> list[str]:
    """Strip the distributed flags from ``argv``; initialise the runtime if they or a cluster ask for it."""
    rest, found = split_flags(argv)
    if found or cluster_detected():
        initialize(**found)
    return rest


def is_main_process() -> bool:
    """True in process 0, the one that prints progress and writes checkpoints and logs."""
    return jax.process_index() == 0


def process_rows(global_rows: int, mesh: Mesh) -> slice:
    """The rows ``[start, stop)`` of a batch of ``global_rows`` rows, split over ``mesh``, that this process builds.

    With the mesh of :func:`rnn_jax.train.make_mesh` (devices ordered by process) process ``p`` of ``P``
    builds rows ``[p B / P, (p + 1) B / P)``; in one process, all of them.
    """
    from rnn_jax.train import DATA_AXIS, batch_sharding

    n = mesh.shape[DATA_AXIS]
    if global_rows % n:
        raise UserError(
            f"the batch size {global_rows} does not divide by the {n} devices of the mesh; "
            f"use a batch size that is a multiple of {n}"
        )
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    starts = sorted(index[0].start or 0 for index in index_map.values())
    stop = starts[-1] + global_rows // n
    if stop - starts[0] != len(starts) * (global_rows // n):
        raise UserError("this process's devices do not hold contiguous rows of the mesh; build it with make_mesh")
    return slice(starts[0], stop)


class ProcessBatches:
    """This process's rows of a global batcher's batches (a :class:`rnn_jax.harness.Batcher` again).

    ``batches(k)[rows]`` for every array of the batch, with ``rows`` from :func:`process_rows`: for the
    char-LM's truncated BPTT, process ``p`` keeps streams ``[p B / P, (p + 1) B / P)`` at every step, so the
    carry of a stream (split like the batch) stays on the process that reads it. ``items_per_step`` stays
    the global batch's. Meant for batchers whose batch is cheap to index (views of the text); a data set
    too large for one host should build its rows itself.
    """

    def __init__(self, batches: Callable[[int], object], global_rows: int, mesh: Mesh):
        self.batches, self.rows = batches, process_rows(global_rows, mesh)
        self.items_per_step = getattr(batches, "items_per_step", 1)

    def __call__(self, k: int):
        return jax.tree.map(lambda a: a[self.rows] if np.ndim(a) else a, self.batches(k))


def for_processes(checkpointer):
    """``checkpointer`` in one process; a :class:`MainProcessCheckpointer` around it in a multi-process run."""
    return checkpointer if jax.process_count() == 1 or checkpointer is None else MainProcessCheckpointer(checkpointer)


def host_state(tree):
    """``tree`` with every array readable in this process: split arrays gathered from all processes.

    A collective when some array is split over several processes: every process must call it.
    """
    from jax.experimental import multihost_utils

    def gather(leaf):
        if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
            return multihost_utils.process_allgather(leaf, tiled=True)
        return leaf

    return jax.tree.map(gather, tree)


def reduce_metrics(metrics: Mapping[str, float], how: str = "mean") -> dict:
    """Numbers computed by each process on its own data, combined over processes (``"mean"`` or ``"sum"``).

    A collective in a multi-process run (every process must call it with the same keys); the identity in one.
    """
    if how not in ("mean", "sum"):
        raise UserError(f"how must be 'mean' or 'sum', got {how!r}")
    if jax.process_count() == 1:
        return dict(metrics)
    from jax.experimental import multihost_utils

    keys = sorted(metrics)
    values = np.asarray([float(metrics[k]) for k in keys], np.float64)
    gathered = np.asarray(multihost_utils.process_allgather(values))  # [processes, keys]
    combined = gathered.mean(axis=0) if how == "mean" else gathered.sum(axis=0)
    return {k: float(v) for k, v in zip(keys, combined, strict=True)}


class MainProcessCheckpointer:
    """A :class:`rnn_jax.checkpoint.Checkpointer` whose files only process 0 writes.

    ``save`` must be called by every process (it gathers the split TBPTT carry, a collective); the
    gathered state is the global one, so a run restarted with another number of processes (and the same
    global batch) restores it. ``last_saved_step`` and ``directory`` are kept in every process.
    """

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.directory = checkpointer.directory
        self.last_saved_step: int | None = None
        _LastCheckpoint.directory, _LastCheckpoint.step = str(self.directory), None

    def save(self, state, name: str = "latest", info: Mapping | None = None):
        state = host_state(state)
        path = self.checkpointer.save(state, name, info) if is_main_process() else None
        if name == "latest":
            self.last_saved_step = _LastCheckpoint.step = int(state.step)
        return path


def _lost_peer(err: BaseException) -> bool:
    text = str(err)
    signs = ("Gloo", "Connection reset", "Connection closed", "UNAVAILABLE", "DEADLINE_EXCEEDED", "coordination")
    return isinstance(err, jax.errors.JaxRuntimeError) and any(s in text for s in signs)


def run_command(fn: Callable[..., int | None], *args, prog: str = "rnn-jax", **kwargs) -> int:
    """Run ``fn(*args, **kwargs)``; in a multi-process run, stop this process at once on any error.

    Without the runtime: ``fn``'s result (errors propagate). With it, after success every process waits
    for the others (a barrier, so that none shuts down while another still needs it); on an error the
    process prints one line (and a traceback for an unexpected error) and exits with ``os._exit``, which
    closes its connections so the other processes fail fast instead of waiting at JAX's exit barrier.
    A collective that loses its peer becomes ``process I of N: lost contact with another process``.
    """
    if not jax.distributed.is_initialized():
        return int(fn(*args, **kwargs) or 0)
    from jax.experimental import multihost_utils

    who = f"process {jax.process_index()} of {jax.process_count()}"
    try:
        code = int(fn(*args, **kwargs) or 0)
        multihost_utils.sync_global_devices(f"{prog} done")
        return code
    except BaseException as err:  # noqa: BLE001 - every exit path of a multi-process run must end here
        if _lost_peer(err):
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            message = f"{who}: lost contact with another process (it died or was killed): {first}"
            message, code = f"{message}; {resume_hint()}", 1
        elif isinstance(err, UserError):
            message, code = f"{who}: {err}", 2
        elif isinstance(err, KeyboardInterrupt):
            message, code = f"{who}: interrupted", 130
        else:
            traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0]
            message, code = f"{who}: {type(err).__name__}: {first}", 1
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)


# ---------------------------------------------------------------------------------------------------
# A launcher for one machine: N processes on 127.0.0.1
# ---------------------------------------------------------------------------------------------------


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
