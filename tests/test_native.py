"""The native CPU kernels (rnn_jax.kernels.native) against the scan: values and gradients with respect to
params, initial carry and inputs, with and without lengths, both directions, under jit and eagerly; forward
mode refused; vmap; bfloat16; and the fallback when the native part is unavailable."""

import dataclasses
import os
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax
from rnn_jax.cells import Cell, gru_cell, gru_init, lstm_cell, lstm_init, vanilla_cell, vanilla_init
from rnn_jax.errors import UserError
from rnn_jax.kernels import native

CELL = {"vanilla": vanilla_cell, "lstm": lstm_cell, "gru": gru_cell}
needs_native = pytest.mark.skipif(native.available() is not None, reason=f"native kernels: {native.available()}")


def _params(name, key, I, H, dtype=jnp.float32):
    """Params with nonzero biases everywhere (the GRU's b_hn too), so every gradient path is exercised."""
    k_init, k_bias = jax.random.split(key)
    if name == "vanilla":
        p = vanilla_init(k_init, I, H, 6, dtype)
    else:
        p = {"lstm": lstm_init, "gru": gru_init}[name](k_init, I, H, dtype)
    return jax.tree.map(lambda a: a if a.ndim > 1 else a + 0.1 * jax.random.normal(k_bias, a.shape, dtype), p)


def _problem(name, key, N, T, I, H, dtype=jnp.float32):
    """Params, a random initial carry ``[N, ...]`` and time-major inputs ``[T, N, I]``."""
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = _params(name, k_p, I, H, dtype)
    one = CELL[name].init_carry(params)
    keys = jax.random.split(k_c, len(jax.tree.leaves(one)))
    leaves = [0.5 * jax.random.normal(k, (N, *z.shape), dtype) for k, z in zip(keys, jax.tree.leaves(one))]
    return params, jax.tree.unflatten(jax.tree.structure(one), leaves), jax.random.normal(k_x, (T, N, I), dtype)


def _loss(impl, name, lengths, reverse, params, carry, xs):
    """A loss that reads every output and the final carry nonlinearly."""
    if impl == "native":
        final, ys = native.run_native(CELL[name], params, carry, xs, lengths, reverse=reverse)
    else:
        final, ys = rnn_jax.run(
            CELL[name], params, carry, xs, lengths=lengths, reverse=reverse, time_major=True, impl="scan"
        )
    ys = ys.astype(jnp.float32)
    total = jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(jnp.cos(c.astype(jnp.float32))) for c in jax.tree.leaves(final))
    return total, (final, ys)


def _value_and_grads(impl, name, lengths=None, reverse=False, jit=True):
    f = jax.value_and_grad(partial(_loss, impl, name, lengths, reverse), argnums=(0, 1, 2), has_aux=True)
    return jax.jit(f) if jit else f


def _assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    """Elementwise ``rtol``, and ``atol`` relative to each array's largest entry: a weight gradient sums many
    products, so its small entries carry the rounding of its large ones (summed in another order here)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w, np.float32)
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=rtol, atol=atol * scale)


# (N, T, I, H, lengths, reverse, threads): odd sizes; H = 37 spans blocks of 32 units (AVX-512; 16 on AVX2)
# with a tail, N = 13 two or three row blocks; threads=2 runs the two-thread path (the size alone would pick
# one thread).
CASES = {
    "forward": (3, 7, 4, 5, None, False, None),
    "reverse": (3, 7, 4, 5, None, True, None),
    "lengths": (3, 7, 4, 5, [7, 3, 0], False, None),
    "reverse_lengths": (3, 7, 4, 5, [7, 3, 0], True, None),
    "blocks_two_threads": (13, 5, 6, 37, [5, 1, 0, 4, 5, 2, 3, 5, 5, 1, 4, 2, 3], True, "2"),
}


@needs_native
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", list(CELL))
def test_native_equals_scan_values_and_gradients(name, case, key, monkeypatch):
    N, T, I, H, lengths, reverse, threads = CASES[case]
    if threads is not None:
        monkeypatch.setenv("RNN_JAX_NATIVE_THREADS", threads)
    params, carry, xs = _problem(name, key, N, T, I, H)
    lengths = None if lengths is None else jnp.asarray(lengths)
    got = _value_and_grads("native", name, lengths, reverse)(params, carry, xs)
    want = _value_and_grads("scan", name, lengths, reverse)(params, carry, xs)
    _assert_trees_close(got, want)
    if lengths is not None:  # past the end: zero outputs
        mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
        assert np.all(np.asarray(got[0][1][1])[~mask] == 0)


@needs_native
@pytest.mark.parametrize("name", list(CELL))
def test_a_projection_of_its_own_runs_unfused(name, key):
    """A cell whose project is not the built-in one (here the same math, another function): XLA projects the
    input and the call adds it (the path an embedding as project takes); values and gradients as the scan."""
    own = dataclasses.replace(CELL[name], project=lambda p, x: x @ (p.W_xh if name == "vanilla" else p.W_x)
                              + (p.b_h if name == "vanilla" else p.b))  # fmt: skip
    assert native._input_weight_and_bias(name, own, _params(name, key, 4, 5)) is None
    params, carry, xs = _problem(name, key, 3, 7, 4, 5)
    lengths = jnp.asarray([7, 3, 0])

    def loss(impl, params, carry, xs):
        if impl == "native":
            final, ys = native.run_native(own, params, carry, xs, lengths)
        else:
            final, ys = rnn_jax.run(own, params, carry, xs, lengths=lengths, time_major=True, impl="scan")
        return jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final))

    grads = {impl: jax.jit(jax.value_and_grad(partial(loss, impl), argnums=(0, 1, 2))) for impl in ("native", "scan")}
    _assert_trees_close(grads["native"](params, carry, xs), grads["scan"](params, carry, xs))


BOTH_DIRECTIONS = """
import jax, jax.numpy as jnp, numpy as np, rnn_jax
params = (rnn_jax.lstm_init(jax.random.key(0), 8, 40), rnn_jax.lstm_init(jax.random.key(1), 8, 40))
xs = jax.random.normal(jax.random.key(2), (16, 9, 8))

def loss(params, impl):
    _, ys = rnn_jax.bidirectional(rnn_jax.lstm_cell, params, None, xs, impl=impl)
    return jnp.sum(ys**2)

grads = {impl: jax.jit(jax.grad(loss), static_argnums=1)(params, impl) for impl in ("native", "scan")}
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads["native"], grads["scan"])
print("ok")
"""


@needs_native
def test_two_calls_at_once_finish():
    """A bidirectional layer, two threads forced: XLA may run the two directions' calls at once on its two pool
    threads, each giving a helper task to that pool. A call that waited for its helper to leave could wait
    forever (the G2P recipe hung once, at step 10-300 of 300, not reproduced at will); the calls now wait for
    their items only. In a process of its own, under a timeout; values as the scan."""
    env = dict(os.environ, RNN_JAX_NATIVE_THREADS="2", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run([sys.executable, "-c", BOTH_DIRECTIONS], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@needs_native
@pytest.mark.slow  # a second build of the library, in a fresh process
@pytest.mark.skipif("avx512f" not in native._cpu_flags(), reason="this CPU runs the AVX2 build already")
def test_native_avx2_build_on_an_avx512_cpu():
    """The AVX2 build (8-lane vectors, 6 x 16 microkernel) against the scan, on a CPU that would get the
    AVX-512 one: in a fresh process, since the FFI targets are registered once per process."""
    selected = "equals_scan and (blocks_two_threads or reverse_lengths)"
    env = dict(os.environ, RNN_JAX_NATIVE_AVX512="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__, "-k", selected]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout, done.stdout[-1000:]


@needs_native
@pytest.mark.parametrize("name", list(CELL))
def test_native_single_step_eager(name, key):
    """T = 1, not jitted, reverse with a zero length: that row's carry and gradient pass straight through."""
    params, carry, xs = _problem(name, key, 3, 1, 4, 5)
    lengths = jnp.array([1, 0, 1])
    got = _value_and_grads("native", name, lengths, True, jit=False)(params, carry, xs)
    want = _value_and_grads("scan", name, lengths, True, jit=False)(params, carry, xs)
    _assert_trees_close(got, want)


@needs_native
def test_native_zero_initial_carry_and_readout(key):
    """``carry_N=None`` starts from zeros; the vanilla cell's readout W_hy runs after the kernel."""
    params, _, xs = _problem("vanilla", key, 3, 7, 4, 5)
    final, ys = native.run_native(vanilla_cell, params, None, xs)
    want_final, want_ys = rnn_jax.run(vanilla_cell, params, None, xs, time_major=True, impl="scan")
    assert ys.shape == (7, 3, 6)
    _assert_trees_close((final, ys), (want_final, want_ys))


@needs_native
@pytest.mark.parametrize("name", list(CELL))
def test_run_impl_native_batch_major_with_two_batch_dims(name, key):
    """Through ``run(impl="native")``, as users call it: batch-major ``[2, 3, T, I]`` with lengths ``[2, 3]``;
    values and gradients equal the scan's, and padded steps' outputs are zero as ``run`` promises."""
    params, _, xs_TNI = _problem(name, key, 6, 7, 4, 5)
    xs = jnp.moveaxis(xs_TNI, 0, 1).reshape(2, 3, 7, 4)
    lengths = jnp.array([[7, 3, 0], [1, 5, 7]])

    def loss(impl, params, xs):
        final, ys = rnn_jax.run(CELL[name], params, None, xs, lengths=lengths, impl=impl)
        return jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(jnp.cos(c)) for c in jax.tree.leaves(final)), ys

    (got_loss, got_ys), got_grads = jax.jit(jax.value_and_grad(partial(loss, "native"), (0, 1), has_aux=True))(
        params, xs
    )
    (want_loss, want_ys), want_grads = jax.value_and_grad(partial(loss, "scan"), (0, 1), has_aux=True)(params, xs)
    assert got_ys.shape == (2, 3, 7, 6 if name == "vanilla" else 5)
    assert not np.any(np.asarray(got_ys)[0, 1, 3:])
    _assert_trees_close((got_loss, got_ys, got_grads), (want_loss, want_ys, want_grads))


@needs_native
@pytest.mark.parametrize("jit", [False, True])
def test_native_forward_mode_raises_naming_scan(jit, key):
    params, carry, xs = _problem("gru", key, 3, 2, 4, 5)

    def ys(xs):
        return native.run_native(gru_cell, params, carry, xs)[1]

    jvp = jax.jit(partial(jax.jvp, ys)) if jit else partial(jax.jvp, ys)
    with pytest.raises(UserError, match='impl="scan"'):
        jax.block_until_ready(jvp((xs,), (xs,)))


@needs_native
def test_native_vmap_values_and_gradients(key):
    """vmap over a leading axis of inputs and initial carries (one native call per element)."""
    params, carry, xs = _problem("lstm", key, 3, 5, 4, 5)
    xs_BTNI = jnp.stack([xs, -xs])
    carry_B = jax.tree.map(lambda c: jnp.stack([c, 2 * c]), carry)

    def batched(impl):
        f = partial(_loss, impl, "lstm", jnp.array([5, 2, 4]), False)
        return jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True), in_axes=(None, 0, 0)))

    _assert_trees_close(batched("native")(params, carry_B, xs_BTNI), batched("scan")(params, carry_B, xs_BTNI))


@needs_native
def test_native_bfloat16_computes_in_float32(key):
    """bf16 params and inputs: float32 inside, the carry back in bf16; close to the float32 scan."""
    params, carry, xs = _problem("lstm", key, 3, 7, 4, 5)
    to_bf16 = partial(jax.tree.map, lambda a: a.astype(jnp.bfloat16))
    (_, (final, ys)), grads = _value_and_grads("native", "lstm")(*to_bf16((params, carry, xs)))
    assert final.h.dtype == jnp.bfloat16 and final.c.dtype == jnp.bfloat16
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
    (_, (want_final, want_ys)), want_grads = _value_and_grads("scan", "lstm")(params, carry, xs)
    _assert_trees_close((final, ys), (want_final, want_ys), rtol=0, atol=3e-2)
    _assert_trees_close(grads, want_grads, rtol=5e-2, atol=1e-1)


def test_unsupported_reasons(key):
    params, carry, xs = _problem("lstm", key, 3, 2, 4, 5)
    assert native.unsupported_reason(lstm_cell, params, xs) is None
    other = Cell("mine", lstm_cell.project, lambda p, c, u: (c, c), lstm_cell.readout, lstm_cell.init_carry,
                 lstm_cell.input_size)  # fmt: skip
    assert "built-in vanilla, LSTM and GRU" in native.unsupported_reason(other, params, xs)
    assert "remat" in native.unsupported_reason(lstm_cell, params, xs, remat="full")
    assert "return_carries" in native.unsupported_reason(lstm_cell, params, xs, return_carries=True)
    assert "T=0" in native.unsupported_reason(lstm_cell, params, xs[:0])
    with jax.enable_x64(True):
        params64, carry64, xs64 = jax.tree.map(lambda a: np.asarray(a, np.float64), (params, carry, xs))
        assert "float64" in native.unsupported_reason(lstm_cell, params64, xs64)
        # impl="auto" therefore keeps float64 exact: it falls through to the scan.
        plan = rnn_jax.auto_plan(lstm_cell, params64, carry64, xs64, platform="cpu")
        assert plan.impl == "scan"


def test_auto_picks_native_on_cpu(key):
    """The measured order (docs/bench.md): the native kernels, then the vanilla custom_jvp path, then the scan."""
    for name in CELL:
        params, carry, xs = _problem(name, key, 3, 2, 4, 5)
        fallback = "custom_jvp" if name == "vanilla" else "scan"
        want = "native" if native.available() is None else fallback
        assert rnn_jax.auto_plan(CELL[name], params, carry, xs, platform="cpu").impl == want
        assert rnn_jax.auto_plan(CELL[name], params, carry, xs, platform="cpu", remat="full").impl == "scan"


@pytest.fixture
def reload_native():
    """Forget the loaded library before and after the test, so the test's environment decides."""
    native._load.cache_clear()
    yield
    native._load.cache_clear()


@pytest.mark.usefixtures("reload_native")
def test_native_unavailable_gives_a_reason_and_one_clear_error(key, monkeypatch):
    monkeypatch.setenv("RNN_JAX_NATIVE", "0")
    assert native.available() == "turned off by RNN_JAX_NATIVE=0"
    params, carry, xs = _problem("lstm", key, 3, 2, 4, 5)
    with pytest.raises(UserError, match=r'^impl="native" is not available here: turned off .*; use impl="scan"$'):
        native.run_native(lstm_cell, params, carry, xs)


@pytest.mark.usefixtures("reload_native")
def test_native_without_a_compiler_gives_a_reason(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda _: None)
    assert native.available() == "no C++ compiler found (install g++ or set $CXX)"


@pytest.mark.usefixtures("reload_native")
def test_native_failed_build_gives_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that prints nothing and fails
    reason = native.available()
    assert reason.startswith("compiling rnn_native.cc failed") and "\n" not in reason
    assert not any(tmp_path.rglob("*.so*"))  # no half-written library left behind
