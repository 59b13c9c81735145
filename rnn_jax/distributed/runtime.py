"""The runtime: connect the processes (``initialize``), watch the peers, end a failing process in one line."""

from __future__ import annotations

import atexit
import errno
import math
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

import jax

from rnn_jax.errors import UserError

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
