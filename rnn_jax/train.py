"""The training core shared by every trainer: state, optimiser, the jitted train step (the fit loop that
drives it is :func:`rnn_jax.harness.fit`).

The whole training step is :func:`make_train_step`: for a loss ``L(params, batch, key)``,

    loss, grads = value_and_grad(L)(params)            # params cast to the compute dtype inside
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = params + updates

and the step is skipped (the state returned unchanged, ``metrics["finite"] == False``) when the loss or
the gradient norm is not finite, so the loop can stop with the last good state and checkpoint intact.

Trainers that carry a recurrent state from one batch to the next (truncated BPTT) keep it in
``TrainState.carry``; their loss then has the form ``L(params, carry, batch, key) -> (loss, (aux, carry))``
and the new carry is stored with its gradient cut (``lax.stop_gradient``).

Many devices: with a :class:`jax.sharding.Mesh` whose one axis is ``"data"``, the batch (and the TBPTT
carry) are split over the devices along their leading axis; params and optimiser state are replicated.
The loss is a mean over the global batch, so XLA inserts the gradient all-reduce itself and the step
computes the same numbers as on one device.

Mixed precision: ``compute_dtype=jnp.bfloat16`` casts the float32 master params (and the carry) to
bfloat16 inside the loss; gradients flow back to the float32 params, the optimiser runs in float32, and
the loss is returned in float32 (the loss function computes its log-softmax in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rnn_jax.errors import UserError

__all__ = [
    "TrainState",
    "TrainingDiverged",
    "WarmupCosineState",
    "warmup_cosine",
    "scale_by_warmup_cosine",
    "set_total_steps",
    "current_learning_rate",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_mesh",
    "batch_sharding",
    "shard_batch",
    "state_shardings",
    "place_state",
    "cast_floating",
]

DATA_AXIS = "data"


class TrainState(NamedTuple):
    """Everything a training run needs to continue exactly: a pytree.

    Attributes:
      params: the model's float32 (master) params.
      opt_state: the optimiser's state.
      step: int32 scalar, the number of updates applied so far (also the data cursor of trainers whose
        batches are a pure function of the step).
      key: PRNG key (a typed key array) for dropout and other noise; split once per step.
      carry: trainer-specific state carried from step to step (the TBPTT carry), or ``None``.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    carry: Any = None


class TrainingDiverged(UserError):
    """The loss or the gradient became NaN or infinite; training stopped before applying that step."""


# ---------------------------------------------------------------------------------------------------
# Optimiser: global-norm clipping + AdamW with linear warm-up and cosine decay
# ---------------------------------------------------------------------------------------------------


def warmup_cosine(step, total_steps, peak_lr: float, warmup_steps: int, final_fraction: float):
    """The learning rate at ``step`` (0-based):

    lr = peak * min(1, (step + 1) / warmup) * (f + (1 - f) * (1 + cos(pi * p)) / 2),
    p  = clip((step - warmup) / (total - warmup), 0, 1)

    a linear warm-up over ``warmup`` steps, then a cosine from ``peak`` down to ``f * peak`` at ``total``.
    """
    step = jnp.asarray(step, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / max(warmup_steps, 1))
    progress = jnp.clip((step - warmup_steps) / jnp.maximum(total - warmup_steps, 1.0), 0.0, 1.0)
    return peak_lr * warm * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))


class WarmupCosineState(NamedTuple):
    """State of :func:`scale_by_warmup_cosine`: the update count and the step at which the cosine ends.

    ``total_steps`` lives in the state (not in a closure) so that a time-budgeted run can set it once it
    has measured its own speed (:func:`set_total_steps`) without recompiling the train step.
    """

    count: jax.Array
    total_steps: jax.Array


def scale_by_warmup_cosine(
    peak_lr: float, warmup_steps: int, total_steps: int, final_fraction: float = 0.1
) -> optax.GradientTransformation:
    """Scale updates by ``-warmup_cosine(count, total_steps, ...)`` (a descent step)."""

    def init(params):
        del params
        return WarmupCosineState(jnp.zeros((), jnp.int32), jnp.asarray(total_steps, jnp.int32))

    def update(updates, state, params=None):
        del params
        lr = warmup_cosine(state.count, state.total_steps, peak_lr, warmup_steps, final_fraction)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, WarmupCosineState(optax.safe_increment(state.count), state.total_steps)

    return optax.GradientTransformation(init, update)


def _is_schedule_state(x) -> bool:
    return isinstance(x, WarmupCosineState)


def set_total_steps(opt_state, total_steps: int):
    """Return ``opt_state`` with the cosine's end moved to ``total_steps`` (no-op without a schedule)."""
    total = jnp.asarray(int(total_steps), jnp.int32)
    return jax.tree.map(
        lambda s: s._replace(total_steps=total) if _is_schedule_state(s) else s, opt_state, is_leaf=_is_schedule_state
    )


def current_learning_rate(opt_state, peak_lr: float, warmup_steps: int, final_fraction: float = 0.1) -> float | None:
    """The learning rate the next update will use, or ``None`` when ``opt_state`` has no schedule."""
    states = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state) if _is_schedule_state(s)]
    if not states:
        return None
    s = states[0]
    return float(warmup_cosine(s.count, s.total_steps, peak_lr, warmup_steps, final_fraction))


def _decay_mask(params):
    # Weight decay on matrices only: biases and gains are not decayed.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _check_positive(**values):
    for name, value in values.items():
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number, got {value!r}")


def make_optimizer(
    learning_rate: float,
    *,
    total_steps: int,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    clip_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    final_fraction: float = 0.1,
) -> optax.GradientTransformation:
    """``clip_by_global_norm -> Adam -> decoupled weight decay -> warm-up + cosine learning rate``.

    This is ``optax.chain(optax.clip_by_global_norm(c), optax.adamw(schedule))`` written out, so that the
    schedule's end (``total_steps``) sits in the optimiser state where a time-budgeted run can set it.
    Weight decay applies to matrices (``ndim >= 2``) only.
    """
    _check_positive(learning_rate=learning_rate, total_steps=total_steps, clip_norm=clip_norm)
    if warmup_steps < 0 or weight_decay < 0 or not 0 <= final_fraction <= 1:
        raise UserError(
            f"need warmup_steps >= 0, weight_decay >= 0 and final_fraction in [0, 1], got {warmup_steps}, "
            f"{weight_decay}, {final_fraction}"
        )
    parts = [optax.clip_by_global_norm(clip_norm), optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    if weight_decay > 0:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_decay_mask))
    parts.append(scale_by_warmup_cosine(learning_rate, warmup_steps, total_steps, final_fraction))
    return optax.chain(*parts)


def init_state(params, optimizer: optax.GradientTransformation, key, carry=None) -> TrainState:
    """A fresh :class:`TrainState` at step 0."""
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), key, carry)


# ---------------------------------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------------------------------


def check_device_count(n: int) -> None:
    """A :class:`UserError` unless ``n`` is a positive integer of at most the visible devices (all processes')."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"the number of devices must be a positive integer, got {n!r}")
    visible = jax.device_count()
    if n > visible:
        which = "only 1 is visible" if visible == 1 else f"only {visible} are visible"
        raise UserError(
            f"asked for {n} devices but {which} ({jax.devices()[0].platform}); on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting"
        )


def make_mesh(n_devices: int | None = None) -> Mesh:
    """A one-axis mesh ``("data",)`` over ``n_devices`` devices (all of them by default), ordered by process.

    On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (set before JAX starts) makes 4 devices.
    In a multi-process run (:func:`rnn_jax.distributed.initialize`) the mesh spans every process's devices,
    process 0's first, so process ``p`` of ``P`` holds rows ``[p B / P, (p + 1) B / P)`` of a batch; with
    ``n_devices`` below the global count, each process contributes ``n_devices / P`` of its own.
    """
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    n = len(devices) if n_devices is None else n_devices
    check_device_count(n)
    processes = jax.process_count()
    if n % processes:
        raise UserError(f"the {n} devices of the mesh must divide evenly among the {processes} processes")
    per_process = n // processes
    chosen = [d for p in range(processes) for d in [d for d in devices if d.process_index == p][:per_process]]
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def _check_divisible(tree, mesh: Mesh, what: str, *, per_process: bool = False):
    """Every array's leading size must divide by the mesh's devices (this process's, for its own rows)."""
    n = len(mesh.local_devices) if per_process else mesh.shape[DATA_AXIS]
    for leaf in jax.tree.leaves(tree):
        if not jnp.ndim(leaf) or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable):
            continue  # a scalar (a per-batch setting) is replicated; a global array was checked when made
        size = jnp.shape(leaf)[0]
        if size % n and per_process:
            raise UserError(
                f"this process's {what} rows ({size}) do not divide by its {n} devices; each process builds "
                f"the global {what} size / {jax.process_count()} rows (see rnn_jax.distributed.process_rows)"
            )
        if size % n:
            raise UserError(
                f"the {what} size {size} does not divide by the {n} devices of the mesh; "
                f"use a {what} size that is a multiple of {n}"
            )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split over the mesh's ``"data"`` axis along their leading axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _batch_shardings(batch, mesh: Mesh):
    """Every array of ``batch`` split over ``"data"`` along its leading axis; scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda leaf: batch_sharding(mesh) if jnp.ndim(leaf) else replicated, batch)


def _placed(leaf, sharding) -> bool:
    return isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(sharding, leaf.ndim)


def shard_batch(batch, mesh: Mesh | None):
    """Place this process's rows of ``batch`` on the mesh, split over ``"data"`` (no-op without a mesh).

    In one process the rows are the whole batch. In a multi-process run each process passes only its own
    rows (:func:`rnn_jax.distributed.process_rows`) and gets the global batch
    (``jax.make_array_from_process_local_data``). Scalar leaves (per-batch settings) are replicated and
    must be equal in every process; arrays already placed are kept. Raises :class:`UserError` if an
    array's leading size does not divide by the number of devices.
    """
    if mesh is None:
        return batch
    _check_divisible(batch, mesh, "batch", per_process=jax.process_count() > 1)
    shardings = _batch_shardings(batch, mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)

    def put(leaf, sharding):
        if _placed(leaf, sharding):
            return leaf
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, batch, shardings)


def state_shardings(state: TrainState, mesh: Mesh):
    """Shardings of a :class:`TrainState`: everything replicated except the carry, split like the batch."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        params=jax.tree.map(lambda _: replicated, state.params),
        opt_state=jax.tree.map(lambda _: replicated, state.opt_state),
        step=replicated,
        key=replicated,
        carry=jax.tree.map(lambda _: batch_sharding(mesh), state.carry),
    )


def _put_global(leaf, sharding):
    """``leaf`` (the same whole value in every process) placed on a mesh that may span several processes."""
    if _placed(leaf, sharding):
        return leaf
    if jax.dtypes.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        # Keys cannot be put on other processes' devices directly: place their bits, rebuild the key there.
        data = jax.device_put(np.asarray(jax.random.key_data(leaf)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    return jax.device_put(np.asarray(leaf), sharding)


def place_state(state: TrainState, mesh: Mesh | None) -> TrainState:
    """Put ``state`` on the mesh (params replicated, carry split over ``"data"``); no-op without a mesh.

    ``state`` holds whole (global) values, the same in every process (a fresh init from the same seed, or
    a restored checkpoint); each process keeps its own devices' part. Arrays already placed are kept.
    """
    if mesh is None:
        return state
    if state.carry is not None:
        _check_divisible(state.carry, mesh, "batch (carry)")
    shardings = state_shardings(state, mesh)
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    return jax.tree.map(_put_global, state, shardings)


def cast_floating(tree, dtype):
    """Cast every floating-point leaf of ``tree`` to ``dtype`` (integers, bools and keys untouched)."""
    if dtype is None:
        return tree

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------------------------------
# The train step
# ---------------------------------------------------------------------------------------------------


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    compute_dtype=None,
    has_carry: bool = False,
) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Build the jitted ``train_step(state, batch) -> (state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, aux)`` with ``aux`` a dict of scalars; with
        ``has_carry``: ``loss_fn(params, carry, batch, key) -> (loss, (aux, new_carry))``. The loss must
        be a mean over the batch (so that a sharded batch gives the same loss and gradients).
      optimizer: an optax transformation (see :func:`make_optimizer`).
      mesh: a mesh with a ``"data"`` axis to split the batch over, or ``None`` for one device. In a
        multi-process run (:mod:`rnn_jax.distributed`) each process passes its own rows of the batch
        (:func:`shard_batch`), the state is placed from its global value (:func:`place_state`), and the
        metrics come back replicated: every process reads the same global loss.
      compute_dtype: e.g. ``jnp.bfloat16`` to run the loss on params (and carry) cast to it; the master
        params, the stored carry and the optimiser stay in their own (float32) dtype.
      has_carry: whether the loss reads and returns a carry kept in ``state.carry``.

    Returns:
      The step. ``metrics`` holds ``loss`` (float32), ``grad_norm`` (before clipping), ``finite`` (bool)
      and the loss's ``aux``. When ``finite`` is False the returned state is the input state.
    """

    def step(state: TrainState, batch):
        key, sub = jax.random.split(state.key)

        def objective(params):
            p = cast_floating(params, compute_dtype)
            if has_carry:
                loss, (aux, new_carry) = loss_fn(p, cast_floating(state.carry, compute_dtype), batch, sub)
            else:
                (loss, aux), new_carry = loss_fn(p, batch, sub), None
            return loss.astype(jnp.float32), (aux, new_carry)

        (loss, (aux, new_carry)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if has_carry:  # truncated BPTT: the next batch starts from this carry, without a gradient path back
            new_carry = jax.tree.map(lambda n, o: lax.stop_gradient(n).astype(o.dtype), new_carry, state.carry)
        else:
            new_carry = state.carry
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = TrainState(params, opt_state, state.step + 1, key, new_carry)
        # A non-finite loss changes nothing: the caller still holds the last good state.
        new_state = lax.cond(finite, lambda: new_state, lambda: state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **dict(aux)}
        return new_state, metrics

    if mesh is None:
        return jax.jit(step)

    compiled: dict = {}

    def sharded_step(state: TrainState, batch):
        batch = shard_batch(batch, mesh)
        signature = (jax.tree.structure(state), jax.tree.structure(batch), tuple(map(jnp.ndim, jax.tree.leaves(batch))))
        if signature not in compiled:
            shardings = state_shardings(state, mesh)
            compiled[signature] = jax.jit(
                step,
                in_shardings=(shardings, _batch_shardings(batch, mesh)),
                out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
            )
        return compiled[signature](place_state(state, mesh), batch)

    return sharded_step
