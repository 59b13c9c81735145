"""Smoke test of the benchmark harness: it runs, and its records, JSON lines and figure are well formed."""

import json

import pytest

from rnn_jax.cli import main as cli
from rnn_jax.errors import UserError
from rnn_jax.tools import bench

FIELDS = {"impl", "cell", "mode", "B", "T", "I", "H", "dtype", "ms", "compile_s", "device"}


def test_cli_layers_writes_json_lines_and_png(tmp_path, capsys):
    out, png = tmp_path / "bench.jsonl", tmp_path / "bench.png"
    args = ["bench", "--config", "2,3,4,5", "--config", "2,6,4,5", "--cells", "vanilla", "--impls", "rnn_jax"]
    args += ["--unrolls", "2", "--modes", "fwd_bwd", "--warmup", "1", "--reps", "1", "--rounds", "2"]
    assert cli(args + ["--json", str(out), "--png", str(png)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 * 2  # shapes x impls
    for r in records:
        assert FIELDS <= set(r) and r["mode"] == "fwd_bwd" and r["dtype"] == "float32"
        assert r["ms"] > 0 and r["reps"] == 2 and r["compile_s"] > 0 and r["device"].startswith("cpu")
        assert r["us_per_step"] == pytest.approx(r["ms"] * 1e3 / r["T"], rel=1e-3)
        assert r["gflops"] > 0 and r["threads"] >= 1
    assert {r["impl"] for r in records} == {"rnn_jax", "rnn_jax unroll=2"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "rnn_jax unroll=2" in table and "vs torch" in table and "# device: cpu" in table


def test_compile_and_linear_suites():
    comp = bench.measure_compile([2, 3], cell="vanilla", B=1, I=2, H=3, max_loop_T=2)
    assert [(r["impl"], r["T"]) for r in comp] == [("rnn_jax", 2), ("python loop", 2), ("rnn_jax", 3)]
    assert all(r["mode"] == "compile" and r["compile_s"] > 0 for r in comp)
    lin = bench.measure_linear([4], cells=["diag"], B=1, I=2, H=3, modes=["fwd"], warmup=1, reps=1, rounds=1)
    assert [r["impl"] for r in lin] == ["run_linear sequential", "run_linear associative"]
    assert all(r["ms"] > 0 and r["cell"] == "diag" for r in lin)


def test_peer_ratio_and_bad_arguments():
    base = dict(cell="lstm", mode="fwd", B=1, T=2, I=3, H=4, dtype="float32")
    records = [dict(base, impl="rnn_jax", ms=2.0), dict(base, impl="torch nn.LSTM", ms=3.0)]
    assert bench._peer_ratio(records[0], records, "torch nn.") == pytest.approx(1.5)
    assert bench._peer_ratio(records[1], records, "torch nn.") is None
    assert bench.parse_config("32,128,256,256") == bench.Shape(32, 128, 256, 256)
    for bad in ("32,128,256", "a,b,c,d", "0,1,1,1"):
        with pytest.raises(UserError, match="four positive integers"):
            bench.parse_config(bad)
    with pytest.raises(UserError, match="unknown impls"):
        bench._impls("rnn_jax,cudnn")
    assert cli(["bench", "--config", "1,2,3", "--reps", "1"]) == 2  # a UserError: one line, exit status 2


def test_torch_peer_when_installed():
    pytest.importorskip("torch")
    items = bench._torch_items("gru", bench.Shape(2, 3, 4, 5), "float32", ["fwd", "fwd_bwd"], threads=1)
    bench._time_rounds(items, warmup=1, reps=1, rounds=1)
    assert [i.meta["impl"] for i in items] == ["torch nn.GRU"] * 2 and all(len(i.wall) == 1 for i in items)
