"""Faults a run must survive with nothing lost and one line said: a resumed best, two trainers on one run
directory, Ctrl-C while compiling, a full disk, damaged checkpoints and stored configs, leftovers of a kill,
models too large for the machine."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from rnn_jax import checkpoint, cli, harness
from rnn_jax.apps import charlm
from rnn_jax.errors import UserError
from rnn_jax.harness import rundir
from tests.test_harness import _Batches, _fresh_and_step

TINY = "".join(f"hello world {i % 5}\n" for i in range(240))
SMALL = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16", "--samples", "0", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TINY)
    return path


def _charlm(text_file, out, steps, *extra):
    return ["charlm", "train", "--text", str(text_file), "--steps", str(steps), "--out", str(out), *SMALL, *extra]


def _records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# Resume: the best so far survives, metrics.jsonl holds each step once
# ---------------------------------------------------------------------------------------------------


def _fit(out, steps, values, state=None):
    """The linear model of test_harness, its evaluation's value by step from ``values`` (best: step 10)."""
    fresh, step = _fresh_and_step(steps)
    ck = checkpoint.Checkpointer(out, {"config": {"model": "linear"}})
    options = harness.FitOptions(steps=steps, eval_every=10, checkpoint_every=10, log_every=5, verbose=False)
    evaluate = lambda s: {"val_loss": values[int(s.step)]}  # noqa: E731
    return harness.fit(state if state is not None else fresh, step, _Batches(), options, evaluate=evaluate,
                 checkpointer=ck, out_dir=out)  # fmt: skip


def test_resume_keeps_the_best_so_far_and_records_each_step_once(tmp_path):
    values = {0: 3.0, 10: 1.0, 20: 2.0, 30: 2.5, 40: 1.5}
    _fit(tmp_path, 20, values)
    assert checkpoint.read_meta(checkpoint.best(tmp_path))["step"] == 10
    fresh, _ = _fresh_and_step(40)
    state, _ = checkpoint.restore(tmp_path, fresh)  # latest: step 20
    result = _fit(tmp_path, 40, values, state=state)
    # The evaluations after resuming (2.0 at 20, 2.5 at 30, 1.5 at 40) are worse than step 10's 1.0.
    assert checkpoint.read_meta(checkpoint.best(tmp_path))["step"] == 10
    assert result.best_eval["step"] == 10 and result.best_eval["val_loss"] == 1.0
    records = _records(tmp_path)
    assert records[-1]["kind"] == "summary" and records[-1]["best_step"] == 10
    seen = [(r["kind"], r["step"]) for r in records if "step" in r]
    assert len(seen) == len(set(seen)), seen  # nothing recorded twice
    assert [s for k, s in seen if k == "eval"] == [0, 10, 20, 30, 40]
    assert [r["kind"] for r in records].count("summary") == 1


# ---------------------------------------------------------------------------------------------------
# Two trainers on one directory
# ---------------------------------------------------------------------------------------------------

_HOLDER = """
import sys, time
from rnn_jax.harness import rundir
rundir.prepare(sys.argv[1], resume=False)
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_trainer_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(_charlm(text_file, out, 2)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"{out} is in use by another run (pid {holder.pid} on " in err and "started 20" in err
        assert not (out / "metrics.jsonl").exists()  # the second run wrote nothing
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert cli.main(_charlm(text_file, out, 2)) == 0  # the kernel dropped the killed run's lock
        assert f"pid {os.getpid()} on " in (out / rundir.LOCK_FILE).read_text()
    finally:
        if holder.poll() is None:
            holder.kill()
        rundir.release(out)


# ---------------------------------------------------------------------------------------------------
# Leftovers of a kill during a save
# ---------------------------------------------------------------------------------------------------


def test_temporaries_of_a_killed_save_are_removed_and_a_live_writers_kept(tmp_path):
    dead = tmp_path / ".latest.ckpt.0123456789ab.tmp"
    dead.write_bytes(b"x" * 100)
    live_path = tmp_path / ".best.ckpt.ba9876543210.tmp"
    fd = os.open(live_path, os.O_WRONLY | os.O_CREAT, 0o644)
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)  # as a writer in another process holds it (an open file description of its own)
    try:
        rundir.prepare(tmp_path, resume=True)
        assert not dead.exists() and live_path.exists()
    finally:
        os.close(fd)
        rundir.release(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Ctrl-C while the first step compiles
# ---------------------------------------------------------------------------------------------------


def _interrupt(argv, env, delay):
    """Start ``argv``, send SIGINT ``delay`` seconds after the line printed just before fit compiles."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.monotonic() + 120, ""
        while "charlm:" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_during_compilation_exits_130_cleanly(tmp_path, text_file):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    # steps enough that every SIGINT lands before the run ends (50 steps ended within 0.5 s on the native kernels)
    argv = [sys.executable, "-m", "rnn_jax.cli", *_charlm(text_file, tmp_path / "run", 20000)]
    argv = [a for a in argv if a != "--no-progress"] + ["--hidden", "64", "--layers", "3"]
    for delay in (0.5, 1.0, 1.5):  # before, during and after the first step's compilation (loaded 2-core box)
        code, err = _interrupt(argv, env, delay)
        assert code == 130, (delay, code, err[-2000:])
        assert "interrupted" in err and "Traceback" not in err
        assert not list((tmp_path / "run").glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_naming_the_file_and_the_old_checkpoint_stays(tmp_path, text_file, monkeypatch,
                                                                              capsys):  # fmt: skip
    out = tmp_path / "run"
    assert cli.main(_charlm(text_file, out, 4, "--checkpoint-every", "2")) == 0
    before = (out / "latest.ckpt").read_bytes()
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert cli.main(_charlm(text_file, out, 8, "--checkpoint-every", "2", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"cannot write {out}/" in err and "no space left on the device" in err and "intact" in err
    assert (out / "latest.ckpt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_an_unwritable_metrics_file_is_one_line_naming_it(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").mkdir()  # a fresh run removes a stale file, not this: every append fails
    assert cli.main(_charlm(text_file, out, 2)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out / "metrics.jsonl") in err, err
    rundir.release(out)


# ---------------------------------------------------------------------------------------------------
# Damaged checkpoints, stored configs
# ---------------------------------------------------------------------------------------------------


def _saved(tmp_path):
    state = {"params": {"W": jnp.arange(600.0).reshape(20, 30), "b": jnp.ones(30)}, "key": jax.random.key(3)}
    path = checkpoint.save(tmp_path / "latest.ckpt", state, {"config": {"hidden_size": 5}, "vocab": "abc"})
    return path, state


def test_bytes_flipped_anywhere_say_damaged_naming_the_file(tmp_path):
    path, state = _saved(tmp_path)
    good = path.read_bytes()
    head, tail = range(0, 64, 3), range(len(good) - 120, len(good), 3)  # the headers at both ends, and the middle
    positions = [*head, *range(64, len(good), max(len(good) // 97, 1)), *tail]
    for i in positions:
        for flip in (0x01, 0xFF):
            damaged = bytearray(good)
            damaged[i] ^= flip
            path.write_bytes(bytes(damaged))
            for load in (checkpoint.read_meta, lambda p: checkpoint.restore(p, state)):
                with pytest.raises(UserError) as err:
                    load(path)
                assert f"{path} is a damaged rnn_jax checkpoint" in str(err.value), (i, flip, str(err.value))
    damaged = bytearray(good)
    damaged[len(good) // 2 : len(good) // 2 + 16] = bytes(16)  # 16 bytes inside the arrays
    path.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match=r"damaged.*the SHA-256 of its contents is [0-9a-f]{16}\.\.\., the file rec"):
        checkpoint.restore(path, state)
    path.write_bytes(good)
    checkpoint.restore(path, state)  # intact again: loads


def test_checkpoints_without_a_checksum_still_load():
    shipped = REPO / "rnn_jax" / "models" / "g2p-cmudict.ckpt"
    assert checkpoint.read_meta(shipped)["kind"] == "seq2seq"
    for run in sorted((REPO / "tests" / "fixtures" / "checkpoints").glob("*/latest.ckpt")):
        assert "config" in checkpoint.read_meta(run), run


@pytest.mark.parametrize(
    ("value", "message"),
    [(1e9, "hidden_size must be of type int, got 1000000000.0"), ("16", "hidden_size must be of type int, got '16'"),
     (10**6, "hidden_size=1000000 needs at least"), (0, "hidden_size must be an integer >= 1")],
)  # fmt: skip
def test_a_stored_config_is_checked_as_a_given_one_is(tmp_path, text_file, capsys, value, message):
    out = tmp_path / "run"
    assert cli.main(_charlm(text_file, out, 2)) == 0
    rundir.release(out)
    model = charlm.load_model(str(out))
    template, _ = charlm.build_state(model.config, model.vocab.size, 1)
    for name in ("latest", "best"):
        path = checkpoint.checkpoint_path(out, name)
        state, meta = checkpoint.restore(path, template)
        checkpoint.save(path, state, {**meta, "config": {**meta["config"], "hidden_size": value}})
    capsys.readouterr()
    for argv in (["charlm", "sample", "--ckpt", str(out)], _charlm(text_file, out, 4, "--resume")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the config stored in" in err and message in err, err
    rundir.release(out)


# ---------------------------------------------------------------------------------------------------
# Sizes that cannot fit
# ---------------------------------------------------------------------------------------------------


def test_a_model_too_large_for_the_machine_is_one_line_before_any_allocation(tmp_path, text_file, capsys):
    assert cli.main(_charlm(text_file, tmp_path / "run", 2, "--hidden-size", "1000000")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "hidden_size=1000000 needs at least" in err and "GB of memory" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_check_fits_is_a_lower_bound_on_params_and_optimiser_state():
    cfg = charlm.CharLMConfig(cell="lstm", hidden_size=5, layers=3, embed_size=7)
    params = 4 * 5 * (5 * 3 + 7)  # recurrent matrices of 3 layers, input matrices of the first
    harness.check_fits(cfg, memory_bytes=params * 16)
    with pytest.raises(UserError, match=f"needs at least .* \\({params:,} float32 numbers\\)"):
        harness.check_fits(cfg, memory_bytes=params * 16 - 1)
    harness.check_fits(cfg, training=False, memory_bytes=params * 4)  # loading needs the params alone
    fresh = charlm.init_params(jax.random.key(0), cfg, 11)
    assert sum(x.size for x in jax.tree.leaves(fresh)) > params  # a true lower bound


# ---------------------------------------------------------------------------------------------------
# A misspelled flag
# ---------------------------------------------------------------------------------------------------


def test_a_misspelled_flag_gets_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["charlm", "train", "--hiden-size", "5", "--steps", "2"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unrecognized arguments: --hiden-size 5; did you mean --hidden-size?" in last, last
    with pytest.raises(SystemExit):
        cli.main(["charlm", "train", "--zzzzzz"])
    assert "rnn-jax charlm train --help lists the flags" in capsys.readouterr().err
