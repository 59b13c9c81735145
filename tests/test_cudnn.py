"""cuDNN's LSTM (``rnn_jax.kernels.cudnn``, ``impl="cudnn"``): what can be checked without a GPU, and the rest
(marked ``gpu``) on one.

Without a GPU, jax.experimental.rnn cannot even be traced (its abstract evaluation asks cuDNN for the size of
its reserve space). So on CPU: the refusals; the weight packing, read back by jax.experimental.rnn's own
``unpack_lstm_weights`` and run by torch's ``nn.LSTM`` (cuDNN's layout); the whole conversion (layout,
lengths, reverse, length-0 rows) with ``jax.experimental.rnn.lstm_ref`` (its pure-JAX reference of the cuDNN
call) in place of the cuDNN call, values and gradients against ``impl="scan"``; and the lowering for ``cuda``
of the jitted forward+backward with cuDNN's sizes and descriptor stood in. On a GPU: the real thing.
"""

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn as jax_rnn

import rnn_jax
from rnn_jax.cells import LSTMState, gru_cell, gru_init, lstm_cell, lstm_init
from rnn_jax.kernels import cudnn

N, T, I, H = 3, 7, 4, 5
LENGTHS = (7, 0, 3)  # a full row, an empty one, a short one


def _problem(key, n=N, t=T, i=I, h=H):
    k_p, k_b, k_x, k_h, k_c = jax.random.split(key, 5)
    params = lstm_init(k_p, i, h)
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k_b, params.b.shape))  # every gate's bias counts
    xs_TNI = jax.random.normal(k_x, (t, n, i))
    carry_N = LSTMState(jax.random.normal(k_h, (n, h)), jax.random.normal(k_c, (n, h)))
    return params, carry_N, xs_TNI


def lstm_via_reference(x_NTI, h_1NH, c_1NH, weights, seq_lengths_N, input_size, hidden_size):
    """jax.experimental.rnn.lstm's signature, computed by its pure-JAX reference ``lstm_ref``."""
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(weights, input_size, hidden_size, 1, False)
    weights = (W_ih, W_hh, b_ih, b_hh)
    return jax_rnn.lstm_ref(x_NTI, h_1NH, c_1NH, *weights, seq_lengths_N, input_size, hidden_size, 1, 0.0, False)


def _loss(layer, cell, lengths, reverse):
    """A scalar that reads every output and both parts of the final carry, with distinct weights."""

    def loss(params, carry_N, xs_TNI):
        final, ys = layer(cell, params, carry_N, xs_TNI, lengths, reverse)
        w_ys = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(w_ys * ys) + jnp.sum(jnp.sin(final.h)) + jnp.sum(final.c**2), (final, ys)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _scan(cell, params, carry_N, xs_TNI, lengths, reverse):
    return rnn_jax.run(cell, params, carry_N, xs_TNI, lengths=lengths, reverse=reverse, time_major=True, impl="scan")


def _via_reference(cell, params, carry_N, xs_TNI, lengths, reverse):
    return cudnn.run_lstm_layer(lstm_via_reference, cell, params, carry_N, xs_TNI, lengths, reverse=reverse)


def _assert_trees_close(got, want, rtol=1e-5, atol=1e-6):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# Refusals (CPU)
# ---------------------------------------------------------------------------------------------------


def test_available_names_the_missing_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("this process has a GPU (test_available_on_gpu covers it)")
    assert cudnn.available() == f"needs a GPU (cuDNN); this process runs on {jax.default_backend()}"


def test_unsupported_reasons(key):
    params, _, xs = _problem(key)
    reason = functools.partial(cudnn.unsupported_reason, lstm_cell, params, xs)
    assert "built-in LSTM" in cudnn.unsupported_reason(gru_cell, gru_init(key, I, H), xs)
    other_projection = dataclasses.replace(lstm_cell, project=lambda p, x: x @ p.W_x)
    assert "input projection" in cudnn.unsupported_reason(other_projection, params, xs)
    assert "remat=True" in reason(remat=True)
    assert "return_carries" in reason(return_carries=True)
    bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
    assert "bfloat16" in cudnn.unsupported_reason(lstm_cell, bf16, xs)
    assert "xs of dtype bfloat16" in reason.func(lstm_cell, params, xs.astype(jnp.bfloat16))
    with jax.default_matmul_precision("bfloat16"):
        assert "jax_default_matmul_precision='bfloat16'" in reason()
    # lengths and reverse are supported: what is left is the platform (None on a CUDA GPU)
    assert reason(lengths=jnp.array(LENGTHS), reverse=True) == cudnn.available()


def test_run_cudnn_refuses_other_cells(key):
    with pytest.raises(ValueError, match="built-in LSTM"):
        cudnn.run_cudnn(gru_cell, gru_init(key, I, H), None, jnp.zeros((T, N, I)))


# ---------------------------------------------------------------------------------------------------
# The weight layout (CPU): jax.experimental.rnn reads it back; torch's nn.LSTM (cuDNN's layout) runs it
# ---------------------------------------------------------------------------------------------------


def test_packed_weights_unpack_exactly(key):
    params, _, _ = _problem(key)
    packed = cudnn.pack_lstm_weights(params)
    assert packed.shape == (jax_rnn.get_num_params_in_lstm(I, H, 1, False),)
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(packed, I, H, 1, False)
    np.testing.assert_array_equal(W_ih[0], params.W_x.T)
    np.testing.assert_array_equal(W_hh[0], params.W_h.T)
    np.testing.assert_array_equal(b_ih[0], params.b)
    np.testing.assert_array_equal(b_hh[0], np.zeros(4 * H, np.float32))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_packed_weights_mean_the_same_lstm_to_torch(key):
    """torch's nn.LSTM stores cuDNN's layout (W_ih [4H, I] in gate order i, f, g, o; two biases): loaded with
    the unpacked weights it computes our scan's outputs and final carry."""
    import torch

    params, carry_N, xs_TNI = _problem(key)
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(cudnn.pack_lstm_weights(params), I, H, 1, False)
    lstm = torch.nn.LSTM(I, H)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", W_ih), ("weight_hh_l0", W_hh), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(lstm, name).copy_(torch.from_numpy(np.array(value[0])))
        h0, c0 = (torch.from_numpy(np.array(a))[None] for a in carry_N)
        ys, (h_n, c_n) = lstm(torch.from_numpy(np.array(xs_TNI)), (h0, c0))
    final, ys_want = _scan(lstm_cell, params, carry_N, xs_TNI, None, False)
    _assert_trees_close((ys.numpy(), h_n[0].numpy(), c_n[0].numpy()), (ys_want, final.h, final.c))


# ---------------------------------------------------------------------------------------------------
# The conversion around the cuDNN call (CPU): jax.experimental.rnn.lstm_ref in its place
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_conversion_equals_scan(key, lengths, reverse):
    """Values and gradients (params, initial carry, inputs) of the conversion with lstm_ref equal the scan's."""
    params, carry_N, xs_TNI = _problem(key)
    lengths = None if lengths is None else jnp.array(lengths)
    (loss, aux), grads = _loss(_via_reference, lstm_cell, lengths, reverse)(params, carry_N, xs_TNI)
    (loss_want, aux_want), grads_want = _loss(_scan, lstm_cell, lengths, reverse)(params, carry_N, xs_TNI)
    _assert_trees_close((loss, aux, grads), (loss_want, aux_want, grads_want))
    if lengths is not None:  # the empty row: its initial carry, zero outputs, its carry's gradient passes through
        np.testing.assert_array_equal(aux[0].h[1], carry_N.h[1])
        np.testing.assert_array_equal(aux[1][:, 1], 0.0)


def test_conversion_zero_carry_t1_and_an_output_head(key):
    """``carry=None`` (zeros), T=1, and an output head that maps 0 to nonzero: masked after the head."""
    params, _, xs_TNI = _problem(key, t=1)
    head = dataclasses.replace(lstm_cell, readout=lambda p, h: 2.0 * h + 1.0)
    lengths = jnp.array((1, 0, 1))
    got = _via_reference(head, params, None, xs_TNI, lengths, True)
    want = _scan(head, params, None, xs_TNI, lengths, True)
    _assert_trees_close(got, want)
    np.testing.assert_array_equal(got[1][0, 1], 0.0)


def test_flip_within_lengths_is_its_own_inverse():
    a_NT = jnp.arange(3 * 5).reshape(3, 5)
    lengths = jnp.array((5, 0, 2))
    flipped = cudnn._flip_within_lengths(a_NT, lengths)
    np.testing.assert_array_equal(flipped, [[4, 3, 2, 1, 0], [5, 6, 7, 8, 9], [11, 10, 12, 13, 14]])
    np.testing.assert_array_equal(cudnn._flip_within_lengths(flipped, lengths), a_NT)


# ---------------------------------------------------------------------------------------------------
# Lowering for cuda from CPU, with cuDNN's sizes and descriptor stood in
# ---------------------------------------------------------------------------------------------------


class _StandInRnnLib:
    """What jaxlib's CUDA plugin gives the cuDNN RNN lowering: an opaque descriptor (here a placeholder)."""

    @staticmethod
    def build_rnn_descriptor(*sizes):
        return b"stand-in descriptor"


@pytest.fixture
def cuda_rnn_lowering_stood_in(monkeypatch):
    """jax.experimental.rnn's cuda lowering rules with a stand-in descriptor and workspace sizes.

    Without jaxlib's CUDA plugin the real ones do not exist: the reserve-space size that even tracing needs,
    and the descriptor, come from cuDNN on a GPU. The rules themselves are jaxlib's own
    (``jaxlib.gpu_rnn._rnn_fwd_lowering`` / ``_rnn_bwd_lowering``), so what lowers is the real custom call.
    """
    from jax._src.interpreters import mlir
    from jaxlib import gpu_rnn

    monkeypatch.setattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes", lambda *a: (256, 1024), raising=False)
    rules = mlir._platform_specific_lowerings["cuda"]
    for prim, rule in ((jax_rnn.rnn_fwd_p, gpu_rnn._rnn_fwd_lowering), (jax_rnn.rnn_bwd_p, gpu_rnn._rnn_bwd_lowering)):
        monkeypatch.setitem(rules, prim, mlir.LoweringRuleEntry(functools.partial(rule, _StandInRnnLib, "cu"), True))


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU the real lowering runs (marked gpu tests)")
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_forward_backward_lowers_to_the_cudnn_calls(key, cuda_rnn_lowering_stood_in, lengths):
    params, carry_N, xs_TNI = _problem(key)
    args = (params, carry_N, xs_TNI)
    lengths = None if lengths is None else jnp.array(lengths)
    fn = _loss(lambda *a: cudnn.run_cudnn(*a[:-1], reverse=a[-1]), lstm_cell, lengths, True)
    text = fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "stablehlo.custom_call" in line]
    assert [c.split("@")[1].split("(")[0] for c in calls] == ["cudnn_rnn_ffi", "cudnn_rnn_bwd_ffi"]
    n_weights = 4 * H * (I + H + 2)
    # batch-major input, [1, N, H] carries, the packed weights, int32 lengths, in that order
    carry = f"tensor<1x{N}x{H}xf32>"
    operands = f"(tensor<{N}x{T}x{I}xf32>, {carry}, {carry}, tensor<{n_weights}xf32>, tensor<{N}xi32>)"
    assert operands in calls[0]


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="on a GPU the real lowering runs (marked gpu tests)")
def test_forward_mode_and_vmap_are_refused_by_jax(key, cuda_rnn_lowering_stood_in):
    """jax.experimental.rnn.lstm is a custom_vjp without a batching rule: jax.jvp fails where it is lowered,
    jax.vmap where it is traced (run flattens every batch dimension into N, so run itself never vmaps it)."""
    params, _, xs_TNI = _problem(key)

    def ys(xs):
        return cudnn.run_cudnn(lstm_cell, params, None, xs)[1]

    traced = jax.jit(lambda x: jax.jvp(ys, (x,), (x,))).trace(xs_TNI)
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        traced.lower(lowering_platforms=("cuda",))
    with pytest.raises(NotImplementedError, match="Batching rule for 'rnn_fwd'"):
        jax.jit(jax.vmap(ys)).trace(jnp.stack([xs_TNI, xs_TNI]))


# ---------------------------------------------------------------------------------------------------
# On a real GPU (experiments/device_check.sh runs these; skipped elsewhere)
# ---------------------------------------------------------------------------------------------------

on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run experiments/device_check.sh)")


@pytest.mark.gpu
@on_gpu
def test_available_on_gpu(key):
    params, _, xs = _problem(key)
    assert cudnn.available() is None
    assert cudnn.unsupported_reason(lstm_cell, params, xs, lengths=jnp.array(LENGTHS), reverse=True) is None


GPU_CASES = {  # sizes (N, T, I, H), lengths, reverse: every direction and masking at odd sizes, one larger layer
    "full-forward": ((N, T, I, H), None, False),
    "full-reverse": ((N, T, I, H), None, True),
    "lengths-forward": ((N, T, I, H), "ragged", False),
    "lengths-reverse": ((N, T, I, H), "ragged", True),
    "larger-lengths-reverse": ((17, 33, 24, 40), "ragged", True),
}


@pytest.mark.gpu
@on_gpu
@pytest.mark.parametrize("case", GPU_CASES)
def test_run_cudnn_equals_scan_on_gpu(key, case):
    """cuDNN itself against the scan, values and gradients, matmuls at the highest precision (no TF32)."""
    (n, t, i, h), lengths, reverse = GPU_CASES[case]
    params, carry_N, xs_TNI = _problem(key, n, t, i, h)
    if lengths is not None:  # 0, T and values between
        lengths = jnp.asarray(np.concatenate([[0, t], np.random.default_rng(0).integers(1, t, n - 2)]), jnp.int32)

    def layer(cell, p, c, x, lens, rev):
        return cudnn.run_cudnn(cell, p, c, x, lens, reverse=rev)

    with jax.default_matmul_precision("highest"):
        got = _loss(layer, lstm_cell, lengths, reverse)(params, carry_N, xs_TNI)
        want = _loss(_scan, lstm_cell, lengths, reverse)(params, carry_N, xs_TNI)
    _assert_trees_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@on_gpu
def test_bench_runs_the_jax_cudnn_peer(tmp_path):
    """``rnn-jax bench --peers jax_cudnn`` times jax.experimental.rnn's LSTM beside ours."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, "-m", "rnn_jax.cli", "bench", "--config", "3,7,4,5", "--cells", "lstm", "--modes", "fwd_bwd"]
    cmd += ["--impls", "scan", "--peers", "jax_cudnn", "--warmup", "1", "--reps", "1", "--rounds", "1"]
    subprocess.run([*cmd, "--json", str(out)], cwd=root, env=dict(os.environ), timeout=300, check=True)
    summaries = [r for r in map(json.loads, out.read_text().splitlines()) if r.get("kind") == "summary"]
    timed = [r for r in summaries if "cudnn" in str(r.get("impl", "")).lower() and r.get("ms") is not None]
    assert timed, f"no jax_cudnn row among {[r.get('impl') for r in summaries]}"


# ---------------------------------------------------------------------------------------------------
# The device check script reports failure (CPU): every step fails when its python cannot run
# ---------------------------------------------------------------------------------------------------


def test_device_check_exits_nonzero_and_lists_failed_steps(tmp_path):
    """A failing step does not stop the next one, and the script's exit status says that one failed."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": "false"}  # `false -m pytest ...` fails at once
    done = subprocess.run(
        ["bash", "experiments/device_check.sh", str(tmp_path)], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    md = (tmp_path / "device_check.md").read_text()
    assert md.count("**step failed (exit 1)**") == 4 and "4 step(s) failed:" in md
    assert "- tests marked gpu" in done.stdout and "- bench float16" in done.stdout
