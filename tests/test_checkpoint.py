"""Checkpoints: exact round trip (keys included), atomic writes, clear refusals."""

import collections
import functools
import json
import os
import shutil
import stat
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

import rnn_jax as R
from rnn_jax import checkpoint, cli
from rnn_jax import train as training
from rnn_jax.apps import charlm, seq2seq
from rnn_jax.errors import UserError


@functools.cache  # states are immutable: build each kind once
def _state(hidden=5, seed=0):
    params = R.lstm_init(jax.random.key(seed), 3, hidden)
    opt = training.make_optimizer(1e-3, total_steps=7, warmup_steps=2, weight_decay=0.01)
    carry = R.LSTMState(jnp.full((3, hidden), 0.25), jnp.full((3, hidden), -0.5))
    state = training.init_state(params, opt, jax.random.key(11), carry=carry)
    return state._replace(step=jnp.int32(9))


N_LEAVES = len(jax.tree.leaves(_state()))


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
    with pytest.raises(UserError, match="cannot write .*latest.ckpt: disk full; the previous latest.ckpt is intact"):
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


def test_arrays_are_stored_by_key_path(tmp_path):
    checkpoint.save(tmp_path / "latest.ckpt", _state(), {})
    outer = serialization.msgpack_restore((tmp_path / "latest.ckpt").read_bytes())
    assert outer["format"] == checkpoint.FORMAT == "rnn_jax.checkpoint/3"
    payload = serialization.msgpack_restore(outer["body"])  # msgpack alone reads it
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(_state())[0]]
    assert sorted(payload["arrays"]) == sorted(names)
    np.testing.assert_array_equal(payload["arrays"][".params.W_x"], _state().params.W_x)
    assert payload["keys"] == {".key": str(_state().key.dtype)}


def test_restore_matches_by_key_path_not_leaf_order(tmp_path):
    a, b = jnp.arange(3.0), jnp.arange(4, dtype=jnp.int32)
    checkpoint.save(tmp_path / "x.ckpt", {"a": a, "b": b})
    # A template type whose fields flatten in the other order: the arrays still go by name.
    Swapped = collections.namedtuple("Swapped", ["b", "a"])
    restored, _ = checkpoint.restore(tmp_path / "x.ckpt", {"b": jnp.zeros(4, jnp.int32), "a": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["a"], a)
    np.testing.assert_array_equal(restored["b"], b)
    checkpoint.save(tmp_path / "y.ckpt", Swapped(b=b, a=a))
    got, _ = checkpoint.restore(tmp_path / "y.ckpt", Swapped(b=jnp.zeros(4, jnp.int32), a=jnp.zeros(3)))
    np.testing.assert_array_equal(got.a, a)


def _save_format_1(path, state, meta):
    """A file as format 1 wrote it (leaves by flatten order beside str(treedef)), written independently."""
    leaves, treedef = jax.tree.flatten(state)
    keys = {str(i): str(x.dtype) for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)}
    arrays = {str(i): np.asarray(jax.random.key_data(x) if str(i) in keys else x) for i, x in enumerate(leaves)}
    payload = {"format": "rnn_jax.checkpoint/1", "treedef": str(treedef), "meta": json.dumps(meta)}
    path.write_bytes(serialization.msgpack_serialize({**payload, "keys": keys, "leaves": arrays}))


def test_format_1_files_load_through_their_migration(tmp_path):
    assert set(checkpoint.MIGRATIONS) == {"rnn_jax.checkpoint/1", "rnn_jax.checkpoint/2"}
    _save_format_1(tmp_path / "old.ckpt", _state(), {"step": 9})
    restored, meta = checkpoint.restore(tmp_path / "old.ckpt", _state(seed=1))
    assert meta == {"step": 9}
    for a, b in zip(jax.tree.leaves(restored._replace(key=None)), jax.tree.leaves(_state()._replace(key=None))):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(_state().key))
    with pytest.raises(UserError, match=rf"old\.ckpt \(format 1.*holds {N_LEAVES} arrays and this model has 1.*stored"):
        checkpoint.restore(tmp_path / "old.ckpt", {"w": jnp.zeros(3)})


def test_a_model_that_gained_a_field_loads_through_one_migration(tmp_path):
    old = {"w": jnp.arange(3.0)}
    checkpoint.save(tmp_path / "old.ckpt", old, {"model": {"cell": "gru"}})
    template = {"w": jnp.zeros(3), "gate": jnp.full((2,), 7.0)}
    with pytest.raises(UserError, match=r"lacks 1 array\(s\) this model has \(\['gate'\]\).*migrate="):
        checkpoint.restore(tmp_path / "old.ckpt", template)

    def migrate(stored, template_arrays):  # the docstring's pattern: fill the arrays and a meta field
        stored = checkpoint.fill_from_template("['gate']")(stored, template_arrays)
        model = stored.meta.get("model", {})
        if "layers" not in model:
            stored = stored._replace(meta={**stored.meta, "model": {**model, "layers": 1}})
        return stored

    expect = {"model": {"cell": "gru", "layers": 1}}
    restored, meta = checkpoint.restore(tmp_path / "old.ckpt", template, expect=expect, migrate=migrate)
    np.testing.assert_array_equal(restored["w"], old["w"])
    np.testing.assert_array_equal(restored["gate"], template["gate"])
    assert meta["model"] == {"cell": "gru", "layers": 1}
    # A current checkpoint passes through the same migration unchanged.
    checkpoint.save(tmp_path / "new.ckpt", {"w": jnp.ones(3), "gate": jnp.ones(2)}, {"model": expect["model"]})
    restored, _ = checkpoint.restore(tmp_path / "new.ckpt", template, expect=expect, migrate=migrate)
    np.testing.assert_array_equal(restored["gate"], jnp.ones(2))
    with pytest.raises(UserError, match=r"\['nope'\] not among the template's key paths \(\['gate'\], \['w'\].*keystr"):
        checkpoint.restore(tmp_path / "old.ckpt", template, migrate=checkpoint.fill_from_template("['nope']"))


def test_refuses_other_models_naming_the_path(tmp_path):
    checkpoint.save(tmp_path / "latest.ckpt", _state(), {"config": {"cell": "lstm"}})
    with pytest.raises(UserError, match="another model: its config is .*'lstm'.*'gru'"):
        checkpoint.restore(tmp_path, _state(), expect={"config": {"cell": "gru"}})
    with pytest.raises(UserError, match=r"\.params\.W_x has shape \(3, 20\).*expects \(3, 28\).*another model"):
        checkpoint.restore(tmp_path, _state(hidden=7))
    as_f16 = jax.tree.map(lambda x: x.astype(jnp.float16) if x.dtype == jnp.float32 else x, _state())
    with pytest.raises(UserError, match=r"\.params\.W_x has shape \(3, 20\) and dtype float32.*float16"):
        checkpoint.restore(tmp_path, as_f16)
    with pytest.raises(
        UserError, match=rf"lacks 1 array\(s\) this model has \(\['w'\]\) and holds {N_LEAVES} .*\.carry"
    ):
        checkpoint.restore(tmp_path, {"w": jnp.zeros(3)})
    checkpoint.save(tmp_path / "k.ckpt", {"k": jnp.zeros(3, jnp.uint32)})
    with pytest.raises(UserError, match=r"the PRNG key at \['k'\] has shape \(3,\), expected \(2,\)"):
        checkpoint.restore(tmp_path / "k.ckpt", {"k": jax.random.key(0)})


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = checkpoint.save(tmp_path / "a.ckpt", {"w": jnp.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 & ~umask, not mkstemp's 0600
    old = os.umask(0o022)
    try:
        checkpoint.save(path, {"w": jnp.ones(2)})  # a replaced file gets the mode anew
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _not_checkpoints(tmp_path) -> dict:
    """Paths that are not checkpoints, by what they are."""
    (tmp_path / "notes.txt").write_text("hello, these are notes\n")
    (tmp_path / "noise.ckpt").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "future.ckpt").write_bytes(serialization.msgpack_serialize({"format": "rnn_jax.checkpoint/99"}))
    return {
        "a text file": (tmp_path / "notes.txt", "is not an rnn_jax checkpoint: expected a .ckpt file"),
        "random bytes": (tmp_path / "noise.ckpt", "is not an rnn_jax checkpoint: expected a .ckpt file"),
        "a directory without latest.ckpt": (tmp_path / "empty_run", "holds no latest.ckpt: expected a run dir.*give"),
        "a missing path": (tmp_path / "missing.ckpt", r"no checkpoint at .* \(no such file\): expected"),
        "a newer format": (tmp_path / "future.ckpt", "format 'rnn_jax.checkpoint/99', which this rnn_jax cannot"),
    }


def test_not_a_checkpoint_is_a_user_error_naming_the_path(tmp_path):
    for what, (path, message) in _not_checkpoints(tmp_path).items():
        for load in (checkpoint.read_meta, lambda p: checkpoint.restore(p, _state())):
            with pytest.raises(UserError, match=message) as err:
                load(path)
            text = str(err.value)
            assert str(path) in text and "ExtraData" not in text, what
            assert "give a run directory" in text or "load it with the rnn_jax version" in text, what  # the fix
            assert err.value.__context__ is None or err.value.__suppress_context__, what  # no msgpack traceback


@pytest.mark.parametrize("app", [charlm, seq2seq])
def test_apps_refuse_a_ckpt_that_is_not_a_checkpoint(tmp_path, app):
    for what, (path, _) in _not_checkpoints(tmp_path).items():
        if what in ("a missing path", "a newer format"):
            continue  # the apps say "no such" in their own words; the format message is tested above
        with pytest.raises(UserError, match=r"expected a \.ckpt file written by rnn_jax.*; give a ") as err:
            app.load_model(str(path))
        assert str(path) in str(err.value) and "ExtraData" not in str(err.value), what


def test_cli_ckpt_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    assert cli.main(["charlm", "sample", "--ckpt", str(tmp_path / "notes.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ExtraData" not in err
    assert f"{tmp_path / 'notes.txt'} is not an rnn_jax checkpoint: expected a .ckpt file" in err


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


@pytest.mark.slow
@pytest.mark.parametrize("run", ["seq2seq_lstm1", "seq2seq_gru2"])
def test_old_seq2seq_runs_load_and_translate(run):
    model = seq2seq.load_model(str(FIXTURES / run))
    _assert_params_are_stored(model.params, run)
    outputs = seq2seq.translate(model, ["abc", "fed"])
    target_chars = "abcdef"
    assert len(outputs) == 2 and all(set(o) <= set(target_chars) for o in outputs)


@pytest.mark.slow
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
