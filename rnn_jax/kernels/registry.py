"""The one table of the implementations behind ``run(..., impl=...)``, and what each can run here.

Every implementation is a module with the same functions:

- ``available() -> str | None``: can it run on this install at all (``None``), or why not, in one sentence
  (e.g. ``"no C++ compiler"``);
- ``unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False)
  -> str | None``: can it run this call (``None``), or why not, in one sentence;
- a run function over one layer, time-major with the batch flattened: ``xs_TNI [T, N, I]``, ``carry_N`` (each
  leaf ``[N, ...]``), ``lengths_N [N]`` or ``None``. A *kernel* (``planned=False``) has the signature
  ``run_X(cell, params, carry_N, xs_TNI, lengths_N=None, *, reverse=False) -> (final_carry_N, ys_TNO)``;
  a *planned* one (``planned=True``: the scan, the vanilla ``custom_jvp`` path) also takes
  ``remat=, return_carries=, plan=`` (a :class:`~rnn_jax.plan.Plan`) and may return the carries
  ``[T, N, ...]`` third.

:func:`~rnn_jax.scan.run` validates, lays the inputs out, asks ``unsupported_reason``, calls the run
function and restores the layout; it masks the outputs of padded steps itself, so a run function must only
keep each row's carry unchanged at steps ``t >= lengths_N`` (outputs there may be anything). The module is
imported on first use, so an implementation that needs a compiler or a GPU library costs nothing until
asked for, and one that fails to import is listed with the import error as its reason.

Adding an implementation (e.g. a kernel in ``rnn_jax/kernels/mine.py`` with ``available``,
``unsupported_reason`` and ``run_mine``): one entry in :data:`TABLE`::

    Impl("mine", "rnn_jax.kernels.mine", "run_mine", platforms=("cpu",), summary="what it is, in one line"),

and nothing in ``run``: ``impl="mine"`` is then accepted, listed in :data:`IMPLS`, in error messages and
by :func:`available_impls`. For ``impl="auto"`` to choose it, add its name to the platform's order in
:data:`rnn_jax.plan.AUTO_ORDER`, with the measurement that says it is faster (``docs/bench.md``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import jax
import jax.extend.backend

__all__ = ["Impl", "TABLE", "IMPLS", "get_impl", "available_impls", "platform_name"]


def platform_name(platform: str | None = None) -> str:
    """A lowering platform name (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``...) for ``platform``; ``None`` means
    JAX's default backend. JAX calls both GPU kinds ``"gpu"``: the backend's platform version tells them apart."""
    if platform not in (None, "gpu"):
        return platform
    if jax.default_backend() != "gpu":
        return "cuda" if platform == "gpu" else jax.default_backend()
    version = jax.extend.backend.get_backend().platform_version.lower()
    return "rocm" if "rocm" in version or "hip" in version else "cuda"


@dataclass(frozen=True)
class Impl:
    """One entry of the table: an implementation's name and where its functions live.

    Attributes:
      name: what ``run(..., impl=name)`` takes.
      module: the module with ``available``, ``unsupported_reason`` and the run function (imported on first use).
      run_fn: the name of the run function in ``module``.
      platforms: the platforms (``jax.default_backend()`` names) it runs on; ``None`` for every platform.
      planned: whether the run function follows a :class:`~rnn_jax.plan.Plan` and takes ``remat`` and
        ``return_carries`` (the module docstring); ``False`` for a kernel.
      summary: one line for listings.
    """

    name: str
    module: str
    run_fn: str
    platforms: tuple[str, ...] | None = None
    planned: bool = False
    summary: str = ""

    def load(self) -> ModuleType:
        """The implementation's module (``ImportError`` when it cannot be imported here)."""
        return importlib.import_module(self.module)

    def available(self, platform: str | None = None) -> str | None:
        """``None`` when it can run on ``platform`` (default: JAX's default backend) on this install, else why not."""
        platform = platform_name(platform)
        if self.platforms is not None and platform not in self.platforms:
            return f"it runs on {' and '.join(self.platforms)} only, not on {platform}"
        try:
            module = self.load()
        except ImportError as e:
            return f"{self.module} did not import ({e})"
        return module.available()

    def unsupported_reason(self, cell, params, xs_TNI, **options) -> str | None:
        """The module's ``unsupported_reason`` for this call: ``None``, or why it cannot run it."""
        return self.load().unsupported_reason(cell, params, xs_TNI, **options)

    def run(self, cell, params, carry_N, xs_TNI, lengths_N, *, reverse, remat, return_carries, plan):
        """Run one layer time-major (module docstring); a kernel gets only what its signature takes."""
        fn = getattr(self.load(), self.run_fn)
        if self.planned:
            return fn(cell, params, carry_N, xs_TNI, lengths_N, reverse=reverse, remat=remat,
                      return_carries=return_carries, plan=plan)  # fmt: skip
        return fn(cell, params, carry_N, xs_TNI, lengths_N, reverse=reverse)


TABLE: dict[str, Impl] = {
    impl.name: impl
    for impl in (
        Impl(
            "scan",
            "rnn_jax.kernels.scan_impl",
            "_run_scan",
            planned=True,
            summary="lax.scan differentiated by JAX: every cell and option",
        ),
        Impl(
            "custom_jvp",
            "rnn_jax.kernels.vanilla_jvp",
            "_run_vanilla_fast",
            planned=True,
            summary="the vanilla RNN with a hand-written tangent, weight gradients after the loop",
        ),
        Impl(
            "pallas",
            "rnn_jax.kernels.pallas_impl",
            "run_pallas",
            platforms=("cpu", "cuda"),
            summary="persistent Pallas kernels (Triton on CUDA, interpret mode on CPU)",
        ),
        Impl(
            "native",
            "rnn_jax.kernels.native",
            "run_native",
            platforms=("cpu",),
            summary="C++ (AVX2/FMA) forward and backward of the built-in cells through jax.ffi, built on first use",
        ),
        Impl(
            "cudnn",
            "rnn_jax.kernels.cudnn",
            "run_cudnn",
            platforms=("cuda",),
            summary="cuDNN's LSTM through jax.experimental.rnn (float32)",
        ),
    )  # fmt: skip
}
"""Every implementation ``run`` can follow, by name: the one place to add one (module docstring)."""

IMPLS: tuple[str, ...] = ("auto", *TABLE)
"""The values of ``run``'s ``impl``: ``"auto"`` (chosen per platform, :func:`rnn_jax.plan.auto_plan`) and the table."""


def get_impl(name: str) -> Impl:
    """The table's entry for ``name`` (``KeyError`` for a name not in :data:`TABLE`)."""
    return TABLE[name]


def available_impls(platform: str | None = None) -> dict[str, str | None]:
    """Each implementation in the table: ``None`` where it can run on ``platform`` on this install, else why not.

    ``platform`` is a JAX platform name (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``; ``"gpu"`` as JAX uses it);
    ``None`` means JAX's default backend. Whether a given call can run is a further question
    (``unsupported_reason``): this says only what exists here.
    """
    return {name: impl.available(platform) for name, impl in TABLE.items()}
