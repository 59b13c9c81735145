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

The package: :mod:`~rnn_jax.distributed.runtime` (connecting, watching, failing in one line),
:mod:`~rnn_jax.distributed.data` (rows, gathering, process-0 checkpoints) and
:mod:`~rnn_jax.distributed.launcher` (``rnn-jax launch``); every name is importable from here.
"""

from rnn_jax.distributed.data import (
    MainProcessCheckpointer,
    ProcessBatches,
    for_processes,
    host_state,
    process_rows,
    reduce_metrics,
)
from rnn_jax.distributed.launcher import _free_port as _free_port
from rnn_jax.distributed.launcher import cli_main, launch
from rnn_jax.distributed.runtime import (
    FLAGS,
    HEARTBEAT_TIMEOUT_S,
    INITIALIZATION_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
    WATCHDOG_STALE_S,
    check_port_free,
    cluster_detected,
    initialize,
    initialize_from_argv,
    is_main_process,
    resume_hint,
    run_command,
    split_flags,
)
from rnn_jax.distributed.runtime import (
    _LastCheckpoint as _LastCheckpoint,
)

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
    "resume_hint",
    "check_port_free",
    "INITIALIZATION_TIMEOUT_S",
    "FLAGS",
    "SHUTDOWN_TIMEOUT_S",
    "WATCHDOG_STALE_S",
    "launch",
    "cli_main",
]
