"""The measurement scripts in experiments/ at tiny sizes: each form computes what the reference computes."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest


def _load(name):
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_linear_scan_forms_agree_with_the_sequential_loop(capsys):
    rows = _load("linear_scan_forms").main(["--T", "16,64", "--B", "2", "--H", "3", "--reps", "1"])
    assert {r["form"] for r in rows} == {"sequential", "associative", "blocked"} and len(rows) == 6
    assert max(r["max_abs_diff"] for r in rows) < 1e-5
    with pytest.raises(SystemExit):
        _load("linear_scan_forms").main(["--T", "12"])  # the blocked form needs a power of two
    capsys.readouterr()


@pytest.mark.slow
def test_lstm_backward_forms_give_autodiffs_gradients(capsys):
    # main() asserts that every chunked backward's gradients equal autodiff's; chunks of 1, 4 and T.
    rows = _load("lstm_backward_forms").main(
        ["--config", "3,8,5,5", "--chunks", "1,4,8", "--rounds", "1", "--reps", "1"]
    )
    assert [r["form"] for r in rows] == ["rnn_jax.run (autodiff)", "chunked k=1", "chunked k=4", "chunked k=8"]
    assert "matmul floor" in capsys.readouterr().out


@pytest.mark.slow
def test_vanilla_custom_jvp_keeps_gradients_and_forward_mode(capsys):
    row = _load("vanilla_custom_jvp").main(["--config", "3,7,4,5", "--rounds", "1", "--reps", "1"])
    assert row["grad_rel_err"] < 1e-4 and row["jvp_rel_err"] < 1e-4
    capsys.readouterr()


@pytest.mark.slow
def test_char_lm_script_reads_key_value_and_config_file(tmp_path, capsys):
    from rnn_jax.harness import config_from_argv

    char_lm = _load("char_lm")
    (tmp_path / "run.toml").write_text('cell = "lstm"\nhidden_size = 16\n')
    cfg = config_from_argv(char_lm.CharLMConfig, ["--config", str(tmp_path / "run.toml"), "hidden=8", "steps=3"],
                           base=char_lm.CONFIG)  # fmt: skip
    assert cfg.cell == "lstm" and cfg.hidden_size == 8 and cfg.steps == 3 and cfg.minutes is None  # steps replace
    assert cfg.embed_size == char_lm.CONFIG.embed_size and cfg.out == "runs/char_lm"
    text = "".join(f"hello world {i % 5}\n" for i in range(240))
    small = dict(text=text, embed_size=4, batch_size=4, seq_len=8, samples=0, verbose=False, out=str(tmp_path / "r"))
    result = char_lm.main(dataclasses.replace(cfg, **small))
    assert result.steps == 3 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
