"""How :func:`~rnn_jax.scan.run` computes a call on one platform: the :class:`Plan`, and :func:`auto_plan`.

A plan names the implementation (an entry of :data:`rnn_jax.kernels.registry.TABLE`) and the knobs the scan
and the vanilla ``custom_jvp`` path follow: ``hoist``, ``unroll`` and the residuals the backward pass saves.
Every knob is a speed choice; none changes the values beyond float rounding. What ``impl="auto"``,
``hoist=None`` and ``unroll=None`` pick follows the platform the computation is *lowered for*: ``run`` plans
inside each branch of a ``lax.platform_dependent``, so a train step lowered for a GPU from a CPU machine gets
the GPU plan. The thresholds below are measurements, not laws: each names the section of ``docs/bench.md``
that measured it, and a new machine or XLA version may move them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax

from rnn_jax.cells import Cell
from rnn_jax.kernels.registry import get_impl

__all__ = [
    "Plan",
    "auto_plan",
    "platform_free",
    "auto_unroll",
    "auto_hoist",
    "auto_saved",
    "AUTO_ORDER",
    "PLAN_PLATFORMS",
    "CPU_SMALL_STATE",
    "CPU_SMALL_UNROLL",
    "ACCELERATOR_UNROLL",
    "CPU_PROJECT_IN_STEP",
    "CPU_PROJECT_IN_STEP_LARGE",
]

CPU_SMALL_STATE = 256
"""On CPU, a batch carry of at most this many elements is small: there unrolling pays and projecting inside the
step or saving only pre-activations does not, because a tiny step is dominated by the loop's own overhead
(docs/bench.md, "Why a plain `lax.scan` LSTM is slower, and what was tried", findings 1, 4 and 5)."""

CPU_SMALL_UNROLL = 4
"""Steps per loop iteration on CPU for a small carry: it amortises the while loop's per-iteration cost, while a
larger carry's unrolled body falls out of cache (the same section, finding 1, and ``docs/bench_unroll.png``)."""

ACCELERATOR_UNROLL = 8
"""Steps per loop iteration on GPU/TPU, where every iteration costs kernel launches (the same section, finding 1,
from the H100 anchors; and "GPU: what would close the gap (not measured here)")."""

CPU_PROJECT_IN_STEP = frozenset({"lstm", "gru"})
"""Cells whose input projection runs inside the step on CPU: the step's operands stay in cache and the backward
pass does not stream a ``[T, B, G*H]`` array (the same section, finding 4)."""

CPU_PROJECT_IN_STEP_LARGE = frozenset({"vanilla"})
"""Cells that project inside the step on CPU only when the batch carry exceeds :data:`CPU_SMALL_STATE`: a small
vanilla step is faster hoisted (the same section, finding 4, and the vanilla rerun in "One core each, the
current default")."""

AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("native", "custom_jvp", "scan"),
    "default": ("scan",),
}
"""What ``impl="auto"`` tries, in order, per lowering platform (``"default"``: any platform not named); the first
that is available and accepts the call wins. CPU: the native kernels beat the scan and the vanilla ``custom_jvp``
path for all three cells at every size timed (docs/bench.md, "The current default: native kernels on CPU"); where
they are not built or refuse a call (float64, remat), the vanilla ``custom_jvp`` path, which beats autodiff of
the scan (docs/bench.md, "The vanilla RNN's fast path"); elsewhere the scan, since neither cuDNN nor the Pallas
kernels have been measured on a GPU (docs/kernels.md)."""

PLAN_PLATFORMS: tuple[str, ...] = ("cpu", *(p for p in AUTO_ORDER if p not in ("cpu", "default")))
"""Platforms with a plan of their own; every other platform follows the ``"default"`` one."""


@dataclass(frozen=True)
class Plan:
    """How :func:`~rnn_jax.scan.run` computes a call on one platform (see :func:`auto_plan`).

    Attributes:
      impl: a name in :data:`rnn_jax.kernels.registry.TABLE` (never ``"auto"``).
      hoist: the input projection of all steps as one matmul before the loop (the scan, a ``Cell`` only).
      unroll: steps per iteration of the compiled loop (the scan and the ``custom_jvp`` path).
      saved: names of the step values the scan's backward pass stores (``()``: XLA keeps what it chooses).
    A kernel (``pallas``) follows none of the knobs: its plan is ``Plan(name, False, 1, ())``.
    """

    impl: str
    hoist: bool = False
    unroll: int = 1
    saved: tuple[str, ...] = ()


def _is_cpu(backend: str | None) -> bool:
    return (backend or jax.default_backend()) == "cpu"


def auto_unroll(T: int, state_size: int, backend: str | None = None) -> int:
    """The default ``unroll`` by platform and batch carry size: :data:`ACCELERATOR_UNROLL` on GPU/TPU; on CPU
    :data:`CPU_SMALL_UNROLL` for a carry of at most :data:`CPU_SMALL_STATE` elements, else 1; never above ``T``."""
    if not _is_cpu(backend):
        return max(1, min(ACCELERATOR_UNROLL, T))
    return max(1, min(CPU_SMALL_UNROLL, T)) if state_size <= CPU_SMALL_STATE else 1


def auto_hoist(cell, state_size: int, backend: str | None = None) -> bool:
    """The default ``hoist``: project the inputs of all steps as one matmul before the loop?

    GPU/TPU: yes (one large matmul instead of ``T`` small ones). CPU: not for :data:`CPU_PROJECT_IN_STEP`, nor for
    :data:`CPU_PROJECT_IN_STEP_LARGE` with a carry above :data:`CPU_SMALL_STATE`; other cells hoist (not measured).
    A plain function has no projection to hoist.
    """
    if not isinstance(cell, Cell):
        return False
    if not _is_cpu(backend):
        return True
    if cell.name in CPU_PROJECT_IN_STEP:
        return False
    return not (cell.name in CPU_PROJECT_IN_STEP_LARGE and state_size > CPU_SMALL_STATE)


def auto_saved(cell, state_size: int, backend: str | None = None) -> tuple[str, ...]:
    """Names of the step values the backward pass stores by default (``remat=False``).

    On CPU with a batch carry above :data:`CPU_SMALL_STATE`: the cell's :attr:`~rnn_jax.cells.Cell.saved`
    pre-activations only, the gate nonlinearities recomputed, which streams less memory per step; with a small
    carry it measured slower (docs/bench.md, "Why a plain `lax.scan` LSTM is slower, and what was tried",
    finding 5). Elsewhere ``()``: not measured, so XLA keeps what it chooses.
    """
    if not isinstance(cell, Cell):
        return ()
    return cell.saved if _is_cpu(backend) and state_size > CPU_SMALL_STATE else ()


def _state_size(carry_N) -> int:
    """Elements in the carry of the whole batch (the size the thresholds compare)."""
    return sum(math.prod(c.shape) for c in jax.tree.leaves(carry_N))


def _auto_impl(cell, params, xs_TNI, platform: str, options) -> str:
    """The first of the platform's :data:`AUTO_ORDER` that is available there and accepts the call."""
    for name in AUTO_ORDER.get(platform, AUTO_ORDER["default"]):
        impl = get_impl(name)
        if impl.available(platform) is None and impl.unsupported_reason(cell, params, xs_TNI, **options) is None:
            return name
    return "scan"


def auto_plan(cell, params, carry_N, xs_TNI, *, platform: str, impl: str = "auto", hoist=None, unroll=None,
              **options) -> Plan:  # fmt: skip
    """The :class:`Plan` that :func:`~rnn_jax.scan.run` follows on ``platform`` for one call.

    Args:
      cell, params: as given to ``run``.
      carry_N, xs_TNI: the initial carry with the batch flattened (``[N, ...]``) and the inputs ``[T, N, I]``
        (arrays or ``jax.ShapeDtypeStruct``: only shapes and dtypes are read).
      platform: ``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``, or ``"default"`` (any platform not in
        :data:`PLAN_PLATFORMS`).
      impl: ``"auto"`` (the first of :data:`AUTO_ORDER` that runs the call) or a name in the table.
      hoist, unroll: ``run``'s knobs; ``None`` picks them (:func:`auto_hoist`, :func:`auto_unroll`). They never
        change the implementation, so never the gradient rule.
      **options: ``lengths``, ``reverse``, ``remat``, ``return_carries``, as given to the implementations'
        ``unsupported_reason``.
    """
    name = _auto_impl(cell, params, xs_TNI, platform, options) if impl == "auto" else impl
    if name == "custom_jvp":  # its own loop: unroll 1 unless given, no hoisting or saving policy
        return Plan(name, True, 1 if unroll is None else int(unroll), ())
    if name != "scan":
        return Plan(name)
    T, state_size = jax.tree.leaves(xs_TNI)[0].shape[0], _state_size(carry_N)
    return Plan(
        "scan",
        auto_hoist(cell, state_size, platform) if hoist is None else bool(hoist),
        auto_unroll(T, state_size, platform) if unroll is None else int(unroll),
        auto_saved(cell, state_size, platform),
    )


def platform_free(cell, carry_N, *, impl: str, hoist=None, unroll=None) -> bool:
    """Whether :func:`auto_plan` gives every platform the same plan, so ``run`` needs no platform switch.

    True for an implementation named outright whose plan no platform chooses: a kernel or the ``custom_jvp``
    path, or the scan with ``hoist`` (for a ``Cell``) and ``unroll`` given and no saved-residual policy on CPU.
    """
    if impl == "auto":
        return False
    if impl != "scan":
        return True
    hoist_fixed = hoist is not None or not isinstance(cell, Cell)
    return hoist_fixed and unroll is not None and not auto_saved(cell, _state_size(carry_N), "cpu")
