"""Smoke test of the benchmark harness: it runs, and its records, JSON lines and figure are well formed."""

import importlib.util
import io
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import Cell
from rnn_jax.cells import identity_readout
from rnn_jax.cli import main as cli
from rnn_jax.errors import UserError
from rnn_jax.tools import bench
from rnn_jax.tools.bench import cli as bench_cli
from rnn_jax.tools.bench import impls, peers, timing

FIELDS = {"impl", "cell", "mode", "B", "T", "I", "H", "dtype", "ms", "compile_s", "device"}


def _json_lines(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {kind: [r for r in lines if r["kind"] == kind] for kind in ("header", "raw", "summary")}


@pytest.mark.slow
def test_cli_layers_writes_json_lines_and_png(tmp_path, capsys):
    out, png = tmp_path / "bench.jsonl", tmp_path / "bench.png"
    args = ["bench", "--config", "2,3,4,5", "--config", "2,6,4,5", "--cells", "vanilla", "--impls", "auto"]
    args += ["--unrolls", "2", "--modes", "fwd_bwd", "--warmup", "1", "--reps", "1", "--rounds", "2"]
    assert cli(args + ["--json", str(out), "--png", str(png)]) == 0
    lines = _json_lines(out)
    records = lines["raw"]
    assert len(records) == 2 * 2 and len(lines["summary"]) == 2 * 2  # shapes x impls, one run
    for r in records:
        assert FIELDS <= set(r) and r["mode"] == "fwd_bwd" and r["dtype"] == "float32" and r["run"] == 0
        assert r["ms"] > 0 and r["reps"] == 2 and r["compile_s"] > 0 and r["device"].startswith("cpu")
        assert len(r["wall_ms_all"]) == len(r["cpu_ms_all"]) == 2 and min(r["wall_ms_all"]) <= r["ms"]
        assert r["us_per_step"] == pytest.approx(r["ms"] * 1e3 / r["T"], rel=1e-3)
        assert r["gflops"] > 0 and r["threads"] >= 1
    assert {r["impl"] for r in records} == {"rnn_jax", "rnn_jax unroll=2"}
    (header,) = lines["header"]
    assert header["command"] == "rnn-jax " + " ".join(args[:-1]) + " " + args[-1] + f" --json {out} --png {png}"
    assert header["start"]["time"].endswith("UTC") and len(header["end"]["load"]) == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "| rnn_jax unroll=2 " in table and "- machine: cpu" in table
    assert "vs torch" not in table and "vs flax" not in table and "- ratios" not in table  # no peer was asked for
    assert "- command: `rnn-jax bench --config 2,3,4,5" in table and "- load average (1, 5, 15 min): " in table


def _synthetic(runs: dict[str, list[float]], cell="lstm", mode="fwd_bwd") -> list[dict]:
    base = dict(cell=cell, mode=mode, B=1, T=2, I=3, H=4, dtype="float32", gflops=None)
    lib = lambda impl: impl.split()[0] if impl.split()[0] in ("torch", "flax") else "jax"  # noqa: E731
    return [
        dict(base, impl=impl, lib=lib(impl), run=k, ms=ms, cpu_ms=ms)
        for impl, times in runs.items()
        for k, ms in enumerate(times)
    ]


def test_ratios_are_paired_by_run_against_the_fastest_peer_cell_with_spread_and_parity():
    records = _synthetic(
        {
            "rnn_jax": [10.0, 11.0, 9.0],
            "flax LSTMCell": [20.0, 12.0, 18.0],
            "flax OptimizedLSTMCell": [15.0, 30.0, 8.0],
            "torch nn.LSTM": [20.0, 22.0, 19.0],
        }
    )
    # Another kind, much faster: it must not count as an LSTM peer.
    records += _synthetic({"rnn_jax": [1.0] * 3, "flax GRUCell": [0.5] * 3, "torch nn.GRU": [4.0] * 3}, cell="gru")
    rows = {(r["cell"], r["impl"]): r for r in bench.summarize(records)}
    ours = rows["lstm", "rnn_jax"]
    assert (ours["ms"], ours["ms_min"], ours["ms_max"], ours["runs"]) == (10.0, 9.0, 11.0, 3)
    # Fastest flax cell per run: 15 (Optimized), 12 (LSTMCell), 8 (Optimized) -> 1.5, 12/11, 8/9.
    flax = bench.Ratio(**{k: ours["vs_flax"][k] for k in bench.Ratio._fields})
    assert flax == pytest.approx(bench.Ratio(12 / 11, 8 / 9, 1.5, 3))
    assert flax.parity and ours["vs_flax"]["parity"] and ours["vs_flax_peer"] == "flax OptimizedLSTMCell"
    assert bench.format_ratio(flax) == "parity 1.09x (0.89-1.50)"
    torch = bench.Ratio(**{k: ours["vs_torch"][k] for k in bench.Ratio._fields})
    assert torch == pytest.approx(bench.Ratio(2.0, 2.0, 19 / 9, 3)) and not torch.parity
    assert bench.format_ratio(torch) == "2.00x (2.00-2.11)"
    assert rows["lstm", "flax LSTMCell"]["vs_flax"] is None  # a peer is not compared with its own kind
    assert rows["lstm", "flax LSTMCell"]["vs_torch"]["median"] == pytest.approx(19 / 18)  # 20/20, 22/12, 19/18
    assert rows["gru", "rnn_jax"]["vs_flax"]["median"] == 0.5 and rows["gru", "rnn_jax"]["vs_torch"]["median"] == 4.0
    buf = io.StringIO()
    bench.print_table(list(rows.values()), file=buf)
    assert "parity 1.09x (0.89-1.50)" in buf.getvalue() and "| 9-11 " in buf.getvalue()


def test_ratio_edges():
    assert not bench.ratio_of_runs([3.0], [2.0]).parity  # one run has no spread: never parity
    assert bench.format_ratio(bench.ratio_of_runs([3.0], [2.0])) == "1.50x"
    assert bench.ratio_of_runs([2.0, 1.0], [2.0, 2.0]).parity  # a run at exactly 1.0 straddles
    assert not bench.ratio_of_runs([2.1, 2.5], [2.0, 2.0]).parity
    assert bench.format_ratio(None) == "-"
    with pytest.raises(ValueError, match="one peer time per run"):
        bench.ratio_of_runs([1.0], [1.0, 2.0])


@pytest.mark.slow
def test_acceptance_command_at_tiny_sizes(tmp_path, capsys):
    """The issue's command (every cell, both peers where torch is installed, several runs) at tiny sizes."""
    peers = "torch,flax" if importlib.util.find_spec("torch") else "flax"
    out = tmp_path / "b.jsonl"
    args = ["bench", "--config", "2,3,4,5", "--cells", "lstm,gru,vanilla", "--peers", peers, "--runs", "2"]
    args += ["--modes", "fwd_bwd", "--warmup", "1", "--reps", "1", "--rounds", "1", "--json", str(out)]
    assert cli(args) == 0
    lines = _json_lines(out)
    flax = {
        "lstm": {"flax LSTMCell", "flax OptimizedLSTMCell"},
        "gru": {"flax GRUCell"},
        "vanilla": {"flax SimpleCell"},
    }
    for cell, cells in flax.items():
        assert {r["impl"] for r in lines["raw"] if r["cell"] == cell and r["lib"] == "flax"} == cells
        (ours,) = [r for r in lines["summary"] if r["cell"] == cell and r["impl"] == "rnn_jax"]
        assert ours["runs"] == 2 and ours["vs_flax"]["runs"] == 2 and ours["vs_flax_peer"] in cells
        assert (ours["vs_torch"] is not None) == ("torch" in peers)
        # The ratio is recomputed from the raw records of each run.
        per_run = [
            min(r["ms"] for r in lines["raw"] if r["cell"] == cell and r["lib"] == "flax" and r["run"] == k)
            / next(r["ms"] for r in lines["raw"] if r["cell"] == cell and r["impl"] == "rnn_jax" and r["run"] == k)
            for k in (0, 1)
        ]
        assert ours["vs_flax"]["lo"] == pytest.approx(min(per_run)) and ours["vs_flax"]["hi"] == pytest.approx(
            max(per_run)
        )
    assert len(lines["raw"]) == 2 * len(lines["summary"])
    # The matmul floor: each row's matmul FLOPs at the best large-GEMM rate measured in the same invocation.
    (header,) = lines["header"]
    best = max(header["gemm_gflops"].values())
    assert best > 0 and ("torch" in header["gemm_gflops"]) == ("torch" in peers)
    for row in lines["summary"]:
        flops = timing.matmul_flops(row["cell"], timing.Shape(2, 3, 4, 5), "fwd_bwd")
        assert row["floor_ms"] == pytest.approx(flops / best / 1e6)
        assert row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"]) and row["x_floor"] > 1
    table = capsys.readouterr().out
    assert "over 2 run(s)" in table and table.count("| rnn_jax ") == 3
    assert "- matmul floor: " in table and re.search(r"\| floor_ms +\| x floor +\|", table)


def test_impls_time_run_with_each_impl_and_skip_the_cells_an_impl_does_not_run():
    rows = bench_cli._impl_rows("auto,scan,custom_jvp")
    assert rows == ["rnn_jax", "rnn_jax impl=scan", "rnn_jax impl=custom_jvp"]
    notes = []
    records = bench.measure_layers(
        [bench.Shape(2, 3, 4, 5)], cells=("vanilla", "lstm"), impls=rows, modes=("fwd",), warmup=1, reps=1,
        rounds=1, log=notes.append,
    )  # fmt: skip
    assert [(r["cell"], r["impl"]) for r in records] == [("vanilla", i) for i in rows] + [("lstm", i) for i in rows[:2]]
    assert any(
        "rnn_jax impl=custom_jvp skipped for lstm: impl='custom_jvp' cannot run this call: it runs the vanilla cell "
        "only" in n
        for n in notes
    )
    # Each row is run(..., impl=...): the same loss and gradient as the default, by another algorithm.
    s, key = bench.Shape(2, 3, 4, 5), jax.random.key(0)
    xs = jax.random.normal(key, (2, 3, 4))
    ref = jax.value_and_grad(bench.run_impl("vanilla", s, jnp.float32, key)[0])
    for row in rows[1:]:
        loss, params = impls.jax_impl(row)("vanilla", s, jnp.float32, key)
        (v, g), (v0, g0) = jax.value_and_grad(loss)(params, xs), ref(params, xs)
        np.testing.assert_allclose(v, v0, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g0)


def test_help_shows_the_default_suite_and_every_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["bench", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--runs RUNS" in text and "(default: 32,128,256,256)" in text and "bench compile --help" in text
    parser = bench_cli._layers_parser("rnn-jax bench")
    for action in parser._actions:
        if action.dest != "help":
            assert "default" in bench_cli._Help("x")._get_help_string(action), action.option_strings


def test_compile_and_linear_suites():
    comp = bench.measure_compile([2, 3], cell="vanilla", B=1, I=2, H=3, max_loop_T=2)
    assert [(r["impl"], r["T"]) for r in comp] == [("rnn_jax", 2), ("python loop", 2), ("rnn_jax", 3)]
    assert all(r["mode"] == "compile" and r["compile_s"] > 0 for r in comp)
    lin = bench.measure_linear([4], cells=["diag"], B=1, I=2, H=3, modes=["fwd"], warmup=1, reps=1, rounds=1)
    assert [r["impl"] for r in lin] == ["run_linear sequential", "run_linear associative"]
    assert all(r["ms"] > 0 and r["cell"] == "diag" for r in lin)


def test_bad_arguments():
    assert bench.parse_config("32,128,256,256") == bench.Shape(32, 128, 256, 256)
    for bad in ("32,128,256", "a,b,c,d", "0,1,1,1"):
        with pytest.raises(UserError, match="four positive integers"):
            bench.parse_config(bad)
    with pytest.raises(UserError, match="unknown variants"):
        bench_cli._variants("scan inside,cudnn")
    with pytest.raises(UserError, match="unknown impls"):
        bench_cli._impl_rows("auto,fast")
    with pytest.raises(UserError, match="--runs must be at least 1"):
        bench.measure_layers([bench.Shape(1, 2, 3, 4)], runs=0)
    assert cli(["bench", "--config", "1,2,3", "--reps", "1"]) == 2  # a UserError: one line, exit status 2


def test_torch_peer():
    """Skipped where torch is not installed, except in CI (``.ci/run`` installs it and sets the variable)."""
    if os.environ.get("RNN_JAX_REQUIRE_TORCH") != "1":
        pytest.importorskip("torch")
    items = peers.torch_items("gru", bench.Shape(2, 3, 4, 5), "float32", ["fwd", "fwd_bwd"], threads=1)
    timing.time_rounds(items, warmup=1, reps=1, rounds=1)
    assert [i.meta["impl"] for i in items] == ["torch nn.GRU"] * 2 and all(len(i.wall) == 1 for i in items)


def _ind_init(key, in_size, hidden_size, dtype=jnp.float32):
    return {"W": jax.random.normal(key, (in_size, hidden_size), dtype), "u": jnp.full((hidden_size,), 0.5, dtype)}


# A user's cell (an IndRNN), for --cells tests.test_bench:user_cell; no_init_cell lacks the init the bench needs.
user_cell = Cell(
    "indrnn",
    project=lambda p, x_I: x_I @ p["W"],
    step=lambda p, h_H, u_H: (jax.nn.relu(u_H + p["u"] * h_H),) * 2,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros_like(p["u"]),
    input_size=lambda p: p["W"].shape[0],
    init=_ind_init,
)
no_init_cell = Cell("no_init", user_cell.project, user_cell.step, identity_readout, user_cell.init_carry,
                    user_cell.input_size)  # fmt: skip


def test_user_cell_by_import_path_is_timed_beside_the_built_ins(tmp_path, capsys):
    out = tmp_path / "b.jsonl"
    args = ["bench", "--config", "2,3,4,5", "--cells", "tests.test_bench:user_cell,gru", "--modes", "fwd_bwd"]
    assert cli(args + ["--warmup", "1", "--reps", "1", "--rounds", "1", "--json", str(out)]) == 0
    raw = _json_lines(out)["raw"]
    assert [(r["cell"], r["impl"]) for r in raw] == [("tests.test_bench:user_cell", "rnn_jax"), ("gru", "rnn_jax")]
    assert raw[0]["ms"] > 0 and raw[0]["gflops"] is None and raw[1]["gflops"] > 0  # a user cell's FLOPs: unknown
    assert "| tests.test_bench:user_cell | fwd_bwd " in capsys.readouterr().out
    # Its loss is the cell's own: the bench's params come from user_cell.init.
    loss, params = bench.run_impl("tests.test_bench:user_cell", bench.Shape(2, 3, 4, 5), jnp.float32, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, params, _ind_init(jax.random.key(0), 4, 5))
    for bad, message in [
        (
            "lngru",
            "unknown cells ['lngru']; expected some of ['vanilla', 'lstm', 'gru'] or your own Cell as module:attr",
        ),
        ("tests.test_bench:no_init_cell", "the cell 'tests.test_bench:no_init_cell' has no init"),
        ("tests.test_bench:nothing", "'tests.test_bench:nothing' must name an rnn_jax.Cell, got NoneType"),
        ("no_such_module:cell", "cannot import the cell 'no_such_module:cell'"),
    ]:
        assert cli(["bench", "--config", "2,3,4,5", "--cells", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_pallas_on_cpu_is_marked_interpret_and_a_refused_config_exits_2(capsys):
    args = ["bench", "--config", "2,3,4,5", "--cells", "vanilla", "--impls", "scan,pallas", "--modes", "fwd"]
    assert cli(args + ["--warmup", "1", "--reps", "1", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    assert "| rnn_jax impl=pallas * |" in table and "| rnn_jax impl=scan " in table
    assert "- *: the Pallas kernel in interpret mode (no GPU)" in table
    # H=300 does not fit the kernel: nothing is timed, and the bench says why in one line.
    assert cli(["bench", "--config", "2,3,4,300", "--cells", "lstm", "--impls", "pallas", "--modes", "fwd"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("rnn-jax bench: error: nothing to time: rnn_jax impl=pallas skipped for lstm: ")
    assert "H=300 does not fit on chip" in last


def test_jax_cudnn_peer_needs_a_gpu(capsys):
    if jax.default_backend() == "gpu":
        pytest.skip("on a GPU the peer runs: test_jax_cudnn_peer_equals_our_lstm_on_gpu")
    assert cli(["bench", "--config", "2,3,4,5", "--cells", "lstm", "--peers", "jax_cudnn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rnn-jax bench: error: --peers jax_cudnn needs a GPU: jax.experimental.rnn runs cuDNN's LSTM and has no "
        "cpu lowering"
    )
    assert cli(["bench", "--variants", "jax_cudnn LSTM"]) == 2
    assert "ask for it with --peers jax_cudnn" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (run experiments/device_check.sh)")
def test_jax_cudnn_peer_equals_our_lstm_on_gpu():
    """The cuDNN row computes our LSTM: its packed weights (torch's layout, gate order i, f, g, o) unpacked into
    LSTMParams give the same loss and gradient through rnn_jax.run."""
    from jax.experimental import rnn as jax_rnn

    import rnn_jax as R

    s = bench.Shape(3, 7, 4, 5)
    loss, weights = peers.cudnn_impl("lstm", s, jnp.float32, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (s.B, s.T, s.I))
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(weights, s.I, s.H, 1, False)
    ours = R.LSTMParams(W_x=W_ih[0].T, W_h=W_hh[0].T, b=b_ih[0] + b_hh[0])
    with jax.default_matmul_precision("highest"):
        want = jax.value_and_grad(lambda p: jnp.mean(R.run(R.lstm_cell, p, None, xs)[1] ** 2))(ours)
        got_value, got_grad = jax.jit(jax.value_and_grad(loss))(weights, xs)
    np.testing.assert_allclose(got_value, want[0], rtol=2e-3)
    dW_ih, dW_hh, db_ih, _ = jax_rnn.unpack_lstm_weights(got_grad, s.I, s.H, 1, False)
    np.testing.assert_allclose(dW_ih[0].T, want[1].W_x, rtol=2e-2, atol=1e-5)
    np.testing.assert_allclose(dW_hh[0].T, want[1].W_h, rtol=2e-2, atol=1e-5)
    np.testing.assert_allclose(db_ih[0], want[1].b, rtol=2e-2, atol=1e-5)
