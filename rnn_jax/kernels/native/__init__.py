"""Native CPU kernels for the vanilla, LSTM and GRU layers: an XLA FFI custom call in C++ (``rnn_native.cc``).

One layer is one call per direction, forward and backward (docs/kernels.md, "Native CPU kernels")::

    forward, for t:   A_t = [x_t, h_{t-1}] [W_x; W_h] + b, gate math fused, write h_t (c_t, saved gates)
    backward, t reversed: dA_t from dh, dc and the saved gates;  dh_{t-1} = direct + dR_t W_h^T;
                      dW_h += h_{t-1}^T dR_t,  dW_x += x_t^T dU_t,  db += sum dU_t   (step by step, in cache)
    dX = dU W_x^T     one large matmul in XLA, dropped when nothing asks for it

A cell whose ``project`` is not the built-in ``x W_x + b`` keeps its own: XLA computes ``U = project(x)``
and the call adds it. The GEMMs run on an FMA microkernel (AVX-512 where the CPU has it, else AVX2); the
work is a phase-ordered queue drained by the calling thread and helpers from XLA's intra-op pool. No BLAS:
the library needs g++ (or ``$CXX``) and an AVX2+FMA CPU. It is compiled on first use into a per-user cache
keyed by the source, the jax version, the compiler and its flags, and renamed into place atomically, so
concurrent first uses do not race. ``RNN_JAX_NATIVE=0`` turns the native part off (``available()`` then says
so).

float32 inside; bfloat16 (or any float) params and inputs are cast to float32 at the boundary and the
results back to the carry's dtype. Reverse mode goes through the backward call (``jax.custom_vjp``);
forward mode raises an error naming ``impl="scan"``; ``vmap`` works (one call per vmapped element).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from rnn_jax.cells import CELLS, LSTMState
from rnn_jax.errors import UserError
from rnn_jax.kernels import kernel_cell_name, recurrent_weight

__all__ = ["available", "unsupported_reason", "run_native", "build"]

SOURCE = Path(__file__).with_name("rnn_native.cc")
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno")
AVX512_FLAGS = ("-mavx512f",)
"""Added where the CPU has AVX-512F: the microkernel and gate math then run on 16-lane registers."""
_CELL_CODES = {"vanilla": 0, "lstm": 1, "gru": 2}
_FORWARD, _BACKWARD = "rnn_jax_native_forward", "rnn_jax_native_backward"


class NativeUnavailable(RuntimeError):
    """The native library cannot be built or loaded here (the message says why)."""


# ---------------------------------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------------------------------


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _cpu_flags() -> set[str]:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(flags.split(":", 1)[1].split())


def _cpu_has_avx2_fma() -> bool:
    return {"avx2", "fma"} <= _cpu_flags()


def compile_flags() -> tuple[str, ...]:
    """The compiler flags for this CPU: AVX2 and FMA always, AVX-512F where the CPU has it (unless
    ``RNN_JAX_NATIVE_AVX512=0``, which the tests use to run the AVX2 build on an AVX-512 machine)."""
    avx512 = "avx512f" in _cpu_flags() and os.environ.get("RNN_JAX_NATIVE_AVX512", "1") != "0"
    return FLAGS + (AVX512_FLAGS if avx512 else ())


def _cache_dir() -> Path:
    base = os.environ.get("RNN_JAX_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnn_jax" / "native"


def _library_path(cxx: str) -> Path:
    """Where the library built from this source, jax version, compiler and flags lives."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), jax.__version__, version, *compile_flags(), sys.platform))
    ).hexdigest()[:20]
    return _cache_dir() / f"rnn_native-{key}.so"


def build(cxx: str) -> Path:
    """Compile the library into the cache (if not there yet) and return its path; atomic under concurrency."""
    path = _library_path(cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".so.tmp")
    os.close(fd)
    cmd = [cxx, *compile_flags(), "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "error" in ln] or [f"exit status {done.returncode}"]
            first = errors[0][:300]
            raise NativeUnavailable(f"compiling {SOURCE.name} failed: {first}")
        os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def _load() -> str | None:
    """Build, load and register the FFI targets once per process: ``None``, or why it failed."""
    if os.environ.get("RNN_JAX_NATIVE", "1") == "0":
        return "turned off by RNN_JAX_NATIVE=0"
    if sys.platform != "linux":
        return f"the native kernels are built for Linux only, not {sys.platform}"
    if not _cpu_has_avx2_fma():
        return "the native kernels need a CPU with AVX2 and FMA"
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler found (install g++ or set $CXX)"
    try:
        lib = ctypes.cdll.LoadLibrary(str(build(cxx)))
    except (NativeUnavailable, OSError, subprocess.SubprocessError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(lib.RnnNativeForward), platform="cpu")
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(lib.RnnNativeBackward), platform="cpu")
    return None


def available() -> str | None:
    """``None`` when the native library is usable (built, loaded, registered), else one short reason."""
    return _load()


# ---------------------------------------------------------------------------------------------------
# What runs natively
# ---------------------------------------------------------------------------------------------------


def _input_weight_and_bias(name, cell, params):
    """``(W_x, b)`` when ``cell`` projects its input with the built-in ``x W_x + b`` (the kernel then fuses
    it into the step's GEMM), else ``None`` (a projection of the user's own: XLA computes it)."""
    if cell.project is not CELLS[name].project:
        return None
    return (params.W_xh, params.b_h) if name == "vanilla" else (params.W_x, params.b)


def unsupported_reason(cell, params, xs_TNI, *, lengths=None, reverse=False, remat=False, return_carries=False):
    """Why the native kernels cannot run this layer (a short sentence), or ``None`` when they can.

    Refused: cells other than the built-in vanilla, LSTM and GRU steps (any input projection and readout
    are fine: they run in XLA); ``remat`` (the call saves its gates; use the scan to trade compute for
    memory); ``return_carries``; non-float params; ``T == 0``; a default backend other than CPU.
    ``lengths`` and ``reverse`` are supported.
    """
    del lengths, reverse
    name = kernel_cell_name(cell)
    if name is None:
        return "the native kernels run the built-in vanilla, LSTM and GRU cells only"
    if remat not in (False, "none"):
        return f"remat={remat!r} is not supported by the native kernels"
    if return_carries:
        return "return_carries is not supported by the native kernels"
    W = recurrent_weight(name, params)
    if not jnp.issubdtype(W.dtype, jnp.floating):
        return f"dtype {jnp.dtype(W.dtype).name} is not supported by the native kernels (a float dtype)"
    if any(jnp.dtype(a.dtype).itemsize > 4 for a in (W, *jax.tree.leaves(xs_TNI))):
        return "float64 would be computed in float32 inside the native kernels (16-, 32-bit floats only)"
    if jax.tree.leaves(xs_TNI)[0].shape[0] == 0:
        return "T=0 (no steps) is not supported by the native kernels"
    if jax.default_backend() != "cpu":
        return f"the native kernels run on CPU only (default backend: {jax.default_backend()})"
    return None


# ---------------------------------------------------------------------------------------------------
# Forward mode is refused: a linear identity on the tangents that cannot be evaluated, only transposed
# ---------------------------------------------------------------------------------------------------

FORWARD_MODE_MESSAGE = (
    'forward-mode autodiff (jax.jvp, jax.jacfwd) is not supported through impl="native": its derivative is '
    'defined for reverse mode only (the backward call); use impl="scan" for forward mode'
)


def _refuse(*_, **__):
    raise UserError(FORWARD_MODE_MESSAGE)


_reverse_only_p = Primitive("rnn_native_reverse_mode_only")
_reverse_only_p.def_impl(_refuse)
_reverse_only_p.def_abstract_eval(lambda x: x)
ad.primitive_transposes[_reverse_only_p] = lambda ct, x: [ct]  # reverse mode: the identity
batching.primitive_batchers[_reverse_only_p] = lambda args, dims: (_reverse_only_p.bind(*args), dims[0])
mlir.register_lowering(_reverse_only_p, _refuse)  # reached only when a tangent is really computed


@jax.custom_jvp
def _reverse_mode_only(x):
    """The identity; its tangent map can be transposed (reverse mode) but not evaluated (forward mode)."""
    return x


@_reverse_mode_only.defjvp
def _reverse_mode_only_jvp(primals, tangents):
    return primals[0], _reverse_only_p.bind(tangents[0])


# ---------------------------------------------------------------------------------------------------
# The differentiable layer: the forward and backward calls under jax.custom_vjp
# ---------------------------------------------------------------------------------------------------


def _f32(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _forward_call(name, reverse, save, x, Wx, Wh, b, extra, h0, c0, lengths):
    T, N, _ = x.shape
    H = Wh.shape[0]
    out = (_f32((T, N, H)), _f32((T, N, H) if name == "lstm" else (0,)), _f32((T, N, 4 * H) if save else (0,)))
    call = jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")
    return call(x, Wx, Wh, b, extra, h0, c0, lengths, cell=np.int64(_CELL_CODES[name]), reverse=bool(reverse))


def _final_c(name, reverse, cseq):
    return cseq[0 if reverse else -1] if name == "lstm" else jnp.zeros((0,), jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _layer(name, reverse, x, Wx, Wh, b, extra, h0, c0, lengths):
    """``(hseq [T,N,H], c_T)``: ``h`` after every step and the LSTM's final ``c`` (``[0]`` for the others).

    ``x`` is the input ``[T,N,I]`` with ``W_x [I,G*H]`` (fused), or the projected input ``[T,N,G*H]`` with an
    empty ``W_x [0,G*H]`` and a zero ``b``."""
    hseq, cseq, _ = _forward_call(name, reverse, False, x, Wx, Wh, b, extra, h0, c0, lengths)
    return hseq, _final_c(name, reverse, cseq)


def _layer_fwd(name, reverse, x, Wx, Wh, b, extra, h0, c0, lengths):
    hseq, cseq, acts = _forward_call(name, reverse, name != "vanilla", x, Wx, Wh, b, extra, h0, c0, lengths)
    return (hseq, _final_c(name, reverse, cseq)), (x, Wx, Wh, h0, c0, lengths, hseq, cseq, acts)


def _layer_bwd(name, reverse, res, cts):
    x, Wx, Wh, h0, c0, lengths, hseq, cseq, acts = res
    dhseq, dc_last = cts
    T, N, H = hseq.shape
    I, GH = Wx.shape
    fused = I > 0
    out = (
        _f32((T, N, GH)),
        _f32((T, N, GH) if name == "gru" else (0,)),
        _f32((N, H)),
        _f32(c0.shape),
        _f32((I, GH)),
        _f32((H, GH)),
        _f32((GH,)),
        _f32((H,)),
    )
    call = jax.ffi.ffi_call(_BACKWARD, out, vmap_method="sequential")
    du, _, dh0, dc0, dWx, dWh, db, dextra = call(
        x if fused else jnp.zeros((0,), jnp.float32), Wh, acts, hseq, h0, cseq, c0, dhseq,
        dc_last if name == "lstm" else jnp.zeros((0,), jnp.float32), lengths,
        cell=np.int64(_CELL_CODES[name]), reverse=bool(reverse),
    )  # fmt: skip
    # the input's gradient: one large matmul in XLA, dropped by XLA when nobody asks for it
    dx = jnp.einsum("tng,ig->tni", du, Wx) if fused else du
    return dx, dWx, dWh, db, dextra, dh0, dc0, None


_layer.defvjp(_layer_fwd, _layer_bwd)


# ---------------------------------------------------------------------------------------------------
# run_native
# ---------------------------------------------------------------------------------------------------


def _require_available():
    reason = available()
    if reason is not None:
        raise UserError(f'impl="native" is not available here: {reason}; use impl="scan"')


def run_native(cell, params, carry_N, xs_TNI, lengths_N=None, *, reverse=False):
    """Run one layer through the native kernels: ``(final_carry_N, ys_TNO)``, equal to
    ``rnn_jax.run(cell, params, carry_N, xs_TNI, lengths=lengths_N, reverse=reverse, time_major=True)``.

    Args:
      cell: the built-in vanilla, LSTM or GRU cell (see :func:`unsupported_reason`).
      params: its params.
      carry_N: the initial carry with one leading batch axis ``N`` (LSTM: :class:`~rnn_jax.cells.LSTMState`),
        or ``None`` for zeros.
      xs_TNI: time-major inputs ``[T, N, I]``.
      lengths_N: optional int ``[N]``: steps ``t >= length`` keep the carry and output zeros.
      reverse: run from ``T-1`` down to ``0`` (padded steps first, leaving the initial carry alone).

    Returns:
      The final carry ``[N, ...]`` (in the carry's dtype) and the outputs ``[T, N, O]`` after the readout.
    """
    _require_available()
    name = kernel_cell_name(cell)
    reason = unsupported_reason(cell, params, xs_TNI)
    if reason is not None:
        raise UserError(f'impl="native" cannot run this layer: {reason}; use impl="scan"')
    T, N = jax.tree.leaves(xs_TNI)[0].shape[:2]
    Wh = recurrent_weight(name, params)
    H, GH = Wh.shape
    if carry_N is None:
        carry_N = jax.tree.map(lambda z: jnp.zeros((N, *z.shape), z.dtype), cell.init_carry(params))
    projection = _input_weight_and_bias(name, cell, params)
    if projection is not None:  # fused into the step's GEMM
        x, (Wx, b) = xs_TNI, projection
    else:  # the cell's own projection, one large matmul (or whatever it is) in XLA
        x = jax.vmap(jax.vmap(lambda x: cell.project(params, x)))(xs_TNI)
        Wx, b = jnp.zeros((0, GH), jnp.float32), jnp.zeros((GH,), jnp.float32)
    h0, c0 = (carry_N.h, carry_N.c) if name == "lstm" else (carry_N, jnp.zeros((0,), jnp.float32))
    extra = params.b_hn if name == "gru" else jnp.zeros((H,), jnp.float32)
    lengths = jnp.full((N,), T, jnp.int32) if lengths_N is None else jnp.asarray(lengths_N, jnp.int32)
    f32 = [_reverse_mode_only(jnp.asarray(a, jnp.float32)) for a in (x, Wx, Wh, b, extra, h0, c0)]
    hseq, c_last = _layer(name, bool(reverse), *f32, lengths)
    h_dtype = jnp.result_type(h0)
    last = 0 if reverse else T - 1
    if name == "lstm":
        final = LSTMState(hseq[last].astype(h_dtype), c_last.astype(jnp.result_type(carry_N.c)))
    else:
        final = hseq[last].astype(h_dtype)
    ys = jax.vmap(jax.vmap(lambda h: cell.readout(params, h)))(hseq.astype(h_dtype))
    if lengths_N is not None:
        mask = jnp.arange(T)[:, None] < lengths[None, :]
        ys = jnp.where(mask.reshape(mask.shape + (1,) * (ys.ndim - 2)), ys, 0)
    return final, ys
