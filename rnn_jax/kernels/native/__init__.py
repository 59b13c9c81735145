"""Native CPU kernels for the vanilla, LSTM and GRU layers: an XLA FFI custom call in C++ (``rnn_native.cc``).

One layer is one call per direction; only the sequential part runs in C++::

    U = X W_x + b                               one large matmul in XLA (any input projection)
    for t (inside the call):  A_t = U_t + h_{t-1} W_h,  gate math fused, write h_t (c_t, saved gates)
    backward (inside the call), t reversed: dA_t from dh, dc and the saved gates;  dh_{t-1} = direct + dR_t W_h^T
    dW_h = H_prev^T dR,  dW_x = X^T dU,  db = sum dU,  dX = dU W_x^T      large matmuls in XLA, outside

The step GEMM runs on an AVX2/FMA microkernel over ``W_h`` packed once per call, split over the CPUs this
process may use (``sched_getaffinity``) by blocks of hidden units. No BLAS: the library needs g++ (or ``$CXX``)
and an AVX2+FMA CPU. It is compiled on first use into a per-user cache keyed by the source, the jax version,
the compiler and its flags, and renamed into place atomically, so concurrent first uses do not race.
``RNN_JAX_NATIVE=0`` turns the native part off (``available()`` then says so).

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

from rnn_jax.cells import LSTMState
from rnn_jax.errors import UserError
from rnn_jax.kernels import kernel_cell_name

__all__ = ["available", "unsupported_reason", "run_native", "build"]

SOURCE = Path(__file__).with_name("rnn_native.cc")
FLAGS = ("-O3", "-mavx2", "-mfma", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno")
_CELL_CODES = {"vanilla": 0, "lstm": 1, "gru": 2}
_GATES = {"vanilla": 1, "lstm": 4, "gru": 3}
_FORWARD, _BACKWARD = "rnn_jax_native_forward", "rnn_jax_native_backward"


class NativeUnavailable(RuntimeError):
    """The native library cannot be built or loaded here (the message says why)."""


# ---------------------------------------------------------------------------------------------------
# Build and load
# ---------------------------------------------------------------------------------------------------


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return {"avx2", "fma"} <= set(flags.split(":", 1)[1].split())


def _cache_dir() -> Path:
    base = os.environ.get("RNN_JAX_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnn_jax" / "native"


def _library_path(cxx: str) -> Path:
    """Where the library built from this source, jax version, compiler and flags lives."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), jax.__version__, version, *FLAGS, sys.platform))
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
    cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
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


def _recurrent_weight(name, params):
    return params.W_hh if name == "vanilla" else params.W_h


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
    W = _recurrent_weight(name, params)
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


def _forward_call(name, reverse, save, u, W, extra, h0, c0, lengths):
    T, N, _ = u.shape
    H = W.shape[0]
    out = (_f32((T, N, H)), _f32((T, N, H) if name == "lstm" else (0,)), _f32((T, N, 4 * H) if save else (0,)))
    call = jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")
    return call(u, W, extra, h0, c0, lengths, cell=np.int64(_CELL_CODES[name]), reverse=bool(reverse))


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _layer(name, reverse, u, W, extra, h0, c0, lengths):
    """``(hseq [T,N,H], cseq)``: the carry after every step (``cseq`` is ``[0]`` but for the LSTM)."""
    hseq, cseq, _ = _forward_call(name, reverse, False, u, W, extra, h0, c0, lengths)
    return hseq, cseq


def _layer_fwd(name, reverse, u, W, extra, h0, c0, lengths):
    hseq, cseq, acts = _forward_call(name, reverse, name != "vanilla", u, W, extra, h0, c0, lengths)
    return (hseq, cseq), (W, extra, h0, c0, lengths, hseq, cseq, acts)


def _previous_h(hseq, h0, reverse):
    """``h_{t-1}`` of every step in the loop's order: ``h0`` then ``hseq`` shifted by one step."""
    if reverse:
        return jnp.concatenate([hseq[1:], h0[None]])
    return jnp.concatenate([h0[None], hseq[:-1]])


def _layer_bwd(name, reverse, res, cts):
    W, extra, h0, c0, lengths, hseq, cseq, acts = res
    dhseq, dcseq = cts
    T, N, H = hseq.shape
    GH = W.shape[1]
    out = (_f32((T, N, GH)), _f32((T, N, GH) if name == "gru" else (0,)), _f32((N, H)), _f32(c0.shape))
    call = jax.ffi.ffi_call(_BACKWARD, out, vmap_method="sequential")
    du, dr, dh0, dc0 = call(
        W, acts, hseq, h0, cseq, c0, dhseq, dcseq, lengths, cell=np.int64(_CELL_CODES[name]), reverse=bool(reverse)
    )
    dr = dr if name == "gru" else du
    # the weight gradients: one large matmul each
    dW = jnp.einsum("tnh,tng->hg", _previous_h(hseq, h0, reverse), dr)
    dextra = jnp.sum(dr[:, :, 2 * H :], axis=(0, 1)) if name == "gru" else jnp.zeros_like(extra)
    return du, dW, dextra, dh0, dc0, None


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
    W = _recurrent_weight(name, params)
    H = W.shape[0]
    if carry_N is None:
        carry_N = jax.tree.map(lambda z: jnp.zeros((N, *z.shape), z.dtype), cell.init_carry(params))
    u = jax.vmap(jax.vmap(lambda x: cell.project(params, x)))(xs_TNI)  # [T, N, G*H]: one large matmul
    h0, c0 = (carry_N.h, carry_N.c) if name == "lstm" else (carry_N, jnp.zeros((0,), jnp.float32))
    extra = params.b_hn if name == "gru" else jnp.zeros((H,), jnp.float32)
    lengths = jnp.full((N,), T, jnp.int32) if lengths_N is None else jnp.asarray(lengths_N, jnp.int32)
    f32 = [_reverse_mode_only(jnp.asarray(a, jnp.float32)) for a in (u, W, extra, h0, c0)]
    hseq, cseq = _layer(name, bool(reverse), *f32, lengths)
    last = 0 if reverse else T - 1
    h_dtype = jnp.result_type(h0)
    if name == "lstm":
        final = LSTMState(hseq[last].astype(h_dtype), cseq[last].astype(jnp.result_type(carry_N.c)))
    else:
        final = hseq[last].astype(h_dtype)
    ys = jax.vmap(jax.vmap(lambda h: cell.readout(params, h)))(hseq.astype(h_dtype))
    if lengths_N is not None:
        mask = jnp.arange(T)[:, None] < lengths[None, :]
        ys = jnp.where(mask.reshape(mask.shape + (1,) * (ys.ndim - 2)), ys, 0)
    return final, ys
