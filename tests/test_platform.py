"""run's choices follow the platform being lowered for, not the host: lowered for cuda/tpu from this CPU."""

import os
import re

import jax
import jax.numpy as jnp
import optax
import pytest

import rnn_jax as R
from rnn_jax.train import init_state, make_train_step

B, T, I, H = 3, 20, 4, 5  # T=20: unroll 8 leaves a visible [2, 8, B, ...] block of steps
ACCELERATORS = ("cuda", "tpu")


def _lowered(f, *args, platform):
    """The StableHLO text of ``f`` lowered for ``platform``, with op locations (function names)."""
    return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text(debug_info=True)


def _params(name, hidden=H):
    if name == "vanilla":
        return R.vanilla_init(jax.random.key(0), I, hidden, 6)
    return R.lstm_init(jax.random.key(0), I, hidden)


def _grad_of_run(name, hidden=H, impl="auto"):
    xs = jax.random.normal(jax.random.key(1), (B, T, I))

    def loss(params, xs):
        _, ys = R.run(R.CELLS[name], params, None, xs, impl=impl)
        return jnp.sum(jnp.sin(ys))

    return jax.grad(loss), (_params(name, hidden), xs)


def _hoisted(text, features):
    """The input projection of all steps as one dot before the loop: ``[T, B, I] @ [I, G] -> [T, B, G]`` (run lays
    the inputs out time-major before any implementation sees them)."""
    return f"(tensor<{T}x{B}x{I}xf32>, tensor<{I}x{features}xf32>) -> tensor<{T}x{B}x{features}xf32>" in text


def _unrolled_by(text, n):
    """Whether the scan runs ``n`` steps per loop iteration (its inputs blocked as ``[T // n, n, B, ...]``)."""
    return re.search(rf"tensor<{T // n}x{n}x{B}x", text) is not None


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_vanilla_run_gets_the_accelerator_choices(platform):
    f, args = _grad_of_run("vanilla")
    text = _lowered(f, *args, platform=platform)
    assert _hoisted(text, H) and _unrolled_by(text, 8)
    assert "_run_vanilla_fast" not in text and "_run_scan" in text  # the plain scan, not the custom_jvp path
    cpu = _lowered(f, *args, platform="cpu")  # CPU: the native kernels where they build, else the custom_jvp path
    native = R.available_impls("cpu")["native"] is None
    assert ("rnn_jax_native_forward" in cpu) == native and "rnn_jax_native" not in text
    assert ("_run_vanilla_fast" in cpu) != native and "_run_scan" not in cpu
    f_fast, args = _grad_of_run("vanilla", impl="custom_jvp")
    fast = _lowered(f_fast, *args, platform="cpu")  # the custom_jvp path: the weight gradient after the loop
    assert f"(tensor<{T}x{B}x{H}xf32>, tensor<{T}x{B}x{H}xf32>) -> tensor<{H}x{H}xf32>" in fast
    assert "_run_vanilla_fast" in fast and not _hoisted(fast, H) and not _unrolled_by(fast, 8)


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_lstm_run_gets_the_accelerator_choices(platform):
    f, args = _grad_of_run("lstm")
    text = _lowered(f, *args, platform=platform)
    assert _hoisted(text, 4 * H) and _unrolled_by(text, 8)
    cpu = _lowered(f, *args, platform="cpu")  # CPU: the native kernels where they build, else the scan
    native = R.available_impls("cpu")["native"] is None
    assert ("rnn_jax_native_forward" in cpu) == native and "rnn_jax_native" not in text
    f_scan, args = _grad_of_run("lstm", impl="scan")
    scan = _lowered(f_scan, *args, platform="cpu")  # small carry: projection in the step
    assert not _hoisted(scan, 4 * H) and _unrolled_by(scan, 4) and not _unrolled_by(scan, 8)


def test_saved_residuals_policy_only_on_cpu():
    """A large LSTM carry on CPU stores only the gate pre-activations (a jax.checkpoint policy); GPU/TPU do not."""
    f, args = _grad_of_run("lstm", hidden=91, impl="scan")  # B * 91 > CPU_SMALL_STATE
    assert "checkpoint" in _lowered(f, *args, platform="cpu")
    for platform in ACCELERATORS:
        assert "checkpoint" not in _lowered(f, *args, platform=platform)


def test_train_step_lowered_for_accelerators_gets_their_choices():
    params = _params("vanilla")
    batch = jax.random.normal(jax.random.key(2), (B, T, I))

    def loss_fn(params, xs, key):
        del key
        _, ys = R.run(R.vanilla_cell, params, None, xs)
        loss = jnp.mean(ys**2)
        return loss, {"loss": loss}

    step = make_train_step(loss_fn, optax.sgd(0.1))
    state = init_state(params, optax.sgd(0.1), jax.random.key(3))
    lowered = {p: step.trace(state, batch).lower(lowering_platforms=(p,)).as_text(debug_info=True)
               for p in ("cpu", *ACCELERATORS)}  # fmt: skip
    for platform in ACCELERATORS:
        text = lowered[platform]
        assert _hoisted(text, H) and _unrolled_by(text, 8) and "_run_vanilla_fast" not in text, platform
    cpu_impl = "rnn_jax_native_forward" if R.available_impls("cpu")["native"] is None else "_run_vanilla_fast"
    assert cpu_impl in lowered["cpu"] and not _unrolled_by(lowered["cpu"], 8)


def test_equal_plans_need_no_platform_switch():
    """Explicit knobs that every platform would follow alike leave no platform_index in the program."""
    params, xs = _params("vanilla"), jnp.ones((B, T, I))
    jaxpr = jax.make_jaxpr(lambda p, x: R.run(R.lstm_cell, p, None, x, impl="scan", hoist=True, unroll=2))
    assert "platform_index" not in str(jaxpr(_params("lstm"), xs))
    assert "platform_index" in str(jax.make_jaxpr(lambda p, x: R.run(R.vanilla_cell, p, None, x))(params, xs))


def test_the_suite_runs_on_cpu_unless_asked_for_the_gpu():
    """tests/conftest.py: CPU by default; ``-m gpu`` leaves JAX's default (the GPU where there is one); an
    explicit ``RNN_JAX_TEST_PLATFORM`` or ``JAX_PLATFORMS`` wins."""
    from tests.conftest import platform_for

    for expr in ("", "not slow", "not gpu", "gpu or not gpu", "slow"):
        assert platform_for(expr, {}) == "cpu", expr
    for expr in ("gpu", "gpu and not slow", "(gpu)"):
        assert platform_for(expr, {}) is None, expr
    assert platform_for("gpu", {"JAX_PLATFORMS": "cpu"}) == "cpu"
    assert platform_for("", {"RNN_JAX_TEST_PLATFORM": "cuda", "JAX_PLATFORMS": "cpu"}) == "cuda"
    if os.environ["JAX_PLATFORMS"] == "cpu":  # set by conftest before collection: it reached JAX
        assert jax.default_backend() == "cpu"
