"""The data side of a multi-process run: the rows a process builds, gathering state, process-0 checkpoints."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from rnn_jax.distributed.runtime import _LastCheckpoint, is_main_process
from rnn_jax.errors import UserError


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
