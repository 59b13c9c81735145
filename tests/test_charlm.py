"""The char-LM trainer end to end: learn a tiny text, sample it back, resume exactly after SIGKILL, stop on
NaN with the last good checkpoint intact, and answer every bad input with one line."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import checkpoint, cli
from rnn_jax.apps import charlm
from rnn_jax.errors import UserError

TINY = "".join(f"hello world {i % 5}\n" for i in range(240))  # 3360 characters, 15 distinct
SMALL = ["--hidden", "32", "--embed", "8", "--batch", "4", "--seq-len", "16", "--warmup", "10", "--no-progress"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def trained(text_file, tmp_path_factory):
    """One small run through the command line (in-process): its stdout and run directory."""
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--text", str(text_file), "--steps", "150", "--lr", "1e-2", "--eval-every", "75"]
    argv += ["--checkpoint-every", "50", "--samples", "1", "--out", str(out), *SMALL]
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        assert charlm.cli_main(argv) == 0
    return buf.getvalue(), out


def test_train_prints_json_summary_last(trained):
    stdout, out = trained
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert set(summary) >= {"val_loss", "val_bpc", "steps", "chars_per_sec", "elapsed_s"}
    assert summary["steps"] == 150 and summary["chars_per_sec"] > 0
    assert summary["val_bpc"] == pytest.approx(summary["val_loss"] / np.log(2))
    assert summary["val_loss"] < 0.5  # the text is nearly deterministic: far below log(15) = 2.7 nats
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 75, 150] and "sample" in evals[0]
    assert evals[0]["val_loss"] > 2.0 > evals[-1]["val_loss"]  # ln(15) = 2.7 at the start
    assert (out / "loss.png").is_file() and checkpoint.latest(out) and checkpoint.best(out)
    meta = checkpoint.read_meta(out)
    assert meta["vocab"] == "".join(sorted(set(TINY))) and meta["config"]["hidden"] == 32 and meta["cursor"] == 150


def test_sample_continues_the_prime(trained, capsys):
    _, out = trained
    argv = ["charlm", "sample", "--ckpt", str(out), "--prime", "hello w", "--length", "12", "--temperature", "0"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("hello world ") and len(text) == len("hello w") + 12 + 1


def _cli_error(capsys, argv):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("rnn-jax charlm: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors(trained, text_file, tmp_path, capsys):
    _, out = trained
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("hello\n" * 20)
    (tmp_path / "latin1.txt").write_bytes(("caf\u00e9 " * 500).encode("latin-1"))
    (tmp_path / "a_file").write_text("x")
    text = ["--text", str(text_file), *SMALL]
    cases = [
        (["train", "--text", str(tmp_path / "empty.txt")], "is empty"),
        (["train", "--text", str(tmp_path / "short.txt")], "too short: 120 characters"),
        (["train", "--text", str(tmp_path / "latin1.txt")], "not UTF-8 text: byte 0xe9 at offset 3"),
        (["train", *text, "--out", str(tmp_path / "a_file" / "run")], "cannot write to the output directory"),
        (["train", *text, "--hidden", "0"], "hidden must be an integer >= 1, got 0"),
        (["train", *text, "--batch", "-3"], "batch must be an integer >= 1, got -3"),
        (["train", *text, "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["train", *text, "--minutes", "-1"], "minutes must be a positive number"),
        (["train", *text, "--lr", "0"], "lr must be a positive number"),
        (["train", *text, "--devices", "64", "--out", str(tmp_path / "r")], "asked for 64 devices but only"),
        (["train", *text, "--resume", "--out", str(tmp_path / "fresh")], "nothing to resume"),
        (["train", *text, "--resume", "--out", str(out), "--hidden", "33"], "trained with hidden=32, this run asks"),
        (["sample", "--ckpt", str(tmp_path / "missing")], "no such checkpoint directory"),
        (["sample", "--ckpt", str(out), "--prime", "hello ZQ"], r"outside the vocabulary: ['Q', 'Z']"),
        (["sample", "--ckpt", str(out), "--top-p", "1.5"], "top-p must lie in (0, 1]"),
        (["sample", "--ckpt", str(out), "--length", "0"], "length must be an integer >= 1"),
    ]
    for argv, message in cases:
        err = _cli_error(capsys, ["charlm", *argv])
        assert message in err, (argv, err)
    # A checkpoint of something else is refused.
    checkpoint.save(tmp_path / "other" / "latest.ckpt", {"w": np.zeros(3)}, {"kind": "seq2seq"})
    assert "not a char-LM checkpoint" in _cli_error(capsys, ["charlm", "sample", "--ckpt", str(tmp_path / "other")])


def test_nan_stops_cleanly_with_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    real_loss = charlm.loss_fn

    def poisoned(params, carries, batch, key, *, cfg):
        # NaN at the first stream wrap with a live carry: batch 188 (3024 // 2 = 1512 = 188 windows of 8 + 1).
        loss, aux = real_loss(params, carries, batch, key, cfg=cfg)
        live = sum(jnp.sum(jnp.abs(c)) for c in jax.tree.leaves(carries)) > 0
        return loss + jnp.where(batch.reset_B[0] & live, jnp.nan, 0.0), aux

    monkeypatch.setattr(charlm, "loss_fn", poisoned)
    cfg = charlm.CharLMConfig(text=str(text_file), hidden=8, embed=4, batch=2, seq_len=8, steps=200, samples=0,
                              checkpoint_every=50, eval_every=1000, out=str(tmp_path), progress=False)  # fmt: skip
    with pytest.raises(UserError, match=r"stopped at step 189: the loss is nan .*last good checkpoint \(step 150\)"):
        charlm.train(cfg)
    params, *_ = charlm.load_model(str(tmp_path), "latest")
    assert checkpoint.read_meta(tmp_path)["step"] == 150
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_other_cells_bf16_and_random_windows_train(text_file, tmp_path):
    cfg = charlm.CharLMConfig(text=str(text_file), cell="gru", layers=2, dropout=0.2, embed=0, hidden=16, batch=4,
                              seq_len=8, dtype="bfloat16", batching="random", steps=4, samples=0,
                              out=str(tmp_path / "gru"), progress=False)  # fmt: skip
    summary = charlm.train(cfg)
    assert summary["steps"] == 4 and np.isfinite(summary["val_loss"])
    vanilla = charlm.init_params(jax.random.key(0), charlm.CharLMConfig(cell="vanilla", layers=2, hidden=5, embed=0), 7)
    assert vanilla.head_W is None and vanilla.layers[-1].W_hy.shape == (5, 7)  # the lecture's cell emits the logits
    carries = charlm.zero_carries(charlm.CharLMConfig(cell="vanilla"), vanilla, 3)
    _, logits = charlm.forward(vanilla, charlm.CharLMConfig(cell="vanilla", layers=2), carries, np.zeros((3, 4), int))
    assert logits.shape == (3, 4, 7)


def _train_argv(text_file, out, steps, checkpoint_every=100):
    return ["train", "--text", str(text_file), "--steps", str(steps), "--checkpoint-every", str(checkpoint_every),
            "--eval-every", "1000", "--eval-chars", "200", "--samples", "0", "--out", str(out), *SMALL]  # fmt: skip


def test_resume_after_sigkill_is_exact(text_file, tmp_path):
    steps = 300
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "rnn_jax.cli", "charlm"]
    killed = tmp_path / "killed"
    argv = command + _train_argv(text_file, killed, steps, checkpoint_every=10)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while checkpoint.latest(killed) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    stopped_at = checkpoint.read_meta(killed)["step"]
    assert 10 <= stopped_at < steps

    resumed = subprocess.run(command + _train_argv(text_file, killed, steps) + ["--resume"],
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == steps

    whole = tmp_path / "whole"
    charlm.train(charlm.config_from_args(vars(_parse(_train_argv(text_file, whole, steps)))))
    a, *_ = charlm.load_model(str(killed), "latest")
    b, *_ = charlm.load_model(str(whole), "latest")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="action")
    charlm._train_parser(sub)
    args = parser.parse_args(argv)
    del args.action
    return args
