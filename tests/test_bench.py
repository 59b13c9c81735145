"""Smoke test of the benchmark harness: it runs, and its records, JSON lines and figure are well formed."""

import importlib.util
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.cli import main as cli
from rnn_jax.errors import UserError
from rnn_jax.tools import bench

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
    assert "| rnn_jax unroll=2 " in table and "vs torch" in table and "- machine: cpu" in table
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
    table = capsys.readouterr().out
    assert "over 2 run(s)" in table and table.count("| rnn_jax ") == 3


def test_impls_time_run_with_each_impl_and_skip_the_cells_an_impl_does_not_run():
    rows = bench._impl_rows("auto,scan,custom_jvp")
    assert rows == ["rnn_jax", "rnn_jax impl=scan", "rnn_jax impl=custom_jvp"]
    notes = []
    records = bench.measure_layers(
        [bench.Shape(2, 3, 4, 5)], cells=("vanilla", "lstm"), impls=rows, modes=("fwd",), warmup=1, reps=1,
        rounds=1, log=notes.append,
    )  # fmt: skip
    assert [(r["cell"], r["impl"]) for r in records] == [("vanilla", i) for i in rows] + [("lstm", i) for i in rows[:2]]
    assert any(
        "rnn_jax impl=custom_jvp skipped for lstm: impl='custom_jvp' runs the vanilla cell only" in n for n in notes
    )
    # Each row is run(..., impl=...): the same loss and gradient as the default, by another algorithm.
    s, key = bench.Shape(2, 3, 4, 5), jax.random.key(0)
    xs = jax.random.normal(key, (2, 3, 4))
    ref = jax.value_and_grad(bench._run_impl("vanilla", s, jnp.float32, key)[0])
    for row in rows[1:]:
        loss, params = bench._jax_impl(row)("vanilla", s, jnp.float32, key)
        (v, g), (v0, g0) = jax.value_and_grad(loss)(params, xs), ref(params, xs)
        np.testing.assert_allclose(v, v0, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g0)


def test_help_shows_the_default_suite_and_every_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["bench", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--runs RUNS" in text and "(default: 32,128,256,256)" in text and "bench compile --help" in text
    parser = bench._layers_parser("rnn-jax bench")
    for action in parser._actions:
        if action.dest != "help":
            assert "default" in bench._Help("x")._get_help_string(action), action.option_strings


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
        bench._variants("scan inside,cudnn")
    with pytest.raises(UserError, match="unknown impls"):
        bench._impl_rows("auto,cudnn")
    with pytest.raises(UserError, match="--runs must be at least 1"):
        bench.measure_layers([bench.Shape(1, 2, 3, 4)], runs=0)
    assert cli(["bench", "--config", "1,2,3", "--reps", "1"]) == 2  # a UserError: one line, exit status 2


def test_torch_peer():
    """Skipped where torch is not installed, except in CI (``.ci/run`` installs it and sets the variable)."""
    if os.environ.get("RNN_JAX_REQUIRE_TORCH") != "1":
        pytest.importorskip("torch")
    items = bench._torch_items("gru", bench.Shape(2, 3, 4, 5), "float32", ["fwd", "fwd_bwd"], threads=1)
    bench._time_rounds(items, warmup=1, reps=1, rounds=1)
    assert [i.meta["impl"] for i in items] == ["torch nn.GRU"] * 2 and all(len(i.wall) == 1 for i in items)
