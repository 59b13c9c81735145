"""The char-LM trainer end to end: learn a tiny text, sample it back, resume exactly after SIGKILL, stop on
NaN with the last good checkpoint intact, and answer every bad input with one line."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import Cell, checkpoint, cli
from rnn_jax.apps import charlm
from rnn_jax.cells import identity_readout
from rnn_jax.data import text as textdata
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


@pytest.mark.slow
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
    assert meta["vocab"] == "".join(sorted(set(TINY))) and meta["config"]["hidden_size"] == 32 and meta["cursor"] == 150
    assert summary["val_chars"] == len(TINY) - round(len(TINY) * 0.9)  # every validation character, 336 of them
    assert summary["best_val_loss"] == min(r["val_loss"] for r in evals) and summary["best_step"] in (0, 75, 150)
    assert records[-1] == {"kind": "summary", "final_val_loss": summary["val_loss"], "final_step": 150,
                           "best_val_loss": summary["best_val_loss"], "best_step": summary["best_step"]}  # fmt: skip


@pytest.mark.slow
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


@pytest.mark.slow
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
        (["train", *text, "--hidden", "0"], "hidden_size must be an integer >= 1, got 0"),
        (["train", *text, "--batch", "-3"], "batch_size must be an integer >= 1, got -3"),
        (["train", *text, "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["train", *text, "--minutes", "-1"], "minutes must be a number in (0, inf)"),
        (["train", *text, "--steps", "3", "--minutes", "1"], "give one budget, steps or minutes, not both"),
        (["train", *text, "--lr", "0"], "learning_rate must be a number in (0, inf)"),
        (["train", *text, "--text", "a.txt", "--corpus", "tinyshakespeare"], "not text_path and corpus"),
        (["train", *text, "--devices", "64", "--batch", "64", "--out", str(tmp_path / "r")], "asked for 64 devices"),
        (["train", *text, "--resume", "--out", str(tmp_path / "fresh")], "nothing to resume"),
        (["train", *text, "--resume", "--out", str(out), "--hidden", "33"],
         "trained with hidden_size=32, this run asks for 33"),
        (["sample", "--ckpt", str(tmp_path / "missing")], "no such checkpoint directory"),
        (["sample", "--ckpt", str(tmp_path / "a_file")], "a_file is not a"),
        (["sample", "--ckpt", str(out), "--prime", "hello ZQ"], r"outside the vocabulary: ['Q', 'Z']"),
        (["sample", "--ckpt", str(out), "--top-p", "1.5"], "top-p must lie in (0, 1]"),
        (["sample", "--ckpt", str(out), "--length", "0"], "length must be an integer >= 1"),
    ]  # fmt: skip
    for argv, message in cases:
        err = _cli_error(capsys, ["charlm", *argv])
        assert message in err, (argv, err)
    # A checkpoint of something else is refused.
    checkpoint.save(tmp_path / "other" / "latest.ckpt", {"w": np.zeros(3)}, {"kind": "seq2seq"})
    assert "is not a charlm checkpoint" in _cli_error(capsys, ["charlm", "sample", "--ckpt", str(tmp_path / "other")])
    # No failed validation leaves a run directory behind.
    assert not (tmp_path / "r").exists() and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "content, message",
    [(b"\x00" * 4000, "looks like a binary file"), (bytes(range(256)) * 20, "looks like a binary file"),
     (b"a" * 4000, "holds 1 distinct character(s)"), (b"\n" * 4000, "holds 1 distinct character(s)")],
)  # fmt: skip
def test_texts_that_cannot_train_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, content, message):
    (tmp_path / "data").write_bytes(content)
    out = tmp_path / "run"
    err = _cli_error(capsys, ["charlm", "train", "--text", str(tmp_path / "data"), "--out", str(out), *SMALL])
    assert message in err and str(tmp_path / "data") in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.slow
def test_nan_stops_cleanly_with_last_good_checkpoint(text_file, tmp_path, monkeypatch):
    real_loss = charlm.loss_fn

    def poisoned(params, carries, batch, key, *, cfg):
        # NaN at the first stream wrap with a live carry: batch 188 (3024 // 2 = 1512 = 188 windows of 8 + 1).
        loss, aux = real_loss(params, carries, batch, key, cfg=cfg)
        live = sum(jnp.sum(jnp.abs(c)) for c in jax.tree.leaves(carries)) > 0
        return loss + jnp.where(batch.reset_B[0] & live, jnp.nan, 0.0), aux

    monkeypatch.setattr(charlm.training, "loss_fn", poisoned)  # the name train() calls
    cfg = charlm.CharLMConfig(text_path=str(text_file), hidden_size=8, embed_size=4, batch_size=2, seq_len=8,
                              steps=200, samples=0, checkpoint_every=50, eval_every=1000, out=str(tmp_path),
                              verbose=False)  # fmt: skip
    with pytest.raises(
        UserError,
        match=r"stopped at step 189: the loss is nan .*last good checkpoint \(step 150\).*the best \(step 0, val_loss",
    ):
        charlm.train(cfg)
    params, *_ = charlm.load_model(str(tmp_path), "latest")
    assert checkpoint.read_meta(tmp_path)["step"] == 150
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def _reference_nll(params, cfg, ids):
    """Mean next-character NLL of ``ids[1:]`` given ``ids[:-1]``: one stream, a Python loop over the
    decoding step in float64 numpy (independent of run_stack, the evaluation windows and the masks)."""
    step = charlm.token_step(cfg)
    carries = jax.tree.map(lambda c: c[0], charlm.zero_carries(cfg, params, 1))
    total = 0.0
    for x, y in zip(ids[:-1], ids[1:], strict=True):
        carries, logits = step(params, carries, jnp.int32(x))
        logits = np.asarray(logits, np.float64)
        total += np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[y]
    return total / (len(ids) - 1)


@pytest.mark.slow
@pytest.mark.parametrize("cell, impl", [("lstm", "scan"), ("vanilla", "auto"), ("vanilla", "custom_jvp")])
def test_validation_loss_covers_every_character_and_equals_a_loop(cell, impl):
    # 23 validation characters (22 predictions) over 4 streams of windows of 5: nothing divides.
    cfg = charlm.CharLMConfig(cell=cell, layers=2, hidden_size=5, embed_size=3 if cell == "lstm" else 0, impl=impl)
    params = charlm.init_params(jax.random.key(3), cfg, 7)
    ids = np.asarray(jax.random.randint(jax.random.key(4), (23,), 0, 7), np.int32)
    windows = textdata.eval_windows(ids, streams=4, window=5)
    assert windows.mask_NEW.sum() == 22
    # The reference runs each of the evaluator's streams alone from a zero carry.
    L = -(-22 // 4)
    expected = sum(_reference_nll(params, cfg, ids[b * L : min(b * L + L, 22) + 1]) * (min(b * L + L, 22) - b * L)
                   for b in range(4)) / 22  # fmt: skip
    got = charlm.make_evaluator(cfg, windows, None)(params)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    one_stream = charlm.make_evaluator(cfg, textdata.eval_windows(ids, streams=1, window=5), None)(params)
    np.testing.assert_allclose(one_stream, _reference_nll(params, cfg, ids), rtol=1e-5)


@pytest.mark.slow
def test_bf16_random_windows_and_python_text_train(text_file, tmp_path, capsys):
    cfg = charlm.CharLMConfig(text=TINY, cell="gru", layers=2, dropout=0.2, embed_size=0, hidden_size=16,
                              batch_size=4, seq_len=8, dtype="bfloat16", batching="random", steps=40,
                              learning_rate=2e-2, warmup_steps=5, samples=1, eval_every=20, eval_streams=5,
                              out=str(tmp_path / "gru"), verbose=False)  # fmt: skip
    result = charlm.train(cfg)
    assert capsys.readouterr().err == ""  # verbose=False: no bar, no samples, no evaluation lines
    assert result.steps == 40 and result.val_chars == 336 and result.n_params > 0
    records = [json.loads(line) for line in (tmp_path / "gru" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["kind"] == "eval")
    assert first["val_loss"] == pytest.approx(np.log(15), rel=0.3) and result.val_loss < first["val_loss"] - 0.5
    # The reported loss is the loss of the returned model on every validation character (bf16 compute).
    val_ids = result.vocab.encode(TINY)[len(TINY) - 336 - 1 :]
    expected = _reference_nll(result.params, cfg, val_ids)
    np.testing.assert_allclose(result.val_loss, expected, atol=0.05)
    assert result.best_val_loss <= result.val_loss and result.summary()["val_bpc"] == result.val_loss / np.log(2)
    # Loaded back, the model is the run's best (a NamedTuple); generate says whether the prime is included.
    model = charlm.load_model(result.out)
    assert model.config.text is None and model.config.hidden_size == 16 and model.meta["step"] == result.best_step
    (alone,) = charlm.generate(model.params, model.config, model.vocab, "hel", jax.random.key(0), length=6)
    (whole,) = charlm.generate(model.params, model.config, model.vocab, "hel", jax.random.key(0), length=6,
                               include_prime=True)  # fmt: skip
    assert len(alone) == 6 and whole == "hel" + alone


def test_python_errors_name_fields_and_paths(tmp_path):
    long_text = "to be or not to be\n" * 300
    with pytest.raises(UserError) as err:
        charlm.train(charlm.CharLMConfig(text_path=long_text, out=str(tmp_path / "r")))
    message = str(err.value)
    assert "'to be or not to be" in message and "pass a text itself as text=" in message and len(message) < 300
    with pytest.raises(UserError, match="hidden_size must be an integer >= 1"):
        charlm.train(charlm.CharLMConfig(text=TINY, hidden_size=0, out=str(tmp_path / "r")))
    with pytest.raises(UserError, match="give one text source: text, text_path or corpus, not text and text_path"):
        charlm.train(charlm.CharLMConfig(text=TINY, text_path="x.txt", out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_dropout_reaches_the_output_layer_of_a_one_layer_model():
    """One layer: the only dropout is on the features the (linear) output layer reads, so the logits are
    random with a key, equal to the deterministic ones without, and equal to them on average over keys."""
    cfg = charlm.CharLMConfig(cell="gru", layers=1, hidden_size=5, embed_size=3, dropout=0.4)
    params = charlm.init_params(jax.random.key(1), cfg, 7)
    ids = np.array([[0, 3, 6, 2], [1, 1, 5, 4], [2, 0, 0, 6]])
    carries = charlm.zero_carries(cfg, params, 3)
    _, plain = charlm.forward(params, cfg, carries, ids)
    no_dropout = charlm.CharLMConfig(cell="gru", layers=1, hidden_size=5, embed_size=3)
    np.testing.assert_array_equal(plain, charlm.forward(params, no_dropout, carries, ids)[1])
    keys = jax.random.split(jax.random.key(2), 4000)
    dropped = jax.vmap(lambda k: charlm.forward(params, cfg, carries, ids, key=k)[1])(keys)
    assert not np.allclose(dropped[0], plain) and not np.allclose(dropped[0], dropped[1])
    np.testing.assert_allclose(dropped.mean(0), plain, atol=0.05 * float(np.abs(plain).max()))


def test_vanilla_stack_emits_logits_from_its_own_head():
    vanilla = charlm.init_params(jax.random.key(0), charlm.CharLMConfig(cell="vanilla", layers=2, hidden_size=5,
                                                                         embed_size=0), 7)  # fmt: skip
    assert vanilla.head_W is None and vanilla.layers[-1].W_hy.shape == (5, 7)  # the lecture's cell emits the logits
    assert vanilla.layers[0].W_hy.shape == (5, 5)
    cfg = charlm.CharLMConfig(cell="vanilla", layers=2)
    _, logits = charlm.forward(vanilla, cfg, charlm.zero_carries(cfg, vanilla, 3), np.zeros((3, 4), int))
    assert logits.shape == (3, 4, 7)
    bad_id = r"inputs hold the token id 7 at index \(1, 2\).*outside the vocabulary \[0, 7\)"
    with pytest.raises(UserError, match=bad_id):
        charlm.forward(vanilla, cfg, charlm.zero_carries(cfg, vanilla, 2), np.array([[0, 1, 2], [3, 4, 7]]))


def _train_argv(text_file, out, steps, checkpoint_every=100):
    return ["train", "--text", str(text_file), "--steps", str(steps), "--checkpoint-every", str(checkpoint_every),
            "--eval-every", "1000", "--eval-chars", "200", "--samples", "0", "--out", str(out), *SMALL]  # fmt: skip


@pytest.mark.slow
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
    charlm.train(charlm.config_from_args(charlm.cli._parser("t").parse_args(_train_argv(text_file, whole, steps))))
    a, *_ = charlm.load_model(str(killed), "latest")
    b, *_ = charlm.load_model(str(whole), "latest")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_help_shows_a_default_for_every_flag_and_readme_commands_parse(capsys):
    parser = charlm.cli._parser("rnn-jax charlm")
    for action, config_type in (("train", charlm.CharLMConfig), ("sample", charlm.SampleConfig)):
        with pytest.raises(SystemExit):
            parser.parse_args([action, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for f in dataclasses.fields(config_type):
            if f.metadata["cli"]:  # each field's flag, its help line and its default (or "required")
                flag = "--" + f.name.replace("_", "-")
                described = [f"{f.metadata['help']} ({tail}" for tail in ("default ", "required)")]
                assert flag in text and any(d in text for d in described), (action, f.name)
    # The README's commands, flag by flag.
    cfg = charlm.config_from_args(parser.parse_args(["train", "--text", "t.txt", "--minutes", "5"]))
    assert cfg.text_path == "t.txt" and cfg.minutes == 5.0 and cfg.steps is None and cfg.unroll is None
    cfg = charlm.config_from_args(parser.parse_args(["train", "--corpus", "tinyshakespeare", "--minutes", "5"]))
    assert cfg.corpus == "tinyshakespeare"
    args = parser.parse_args(["sample", "--ckpt", "runs/charlm", "--prime", "ROMEO:", "--length", "300",
                              "--temperature", "0.8"])  # fmt: skip
    assert (args.ckpt, args.prime, args.length, args.temperature) == ("runs/charlm", "ROMEO:", 300, 0.8)


class IndParams(NamedTuple):
    W: jax.Array  # [I, H]
    u: jax.Array  # [H]
    b: jax.Array  # [H]


def _ind_init(key, in_size, hidden_size, dtype=jnp.float32):
    k_w, k_u = jax.random.split(key)
    W = jax.random.normal(k_w, (in_size, hidden_size), dtype) / np.sqrt(in_size)
    return IndParams(W, jax.random.uniform(k_u, (hidden_size,), dtype), jnp.zeros((hidden_size,), dtype))


def _ind_step(p, h_H, u_H):
    h_H = jax.nn.relu(u_H + p.u * h_H)
    return h_H, h_H


# A user's cell (an IndRNN), importable as "tests.test_charlm:indrnn_cell".
indrnn_cell = Cell(
    "indrnn",
    project=lambda p, x_I: x_I @ p.W + p.b,
    step=_ind_step,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros_like(p.b),
    input_size=lambda p: p.W.shape[0],
    init=_ind_init,
)


def _user_cfg(cell, out, steps=4, **kw):
    return charlm.CharLMConfig(text=TINY, cell=cell, layers=2, hidden_size=6, embed_size=4, batch_size=3, seq_len=8,
                               steps=steps, warmup_steps=1, eval_every=steps, eval_chars=40, samples=0,
                               out=str(out), verbose=False, **kw)  # fmt: skip


def test_user_cell_trains_checkpoints_its_import_path_and_loads_back(tmp_path, capsys):
    result = charlm.train(_user_cfg(indrnn_cell, tmp_path / "ind"))
    assert isinstance(result.params.layers[0], IndParams) and result.params.layers[1].W.shape == (6, 6)
    meta = checkpoint.read_meta(tmp_path / "ind" / "best.ckpt")
    assert meta["config"]["cell"] == "tests.test_charlm:indrnn_cell"
    assert meta["cell"] == {"name": "indrnn", "builtin": False, "import_path": "tests.test_charlm:indrnn_cell",
                            "module": "tests.test_charlm"}  # fmt: skip
    model = charlm.load_model(result.out)
    assert model.config.cell is indrnn_cell
    jax.tree.map(np.testing.assert_array_equal, model.params, result.params)  # the best model is the last here
    assert charlm.cli_main(["sample", "--ckpt", result.out, "--length", "5", "--prime", "he"]) == 0
    assert len(capsys.readouterr().out.strip()) == 7
    resumed = charlm.train(_user_cfg(indrnn_cell, tmp_path / "ind", steps=6, resume=True))
    assert resumed.steps == 6


def test_user_cell_without_import_path_or_init_says_what_to_pass(tmp_path):
    local = dataclasses.replace(indrnn_cell, name="local_ind")  # made in a function: nothing can import it
    result = charlm.train(_user_cfg(local, tmp_path / "local", steps=2))
    with pytest.raises(UserError, match=r"trained with the user cell 'local_ind' defined in tests.test_charlm; "
                                        r"pass it: load_model\(.*, cell=<that Cell>\)"):  # fmt: skip
        charlm.load_model(result.out)
    model = charlm.load_model(result.out, cell=local)
    jax.tree.map(np.testing.assert_array_equal, model.params, result.params)
    with pytest.raises(UserError, match="the cell 'no_init' has no init; the trainer needs one"):
        charlm.train(_user_cfg(dataclasses.replace(indrnn_cell, name="no_init", init=None), tmp_path / "n"))
    with pytest.raises(UserError, match="cannot import the cell 'no_such_pkg:cell'"):
        charlm.train(_user_cfg("no_such_pkg:cell", tmp_path / "n"))
    assert not (tmp_path / "n").exists()
