"""The memory benchmark: remat options give the same gradients, and sqrt(T) checkpointing saves memory."""

import json

import jax
import numpy as np
import pytest

from rnn_jax.cells import VanillaParams
from rnn_jax.errors import UserError
from rnn_jax.tools import memory


def test_checkpointed_gradients_equal_plain_ones_in_float64(x64):
    """The in-loop variant (the hoisted one is checked in test_scan.py); T = 37: 6 chunks of 7, the last padded."""
    T, H, V = 37, 5, 3
    # numpy data and Gaussian weights: eager jax.random ops and vanilla_init's QR each cost a compile.
    rng = np.random.default_rng(0)
    params = VanillaParams(*(rng.standard_normal(s) for s in [(V, H), (H, H), (H,), (H, V), (V,)]))
    ids = rng.integers(0, V, (1, T + 1))
    xs, targets = np.eye(V)[ids[:, :-1]], ids[:, 1:]
    grad = jax.jit(jax.value_and_grad(memory.bptt_loss), static_argnames=("remat", "hoist"))
    loss0, g0 = grad(params, xs, targets, remat="none", hoist=False)
    loss, g = grad(params, xs, targets, remat="sqrt", hoist=False)
    np.testing.assert_allclose(loss, loss0, rtol=1e-13)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14), g, g0)


@pytest.mark.slow
def test_sqrt_checkpointing_grows_like_sqrt_T_and_the_measured_peak_agrees():
    """With the projection in the loop, plain BPTT stores O(T H); sqrt stores O(sqrt(T) H) + O(T (I + O))."""
    kw = dict(hoist=False, hidden=64, vocab=2)
    none_small, none_big = (memory.compiled_memory(T, "none", **kw) for T in (2_000, 32_000))
    sqrt_big = memory.compiled_memory(32_000, "sqrt", **kw)
    assert none_big.temp_bytes > 12 * none_small.temp_bytes  # 16x the steps: about 16x the memory
    assert sqrt_big.temp_bytes < none_big.temp_bytes / 8
    # A real run in a fresh process: its peak RSS rises by about what the analysis says.
    measured = memory.measured_memory(32_000, "none", timeout=120, **kw)
    assert 0.5 * none_big.temp_bytes <= measured["measured_bytes"] <= 2 * none_big.compiled_bytes + 32 * memory.MiB
    # The child ran the same problem: its loss is the one computed here.
    loss_here, _ = memory._grad_fn("none", False)(*memory.make_problem(32_000, hidden=64, vocab=2))
    np.testing.assert_allclose(measured["loss"], loss_here, rtol=1e-6)
    assert measured["seconds"] > 0


def test_cli_prints_a_table_and_rejects_bad_input(capsys, tmp_path):
    args = ["--T", "9", "--remat", "sqrt", "--hidden", "3", "--vocab", "2", "--projection", "in-loop"]
    out_json = tmp_path / "rows.json"
    assert memory.cli_main(args + ["--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vanilla RNN H=3, I=O=2, batch 1, float32")
    (row,) = [line for line in out.splitlines() if line.startswith("| 9 |")]
    T, remat, where, temp, total, measured, seconds = (c.strip() for c in row.strip("|").split("|"))
    assert (T, remat, where, measured, seconds) == ("9", "sqrt", "in loop", "-", "-")  # no --measure: no run
    assert 0 <= float(temp) <= float(total)
    (saved,) = json.loads(out_json.read_text())
    assert (saved["T"], saved["remat"], saved["hoist"], saved["measured_bytes"]) == (9, "sqrt", False, None)
    assert 0 < saved["temp_bytes"] <= saved["compiled_bytes"] and float(total) == round(
        saved["compiled_bytes"] / memory.MiB, 1
    )
    with pytest.raises(UserError, match="positive"):
        memory.cli_main(["--T", "0"])
    with pytest.raises(SystemExit):
        memory.cli_main(["--remat", "everything"])
