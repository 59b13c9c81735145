"""The trainer harness: config <-> command line, key=value overrides, the fit loop's parts, the run directory."""

import argparse
import dataclasses
import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import checkpoint, harness
from rnn_jax import train as training
from rnn_jax.dtypes import COMPUTE_DTYPES, DTYPES
from rnn_jax.errors import UserError
from rnn_jax.harness import common, loop
from tests.test_train import _data, _linear_loss, _state

# ---------------------------------------------------------------------------------------------------
# Config <-> command line
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cfg:
    cell: str = harness.shared_field("cell", "gru")
    hidden_size: int = harness.shared_field("hidden_size", 32)
    learning_rate: float = harness.shared_field("learning_rate", 1e-3)
    dropout: float = harness.shared_field("dropout", 0.0)
    steps: int | None = harness.shared_field("steps")
    minutes: float | None = harness.shared_field("minutes")
    unroll: int | None = harness.shared_field("unroll")
    verbose: bool = harness.shared_field("verbose", True)
    name: str = harness.field("run", "a name", aliases=("tag",))
    text: str | None = harness.field(None, "the text itself", cli=False)
    text_path: str | None = harness.field(None, "a file", aliases=("text",))


def _parser():
    parser = argparse.ArgumentParser(prog="t")
    harness.add_config_arguments(parser, Cfg)
    return parser


def test_flags_and_aliases_round_trip():
    argv = ["--hidden", "7", "--lr", "0.5", "--unroll", "auto", "--no-progress", "--steps", "3", "--tag", "x"]
    cfg = harness.config_from_args(Cfg, _parser().parse_args(argv))
    assert cfg == Cfg(hidden_size=7, learning_rate=0.5, unroll=None, verbose=False, steps=3, name="x")
    canonical = ["--hidden-size", "7", "--learning-rate", "0.5", "--unroll", "4", "--verbose", "--minutes", "1.5"]
    assert harness.config_from_args(Cfg, _parser().parse_args(canonical)) == Cfg(
        hidden_size=7, learning_rate=0.5, unroll=4, minutes=1.5
    )
    # Flags not given stay out of the namespace: a base (a checkpoint's config on resume) shows through,
    # and a new budget replaces the base's.
    base = Cfg(hidden_size=99, minutes=5.0)
    assert harness.config_from_args(Cfg, _parser().parse_args(["--steps", "4"]), base) == Cfg(hidden_size=99, steps=4)
    assert harness.config_from_args(Cfg, _parser().parse_args(["--text", "f.txt"])).text_path == "f.txt"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--cell", "transformer"])


def test_help_shows_every_default_and_help(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ["--hidden-size N, --hidden N hidden units per layer (default 32)", "(default auto)",
                 "--verbose, --no-verbose, --progress, --no-progress", "(default True)", "(default 0.001)",
                 "a name (default run)"]:  # fmt: skip
        assert text in out, text
    assert "the text itself" not in out  # cli=False
    assert out.count("(default") == len(dataclasses.fields(Cfg)) - 1


def test_key_value_overrides_and_config_file(tmp_path):
    cfg = harness.config_from_overrides(
        Cfg, ["hidden=9", "learning_rate=0.1", "unroll=auto", "verbose=false", "steps=5"]
    )
    assert cfg == Cfg(hidden_size=9, learning_rate=0.1, unroll=None, verbose=False, steps=5)
    assert harness.config_from_overrides(Cfg, ["text=corpus.txt"]).text_path == "corpus.txt"
    (tmp_path / "c.json").write_text(json.dumps({"hidden_size": 11, "minutes": 3}))
    (tmp_path / "c.toml").write_text('cell = "lstm"\nlr = 0.25\n')
    from_json = harness.config_from_argv(Cfg, ["--config", str(tmp_path / "c.json"), "hidden_size=12"])
    assert from_json == Cfg(hidden_size=12, minutes=3.0)
    assert harness.config_from_argv(Cfg, ["--config", str(tmp_path / "c.toml")]) == Cfg(cell="lstm", learning_rate=0.25)
    with pytest.raises(UserError, match=r"Cfg has no field 'hiden'; valid fields: cell, hidden_size, "):
        harness.config_from_overrides(Cfg, ["hiden=3"])
    with pytest.raises(UserError, match=r"hidden_size: cannot read 'many'"):
        harness.config_from_overrides(Cfg, ["hidden_size=many"])
    with pytest.raises(UserError, match=r"expected key=value, got 'steps'"):
        harness.config_from_overrides(Cfg, ["steps"])
    (tmp_path / "bad.json").write_text(json.dumps({"hidden_size": "big"}))
    with pytest.raises(UserError, match=r"hidden_size must be of type int, got 'big'"):
        harness.config_from_argv(Cfg, ["--config", str(tmp_path / "bad.json")])


def test_old_configs_migrate_through_the_aliases():
    old = {"hidden": 5, "lr": 0.3, "progress": False, "text": "a.txt", "removed_field": 1}
    assert harness.migrate_config(Cfg, old) == Cfg(hidden_size=5, learning_rate=0.3, verbose=False, text_path="a.txt")
    new = {"hidden_size": 5, "text": "the text", "text_path": None}
    assert harness.migrate_config(Cfg, new, config_format=2) == Cfg(hidden_size=5, text="the text")


def test_check_config_names_fields_and_fills_the_budget():
    assert harness.check_config(Cfg()).minutes == harness.DEFAULT_MINUTES
    assert harness.check_config(Cfg(steps=3)).minutes is None
    for bad, message in [
        (Cfg(hidden_size=0), "hidden_size must be an integer >= 1, got 0"),
        (Cfg(learning_rate=-1.0), "learning_rate must be a number in (0, inf)"),
        (Cfg(dropout=1.0), "dropout must be a number in [0, 1)"),
        (Cfg(unroll=0), "unroll must be an integer >= 1"),
        (Cfg(cell="rnn"), "cell must be one of"),
        (Cfg(steps=3, minutes=1.0), "give one budget, steps or minutes, not both"),
    ]:
        with pytest.raises(UserError) as err:
            harness.check_config(bad)
        assert message in str(err.value) and "--" not in str(err.value)


def test_compute_dtypes_come_from_the_one_table():
    """``--dtype`` offers the compute dtypes of :mod:`rnn_jax.dtypes`; float16 is in the table but not one of them."""
    assert (
        harness.compute_dtype("bfloat16") is DTYPES["bfloat16"]
        and harness.compute_dtype("float32") is DTYPES["float32"]
    )
    assert common.SHARED_FIELDS["dtype"][3] == COMPUTE_DTYPES == ("float32", "bfloat16") and "float16" in DTYPES
    with pytest.raises(UserError, match=r"dtype must be one of \['bfloat16', 'float32'\], got 'float16'"):
        harness.compute_dtype("float16")


# ---------------------------------------------------------------------------------------------------
# The fit loop
# ---------------------------------------------------------------------------------------------------

_jit_loss = jax.jit(_linear_loss)


class _Crash(Exception):
    pass


class _Batches:
    """A :class:`Batcher`: 4 batches of 6 rows in turn; raises at ``crash_at``."""

    items_per_step = 6

    def __init__(self, crash_at=None):
        self.x, self.y = _data(n=24)
        self.crash_at = crash_at

    def __call__(self, i):
        if i == self.crash_at:
            raise _Crash
        return self.x[(i % 4) * 6 : (i % 4) * 6 + 6], self.y[(i % 4) * 6 : (i % 4) * 6 + 6]


@functools.cache
def _fresh_and_step(steps):
    fresh, opt = _state(total=steps)
    return fresh, training.make_train_step(_linear_loss, opt)


def _fit(out, steps, state=None, crash_at=None):
    fresh, step = _fresh_and_step(steps)
    batches = _Batches(crash_at)
    ck = checkpoint.Checkpointer(out, {"config": {"model": "linear"}})
    evaluate = lambda s: {"val_loss": float(_jit_loss(s.params, (batches.x, batches.y), None)[0])}  # noqa: E731
    options = harness.FitOptions(steps=steps, eval_every=10, checkpoint_every=10, log_every=5, verbose=False)
    result = harness.fit(state if state is not None else fresh, step, batches, options, evaluate=evaluate,
                   checkpointer=ck, out_dir=out)  # fmt: skip
    return result, fresh


def test_fit_logs_checkpoints_keeps_the_best_and_resumes_exactly(tmp_path):
    assert isinstance(_Batches(), harness.Batcher)
    full, fresh = _fit(tmp_path / "full", 30)
    assert full.steps == 30 and full.last_eval["step"] == 30 and full.items_per_s > 0
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 20, 30]
    best = min(evals, key=lambda r: r["val_loss"])
    assert full.best_eval["step"] == best["step"] and full.best_eval["val_loss"] == best["val_loss"]
    assert checkpoint.read_meta(checkpoint.best(tmp_path / "full"))["step"] == best["step"]
    assert [r["step"] for r in records if r["kind"] == "train"] == [5, 10, 15, 20, 25, 30]
    summary = records[-1]
    assert summary["kind"] == "summary" and summary["final_val_loss"] == evals[-1]["val_loss"]
    assert summary["best_val_loss"] == best["val_loss"] and summary["best_step"] == best["step"]
    assert (tmp_path / "full" / "loss.png").stat().st_size > 1000

    # A run that dies at step 25 (after its checkpoint at 20), restored and continued to 30: same params, bit for bit.
    with pytest.raises(_Crash):
        _fit(tmp_path / "part", 30, crash_at=25)
    restored, meta = checkpoint.restore(tmp_path / "part", fresh, expect={"config": {"model": "linear"}})
    assert meta["step"] == 20 and meta["cursor"] == 20 and int(restored.step) == 20
    resumed, _ = _fit(tmp_path / "part", 30, state=restored)
    assert resumed.steps == 30
    for a, b in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(full.state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_best_keeper_keeps_only_improvements(tmp_path):
    ck = checkpoint.Checkpointer(tmp_path)
    keeper = harness.BestKeeper("val_loss", ck)
    state, _ = _state()
    offers = [(0, 3.0), (1, 2.0), (2, 2.5), (3, 2.0), (4, 1.0)]
    kept = [keeper.offer(state._replace(step=jnp.int32(s)), {"step": s, "val_loss": v}) for s, v in offers]
    assert kept == [True, True, False, False, True]
    assert keeper.best == {"step": 4, "val_loss": 1.0} and checkpoint.read_meta(checkpoint.best(tmp_path))["step"] == 4


def test_divergence_names_latest_and_best(tmp_path):
    state, opt = _state(total=30)
    step = training.make_train_step(_linear_loss, opt)
    x, y = _data()
    batches = lambda i: (x, y.at[0].set(jnp.inf) if i == 17 else y)  # noqa: E731
    evaluate = lambda s: {"val_loss": float(_jit_loss(s.params, (x, y), None)[0])}  # noqa: E731
    ck = checkpoint.Checkpointer(tmp_path)
    options = harness.FitOptions(steps=30, checkpoint_every=5, eval_every=100, verbose=False)
    with pytest.raises(training.TrainingDiverged) as err:
        harness.fit(state, step, batches, options, evaluate=evaluate, checkpointer=ck, out_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(
        "training stopped at step 18: the loss is inf and the gradient norm inf (not finite; try a lower learning_rate)"
    )
    assert f"last good checkpoint (step 15) is intact in {tmp_path / 'latest.ckpt'}" in message
    assert "the best (step 0, val_loss " in message and str(tmp_path / "best.ckpt") in message
    restored, meta = checkpoint.restore(tmp_path, state)
    assert meta["step"] == 15 and int(restored.step) == 15 and np.all(np.isfinite(restored.params["w"]))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "diverged"

    # Diverging before any latest checkpoint: the message points at best.ckpt of step 0, not at "nothing".
    options = harness.FitOptions(steps=30, checkpoint_every=100, eval_every=100, verbose=False)
    with pytest.raises(training.TrainingDiverged) as err:
        harness.fit(
            state, step, batches, options, evaluate=evaluate, checkpointer=checkpoint.Checkpointer(tmp_path / "b")
        )
    assert "no checkpoint" not in str(err.value) and "the best (step 0, val_loss" in str(err.value)
    assert "no checkpoint had been written yet" in harness.loop.divergence_message(3, "x")


def test_time_budget_reestimates_the_schedule_end(monkeypatch):
    # A fake clock (0.1 s per reading): the budget's arithmetic without wall-clock time.
    ticks = itertools.count()
    monkeypatch.setattr(loop.time, "perf_counter", lambda: 0.1 * next(ticks))
    state, opt = _state(total=10**6)
    step = training.make_train_step(_linear_loss, opt)
    batch = _data()
    result = harness.fit(state, step, lambda i: batch, harness.FitOptions(minutes=0.05, log_every=5, verbose=False))
    schedule = training.WarmupCosineState
    total = [s for s in jax.tree.leaves(result.state.opt_state, is_leaf=lambda s: isinstance(s, schedule))
             if isinstance(s, schedule)][0].total_steps  # fmt: skip
    # 3 s of fake clock stop the run; the schedule's end was moved from 10**6 to the steps the clock allowed.
    assert 5 < result.steps <= int(total) < 30


@pytest.mark.parametrize(
    "options", [dict(), dict(steps=5, minutes=1.0), dict(steps=0), dict(minutes=-1.0), dict(steps=2, eval_every=0)]
)
def test_fit_rejects_bad_options(options):
    state, opt = _state()
    with pytest.raises(UserError, match="budget|steps|minutes|eval_every"):
        harness.fit(
            state, training.make_train_step(_linear_loss, opt), lambda i: _data(), harness.FitOptions(**options)
        )


def test_fit_options_from_a_config():
    assert harness.fit_options(Cfg(steps=3, verbose=False), item_name="chars") == harness.FitOptions(
        steps=3, verbose=False, item_name="chars"
    )


# ---------------------------------------------------------------------------------------------------
# The run directory
# ---------------------------------------------------------------------------------------------------


def test_prepare_cleans_stale_files_and_a_failed_check_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError):
        harness.check_config(Cfg(hidden_size=0))  # validation comes first: nothing below runs
    assert not out.exists()
    with pytest.raises(UserError, match="nothing to resume"):
        harness.resume_meta(out, "app")
    assert not out.exists()
    harness.prepare(out, resume=False)
    for name in harness.rundir.STALE_FILES:
        (out / name).write_text("old")
    (out / "notes.txt").write_text("mine")
    harness.prepare(out, resume=True)
    assert all((out / name).exists() for name in harness.rundir.STALE_FILES)
    harness.prepare(out, resume=False)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]  # the lock stays (docs/faults.md)
    harness.release(out)


def test_read_run_and_load_params(tmp_path):
    state, _ = _state()
    cfg = Cfg(hidden_size=3)
    checkpoint.save(tmp_path / "latest.ckpt", state, harness.run_meta("app", cfg, extra=1))
    run = harness.read_run(tmp_path, "best", "app", Cfg)  # no best: falls back to latest
    assert run.path.name == "latest.ckpt" and run.config == cfg and run.meta["extra"] == 1
    np.testing.assert_array_equal(harness.load_params(run, state)["w"], state.params["w"])
    with pytest.raises(UserError, match="is not a other checkpoint"):
        harness.read_run(tmp_path, "latest", "other", Cfg)
    with pytest.raises(UserError, match="no such checkpoint directory"):
        harness.read_run(tmp_path / "missing", "best", "app", Cfg)
    resumed = harness.resumed_config(Cfg, tmp_path, "app", {"steps": 9})
    assert resumed == Cfg(hidden_size=3, steps=9)
