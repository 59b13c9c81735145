"""The Pallas kernels (rnn_jax.kernels) against the scan: values and gradients in interpret mode on CPU,
lowering for CUDA from CPU at the anchor configurations, and (marked ``gpu``) on a real GPU."""

import importlib.util
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnn_jax
from rnn_jax import kernels
from rnn_jax.apps import charlm
from rnn_jax.cells import LSTMParams, gru_cell, gru_init, lstm_cell, lstm_init, vanilla_cell, vanilla_init
from rnn_jax.data.text import TextBatch
from rnn_jax.errors import UserError
from rnn_jax.kernels.anchors import ANCHORS
from rnn_jax.train import init_state, make_train_step

CELLS = ("vanilla", "lstm", "gru")
TRITON_CALL = "__gpu$xla.gpu.triton"


def _params(name, key, I, H, dtype=jnp.float32):
    k_init, k_bias = jax.random.split(key)
    if name == "vanilla":
        p = vanilla_init(k_init, I, H, 6, dtype)
        return p._replace(b_h=0.1 * jax.random.normal(k_bias, p.b_h.shape, dtype))
    if name == "lstm":
        p = lstm_init(k_init, I, H, dtype)
        return p._replace(b=p.b + 0.1 * jax.random.normal(k_bias, p.b.shape, dtype))
    p = gru_init(k_init, I, H, dtype)  # nonzero biases, so b_hn's gradient path is exercised
    k1, k2 = jax.random.split(k_bias)
    return p._replace(b=0.1 * jax.random.normal(k1, p.b.shape, dtype), b_hn=0.1 * jax.random.normal(k2, (H,), dtype))


CELL = {"vanilla": vanilla_cell, "lstm": lstm_cell, "gru": gru_cell}


def _problem(name, key, B, T, I, H, dtype=jnp.float32):
    """Params, a random initial carry and time-major inputs ``[T, B, I]``."""
    k_p, k_c, k_x = jax.random.split(key, 3)
    params = _params(name, k_p, I, H, dtype)
    one = CELL[name].init_carry(params)
    leaves = jax.random.split(k_c, len(jax.tree.leaves(one)))
    carry = jax.tree.unflatten(
        jax.tree.structure(one),
        [0.5 * jax.random.normal(k, (B, *z.shape), dtype) for k, z in zip(leaves, jax.tree.leaves(one))],
    )
    return params, carry, jax.random.normal(k_x, (T, B, I), dtype)


def _loss_and_grads(impl, name, lengths, reverse):
    """jit(value_and_grad) of a loss reading every output and the final carry, w.r.t. params, carry, xs."""

    def loss(params, carry, xs):
        final, ys = rnn_jax.run(
            CELL[name], params, carry, xs, lengths=lengths, reverse=reverse, time_major=True, impl=impl
        )
        ys = ys.astype(jnp.float32)
        total = jnp.sum(ys * jnp.sin(ys)) + sum(jnp.sum(jnp.cos(c.astype(jnp.float32))) for c in jax.tree.leaves(final))
        return total, (final, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _assert_trees_close(got, want, **tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), **tol)


# (B, T, lengths, reverse): odd sizes, both directions, with and without lengths; B = 3 pads to one kernel
# block of 16 rows, B = 17 spans two (16 + 1).
CASES = {
    "reverse": (3, 7, None, True),
    "two_blocks_lengths": (17, 7, [7, 1, 0, 5, 6, 7, 2, 3, 4, 7, 7, 1, 0, 2, 3, 4, 5], False),
    "reverse_lengths": (3, 7, [7, 3, 0], True),
}
PAIRS = [(name, case) for name in CELLS for case in ("reverse", "two_blocks_lengths")] + [("gru", "reverse_lengths")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "case"), PAIRS)
def test_kernel_equals_scan_values_and_gradients(name, case, key):
    B, T, lengths, reverse = CASES[case]
    params, carry, xs = _problem(name, key, B, T, 4, 5)
    lengths = None if lengths is None else jnp.asarray(lengths)
    assert B % kernels.BLOCK_N != 0  # the batch is padded to the kernel's block
    got = _loss_and_grads("pallas", name, lengths, reverse)(params, carry, xs)
    want = _loss_and_grads("scan", name, lengths, reverse)(params, carry, xs)
    _assert_trees_close(got, want, rtol=1e-5, atol=1e-6)
    if lengths is not None:  # past the end: zero outputs
        ys = got[0][1][1]
        mask = np.arange(T)[:, None] < np.asarray(lengths)[None, :]
        assert np.all(np.asarray(ys)[~mask] == 0)


def test_kernel_single_step_lstm_reverse_lengths(key):
    params, carry, xs = _problem("lstm", key, 3, 1, 4, 5)
    lengths = jnp.array([1, 0, 1])
    got = _loss_and_grads("pallas", "lstm", lengths, True)(params, carry, xs)
    want = _loss_and_grads("scan", "lstm", lengths, True)(params, carry, xs)
    _assert_trees_close(got, want, rtol=1e-5, atol=1e-6)


def test_kernel_run_pallas_interface_equals_run(key):
    """run_pallas takes the flattened time-major layout and returns (final carry, ys after the readout);
    reverse with lengths: the padded steps come first and leave the initial carry alone."""
    params, carry, xs = _problem("vanilla", key, 3, 7, 4, 5)
    final, ys = kernels.run_pallas(vanilla_cell, params, carry, xs, jnp.array([2, 7, 4]), reverse=True)
    want_final, want_ys = rnn_jax.run(
        vanilla_cell, params, carry, xs, lengths=jnp.array([2, 7, 4]), reverse=True, time_major=True, impl="scan"
    )
    assert ys.shape == (7, 3, 6) and final.shape == (3, 5)
    _assert_trees_close((final, ys), (want_final, want_ys), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kernel_bfloat16_is_close_to_float32(key):
    """bf16 weights and inputs, float32 accumulation: close to the float32 scan, outputs stay bf16."""
    params, carry, xs = _problem("lstm", key, 3, 7, 4, 5)
    to_bf16 = partial(jax.tree.map, lambda a: a.astype(jnp.bfloat16))
    (_, (final, ys)), grads = _loss_and_grads("pallas", "lstm", None, False)(*to_bf16((params, carry, xs)))
    assert ys.dtype == jnp.float32 and final.h.dtype == jnp.bfloat16  # the loss casts ys; the carry stays bf16
    (_, (want_final, want_ys)), want_grads = _loss_and_grads("scan", "lstm", None, False)(params, carry, xs)
    _assert_trees_close((final, ys), (want_final, want_ys), rtol=0, atol=3e-2)
    _assert_trees_close(grads, want_grads, rtol=5e-2, atol=1e-1)


@pytest.mark.parametrize("jit", [False, True])
def test_kernel_forward_mode_raises_one_user_error_naming_scan(jit, key):
    """Eagerly and under jit: the refusal itself (no callback failure wrapped around it)."""
    params, carry, xs = _problem("gru", key, 3, 2, 4, 5)

    def ys(xs):
        return rnn_jax.run(gru_cell, params, carry, xs, time_major=True, impl="pallas")[1]

    jvp = jax.jit(partial(jax.jvp, ys)) if jit else partial(jax.jvp, ys)
    with pytest.raises(UserError, match='forward-mode autodiff .* use impl="scan" for forward mode') as err:
        jax.block_until_ready(jvp((xs,), (xs,)))
    assert "callback" not in str(err.value) and "\n" not in str(err.value)


def test_unsupported_reasons(key):
    xs = jnp.zeros((2, 1, 8))
    assert kernels.unsupported_reason(lstm_cell, lstm_init(key, 8, 64), xs) is None
    big = LSTMParams(W_x=jnp.zeros((8, 4 * 256)), W_h=jnp.zeros((256, 4 * 256)), b=jnp.zeros((4 * 256,)))
    reason = kernels.unsupported_reason(lstm_cell, big, xs)
    assert "H=256 does not fit on chip" in reason
    assert "remat" in kernels.unsupported_reason(lstm_cell, lstm_init(key, 8, 8), xs, remat="sqrt")
    assert "return_carries" in kernels.unsupported_reason(gru_cell, gru_init(key, 8, 8), xs, return_carries=True)
    assert "float16" in kernels.unsupported_reason(gru_cell, gru_init(key, 8, 8, jnp.float16), xs)
    assert "built-in" in kernels.unsupported_reason(lambda p, c, x: (c, x), None, xs)
    with pytest.raises(UserError, match="impl='scan'"):
        rnn_jax.run(lstm_cell, big, None, xs, time_major=True, impl="pallas")


def test_padding_rounds_hidden_to_a_power_of_two():
    assert [kernels.padded_hidden(h) for h in (1, 5, 16, 17, 64, 100)] == [16, 16, 16, 32, 64, 128]


# ---------------------------------------------------------------------------------------------------
# Lowering for CUDA from this CPU machine (tracing only: quick at any T)
# ---------------------------------------------------------------------------------------------------


def _lower_for(platform, fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _abstract_problem(name, anchor, dtype):
    params, carry, _ = jax.eval_shape(
        partial(_problem, name, jax.random.key(0), anchor.B, 2, anchor.I, anchor.H, dtype)
    )
    xs = jax.ShapeDtypeStruct((anchor.T, anchor.B, anchor.I), dtype)
    return params, carry, xs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("anchor", ANCHORS, ids=[a.name for a in ANCHORS])
def test_kernels_lower_for_cuda_at_the_anchors(anchor, dtype):
    """Forward and backward lower to Triton kernels where the kernel takes the size; else a reason."""
    reasons = {}
    for name in CELLS:
        params, carry, xs = _abstract_problem(name, anchor, jnp.dtype(dtype))
        reason = reasons[name] = kernels.unsupported_reason(CELL[name], params, xs)
        if reason is not None:
            assert "does not fit on chip" in reason and anchor.H >= 256
            continue

        def loss(params, carry, xs, name=name):
            final, ys = kernels.run_pallas(CELL[name], params, carry, xs, jnp.full((anchor.B,), anchor.T))
            return jnp.mean(ys.astype(jnp.float32) ** 2)

        forward = _lower_for("cuda", partial(kernels.run_pallas, CELL[name]), params, carry, xs)
        backward = _lower_for("cuda", jax.grad(loss, argnums=(0, 1, 2)), params, carry, xs)
        assert forward.count(TRITON_CALL) == 1 and backward.count(TRITON_CALL) == 2, name
    if anchor.name == "tiny_step":  # every cell takes the anchor that the targets are set at
        assert reasons == {name: None for name in CELLS}


def test_kernels_lower_for_cpu_in_interpret_mode(key):
    params, carry, xs = _problem("gru", key, 3, 7, 4, 5)
    text = _lower_for("cpu", partial(kernels.run_pallas, gru_cell), params, carry, xs)
    assert "triton" not in text.lower()


@pytest.mark.parametrize(("cell", "dtype"), [("lstm", "float32"), ("gru", "bfloat16")])
def test_char_lm_train_step_with_pallas_lowers_for_cuda(cell, dtype):
    """The char-LM's own train step (2 layers, carried TBPTT state, impl="pallas") lowers for CUDA with a
    forward and a backward Triton kernel per layer; bfloat16 through the train step's compute dtype."""
    cfg = charlm.CharLMConfig(cell=cell, hidden_size=64, layers=2, embed_size=16, batch_size=8, seq_len=32,
                              impl="pallas")  # fmt: skip
    params = charlm.init_params(jax.random.key(0), cfg, 32)
    optimizer = optax.adam(1e-3)
    state = init_state(params, optimizer, jax.random.key(1), carry=charlm.zero_carries(cfg, params, 8))
    batch = TextBatch(jnp.zeros((8, 32), jnp.int32), jnp.zeros((8, 32), jnp.int32), jnp.zeros((8,), bool))
    compute_dtype = None if dtype == "float32" else jnp.dtype(dtype)
    step = make_train_step(partial(charlm.loss_fn, cfg=cfg), optimizer, compute_dtype=compute_dtype, has_carry=True)
    text = step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count(TRITON_CALL) == 4


def _experiment(name):
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_device_check_compile_reads_the_triton_modules():
    """experiments/device_check_compile.py gets each kernel's Triton IR (a time loop around tl.dot); with the
    triton package installed it also compiles them for sm_90 within the shared memory of one multiprocessor."""
    script = _experiment("device_check_compile")
    modules = script.triton_modules("gru", 5, jnp.dtype(jnp.float32), T=3)
    assert sorted(modules) == ["rnn_gru_backward", "rnn_gru_forward"]
    assert all("tt.dot" in m and "scf.for" in m and "loc(" not in m for m in modules.values())
    if importlib.util.find_spec("triton") is not None:
        report = script.compile_report(modules["rnn_gru_backward"], script.Config())
        assert 0 < report["shared"] <= script.SHARED_LIMIT and report["stack"] == 0


# ---------------------------------------------------------------------------------------------------
# On a real GPU (experiments/device_check.sh runs these; skipped elsewhere)
# ---------------------------------------------------------------------------------------------------

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run experiments/device_check.sh)")


def _relative_errors(got, want):
    """Per leaf: max |got - want| / max |want| (in float32)."""
    return [
        float(np.max(np.abs(np.float32(g) - np.float32(w))) / max(float(np.max(np.abs(np.float32(w)))), 1e-30))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("name", CELLS)
def test_kernel_equals_scan_on_gpu(name, key):
    """The compiled Triton kernels against the scan on the device: float32 equal (matmuls at the highest
    precision); bfloat16 at most twice as far from the float32 scan as the bfloat16 scan is (plus 1%)."""
    B, T, lengths, reverse = CASES["two_blocks_lengths"]
    params, carry, xs = _problem(name, key, B, T, 16, 48)
    lengths = jnp.asarray(lengths)
    to_bf16 = partial(jax.tree.map, lambda a: a.astype(jnp.bfloat16))
    with jax.default_matmul_precision("highest"):
        want = _loss_and_grads("scan", name, lengths, reverse)(params, carry, xs)
        got = _loss_and_grads("pallas", name, lengths, reverse)(params, carry, xs)
        got_bf16 = _loss_and_grads("pallas", name, lengths, reverse)(*to_bf16((params, carry, xs)))
        scan_bf16 = _loss_and_grads("scan", name, lengths, reverse)(*to_bf16((params, carry, xs)))
    _assert_trees_close(got, want, rtol=1e-4, atol=1e-5)
    for err_kernel, err_scan in zip(_relative_errors(got_bf16, want), _relative_errors(scan_bf16, want)):
        assert err_kernel <= 2 * err_scan + 1e-2


# ---------------------------------------------------------------------------------------------------
# The one-call device check, dry run on CPU (so the script cannot rot)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    """DRY_RUN=1: the same steps at a tiny size on CPU; the tables and JSON lines come out, no step fails.
    Its steps time torch beside us: skipped where torch is not installed, except in CI (``.ci/run``)."""
    if os.environ.get("RNN_JAX_REQUIRE_TORCH") != "1":
        pytest.importorskip("torch")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    subprocess.run(["bash", "experiments/device_check.sh", str(tmp_path)], cwd=root, env=env, timeout=900, check=True)
    md = (tmp_path / "device_check.md").read_text()
    assert "step failed" not in md and "| impl" in md
    records = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    impls = {r.get("impl") for r in records if r.get("kind") == "summary"}
    assert {"rnn_jax impl=scan", "rnn_jax impl=pallas"} <= impls
    if importlib.util.find_spec("torch") is not None:
        assert "torch nn.RNN" in impls
    dtypes = {r.get("dtype") for r in records if r.get("kind") == "summary"}
    assert dtypes == {"float32", "bfloat16", "float16"}
