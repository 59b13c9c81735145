"""Checkpoints: exact round trip (keys included), atomic writes, clear refusals."""

import functools
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import rnn_jax as R
from rnn_jax import checkpoint, cli
from rnn_jax import train as T
from rnn_jax.apps import charlm, seq2seq
from rnn_jax.errors import UserError


@functools.cache  # states are immutable: build each kind once
def _state(hidden=5, seed=0):
    params = R.lstm_init(jax.random.key(seed), 3, hidden)
    opt = T.make_optimizer(1e-3, total_steps=7, warmup_steps=2, weight_decay=0.01)
    carry = R.LSTMState(jnp.full((3, hidden), 0.25), jnp.full((3, hidden), -0.5))
    state = T.init_state(params, opt, jax.random.key(11), carry=carry)
    return state._replace(step=jnp.int32(9))


def test_round_trip_is_exact(tmp_path):
    state = _state()
    meta = {"config": {"cell": "lstm", "hidden": 5}, "vocab": "ab\n\u00e9", "cursor": 9}
    path = checkpoint.save(tmp_path / "latest.ckpt", state, meta)
    restored, got_meta = checkpoint.restore(tmp_path, _state(seed=1))  # a directory means its latest
    assert got_meta == meta and path == checkpoint.latest(tmp_path)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
    assert restored.key.dtype == state.key.dtype
    no_key = lambda s: jax.tree.leaves(s._replace(key=None))  # noqa: E731
    for a, b in zip(no_key(restored), no_key(state), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # The restored key draws the same numbers.
    np.testing.assert_array_equal(jax.random.normal(restored.key, (4,)), jax.random.normal(state.key, (4,)))


def test_writes_are_atomic(tmp_path, monkeypatch):
    state = _state()
    checkpoint.save(tmp_path / "latest.ckpt", state, {"n": 1})
    before = (tmp_path / "latest.ckpt").read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path / "latest.ckpt", state._replace(step=jnp.int32(10)), {"n": 2})
    monkeypatch.undo()
    assert (tmp_path / "latest.ckpt").read_bytes() == before  # the old checkpoint is untouched
    assert sorted(os.listdir(tmp_path)) == ["latest.ckpt"]  # and no temporary file is left behind
    assert checkpoint.read_meta(tmp_path) == {"n": 1}


def test_checkpointer_keeps_latest_and_best(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path / "run", {"config": {"a": 1}})
    ck.save(_state(), "latest")
    ck.save(_state()._replace(step=jnp.int32(4)), "best", {"metrics": {"val_loss": 1.5}})
    assert ck.last_saved_step == 9
    assert checkpoint.read_meta(checkpoint.best(tmp_path / "run"))["metrics"] == {"val_loss": 1.5}
    assert checkpoint.read_meta(checkpoint.latest(tmp_path / "run"))["cursor"] == 9


def test_refuses_other_models_and_bad_files(tmp_path):
    checkpoint.save(tmp_path / "latest.ckpt", _state(), {"config": {"cell": "lstm"}})
    with pytest.raises(UserError, match="another model: its config is .*'lstm'.*'gru'"):
        checkpoint.restore(tmp_path, _state(), expect={"config": {"cell": "gru"}})
    with pytest.raises(UserError, match=r"\.params\.W_x has shape \(3, 20\).*expects \(3, 28\)"):
        checkpoint.restore(tmp_path, _state(hidden=7))
    with pytest.raises(UserError, match="different kind of state"):
        checkpoint.restore(tmp_path, {"w": jnp.zeros(3)})
    with pytest.raises(UserError, match="no checkpoint at"):
        checkpoint.restore(tmp_path / "missing", _state())
    (tmp_path / "junk.ckpt").write_bytes(b"\x00not msgpack at all")
    with pytest.raises(UserError, match="not"):
        checkpoint.restore(tmp_path / "junk.ckpt", _state())


def test_unwritable_output_directory_is_a_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot write to the output directory"):
        checkpoint.ensure_writable_dir(tmp_path / "a_file" / "run")


# ---------------------------------------------------------------------------------------------------
# Runs written by an older rnn_jax (tests/fixtures/checkpoints/README.md): they load through the apps'
# public API, sample or translate, and a char-LM run resumes.
# ---------------------------------------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


def _stored_leaves(run: str) -> list[np.ndarray]:
    """The arrays of a fixture in stored order, read with msgpack alone (independent of rnn_jax)."""
    payload = serialization.msgpack_restore((FIXTURES / run / "latest.ckpt").read_bytes())
    leaves = payload["leaves"]
    return [np.asarray(leaves[str(i)]) for i in range(len(leaves))]


def _assert_params_are_stored(params, run: str):
    """The params are the first leaves of the stored train state, bit for bit and in order."""
    got = [np.asarray(x) for x in jax.tree.leaves(params)]
    stored = _stored_leaves(run)[: len(got)]
    assert len(got) > 4
    for a, b in zip(got, stored, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("run", ["charlm_gru1", "charlm_lstm2"])
def test_old_charlm_runs_load_and_sample(run):
    params, cfg, vocab, meta = charlm.load_model(str(FIXTURES / run))
    assert meta["step"] == 3 and meta["kind"] == "charlm"
    _assert_params_are_stored(params, run)
    (text,) = charlm.generate(params, cfg, vocab, "he", jax.random.key(0), length=9)
    assert len(text) == 9 and set(text) <= set(vocab.chars)


@pytest.mark.parametrize("run", ["seq2seq_lstm1", "seq2seq_gru2"])
def test_old_seq2seq_runs_load_and_translate(run):
    model = seq2seq.load_model(str(FIXTURES / run))
    _assert_params_are_stored(model.params, run)
    outputs = seq2seq.translate(model, ["abc", "fed"])
    target_chars = "abcdef"
    assert len(outputs) == 2 and all(set(o) <= set(target_chars) for o in outputs)


def test_old_charlm_run_resumes_for_one_step(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "charlm_gru1", run)
    argv = ["charlm", "train", "--resume", "--out", str(run), "--text", str(FIXTURES / "corpus.txt")]
    assert cli.main([*argv, "--steps", "4", "--no-progress"]) == 0
    assert checkpoint.read_meta(checkpoint.latest(run))["step"] == 4
    params, _, _, _ = charlm.load_model(str(run), "latest")
    before = jax.tree.leaves(charlm.load_model(str(FIXTURES / "charlm_gru1"))[0])
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), before, strict=True)]
    assert any(changed)  # the step trained the restored params
