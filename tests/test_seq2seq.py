"""The seq2seq trainer on tiny synthetic tasks: it learns, beam never loses to greedy, the CLI and its errors."""

import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import checkpoint, cli, topologies
from rnn_jax.apps import seq2seq
from rnn_jax.apps.seq2seq.tasks import make_reverse
from rnn_jax.cells import Cell, identity_readout
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError
from rnn_jax.losses import token_cross_entropy

TINY = dict(embed_size=8, hidden_size=24, batch_size=32, eval_batch_size=32, warmup_steps=20, eval_every=100)


def _greedy_reference(params, src_ids: list[int], max_len: int, stop: bool = True) -> list[int]:
    """Greedy decoding as a plain Python loop over the decoder's token step: ``argmax`` fed back each step."""
    src = jnp.asarray(src_ids, jnp.int32)
    ctx, state, logits = topologies.decoder_start(params, src, jnp.int32(len(src_ids)), pairdata.BOS)
    out = []
    for _ in range(max_len):
        token = int(jnp.argmax(logits))
        out.append(token)
        if stop and token == pairdata.EOS:
            break
        state, logits = topologies.decoder_step_fn(ctx, state, jnp.int32(token))
    return out


def _tiny_reverse():
    return make_reverse(n_train=2000, n_val=50, n_test=100, max_len=5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Reversal of strings up to length 5, learned in a few hundred steps; kept for the other tests."""
    out = tmp_path_factory.mktemp("reverse")
    config = seq2seq.Config(task="reverse", steps=400, learning_rate=1e-2, beam=3, out=str(out), verbose=False, **TINY)
    return seq2seq.train(config, task=_tiny_reverse(), log=lambda msg: None), out


@pytest.mark.slow
def test_learns_reversal_and_writes_the_run(trained):
    result, out = trained
    summary = result.summary()
    assert summary["exact_match"] >= 0.9, summary
    assert summary["wer"] == pytest.approx(1 - summary["exact_match"])
    assert 0 <= summary["token_error_rate"] < 0.1 and summary["steps"] == 400 and summary["n"] == 100
    assert {"greedy", "beam3", "elapsed_s", "hardware"} <= set(summary)
    for name in ("latest.ckpt", "best.ckpt", "metrics.jsonl", "loss.png", "attention.png", "summary.json"):
        assert (out / name).is_file(), name
    evals = [json.loads(line) for line in open(out / "metrics.jsonl") if '"eval"' in line]
    assert evals and "val_token_error_rate" in evals[-1]
    # From Python: the result carries the final model, the best one's validation WER is what best.ckpt holds.
    assert result.best_val_wer <= result.final_val_wer and 0 <= result.best_step <= 400
    assert seq2seq.translate(result.model, ["abcde"]) == ["edcba"]
    assert json.loads((out / "summary.json").read_text())["exact_match"] == result.exact_match


@pytest.mark.slow
def test_translate_from_checkpoint(trained):
    _, out = trained
    model = seq2seq.load_model(str(out))
    assert seq2seq.translate(model, ["abcde", "ba"]) == ["edcba", "ab"]
    assert seq2seq.translate(model, ["abcde"], beam=3) == ["edcba"]
    with pytest.raises(UserError, match=r"input 'aA#' has symbols outside the vocabulary: \['#'\]"):
        seq2seq.translate(model, ["aA#"])  # the vocabulary is lower-case letters: 'A' reads as 'a'
    assert seq2seq.translate(model, ["ABcDe"]) == seq2seq.translate(model, ["abcde"]) == ["edcba"]
    with pytest.raises(UserError, match="beam must be an integer >= 1, got 0"):
        seq2seq.translate(model, ["abc"], beam=0)


@pytest.mark.slow
def test_export_to_float16_loads_back_and_translates_the_same(trained, tmp_path):
    _, out = trained
    model = seq2seq.load_model(str(out))
    path = seq2seq.export_model(model, tmp_path / "m.ckpt", info={"command": "rnn-jax seq2seq train ..."})
    assert path.stat().st_size < (out / "best.ckpt").stat().st_size / 3  # no optimiser moments, half the bytes
    meta = checkpoint.read_meta(path)
    assert meta["param_dtype"] == "float16" and meta["info"] == {"command": "rnn-jax seq2seq train ..."}
    loaded = seq2seq.load_model(path)
    # float32 params back: exactly the float32 model's rounded to float16
    for got, want in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(model.params), strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, np.asarray(want).astype(np.float16).astype(np.float32))
    assert (loaded.src_vocab, loaded.tgt_vocab, loaded.max_len) == (model.src_vocab, model.tgt_vocab, model.max_len)
    words = ["abcde", "ba", "cab", "edd"]
    assert seq2seq.translate(loaded, words, beam=3) == seq2seq.translate(model, words, beam=3)
    with pytest.raises(UserError, match="dtype must be one of float16, bfloat16, float32, got 'int8'"):
        seq2seq.export_model(model, tmp_path / "x.ckpt", dtype="int8")


@pytest.mark.slow
def test_cli_export_evaluate_and_translate_a_file(trained, tmp_path, capsys):
    _, out = trained
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"test_wer": 0.01}))
    argv = ["seq2seq", "export", "--ckpt", str(out), "--to", str(tmp_path / "m.ckpt"), "--info", str(info)]
    assert cli.main(argv) == 0
    assert "params in float16" in capsys.readouterr().out
    assert checkpoint.read_meta(tmp_path / "m.ckpt")["info"] == {"test_wer": 0.01}
    assert cli.main(["seq2seq", "translate", "--ckpt", str(tmp_path / "m.ckpt"), "abcde"]) == 0
    assert capsys.readouterr().out == "abcde\tedcba\n"
    argv = ["seq2seq", "evaluate", "--ckpt", str(tmp_path / "m.ckpt"), "--limit", "40", "--beam", "1"]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = seq2seq.load_model(tmp_path / "m.ckpt")
    expected = seq2seq.score_split(model, "test", beam=1, limit=40)  # the same pairs through the library
    assert printed["n"] == 40 and printed["split"] == "test" and printed["beam"] == 1
    for name in ("wer", "token_error_rate", "exact_match"):
        assert printed[name] == expected[name]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["translate", "abc"], "give one of --ckpt DIR (a trained run) or --model NAME"),
        (["translate", "--model", "nope", "abc"], "no shipped model named 'nope'; shipped: g2p"),
        (["evaluate", "--model", "g2p", "--ckpt", "x"], "give one of --ckpt DIR (a trained run) or --model NAME"),
        (["evaluate", "--model", "g2p", "--limit", "0"], "limit must be an integer >= 1, got 0"),
    ],
)
def test_cli_model_choice_errors(argv, message, capsys):
    assert cli.main(["seq2seq", *argv]) == 2
    assert message in capsys.readouterr().err


def _fresh_model(key):
    """An untrained model with the trained one's shapes (its compiled decoders are reused); sharper output
    (W_out x 3) and an end-token bias (+1) make most hypotheses finish within max_len, and greedy often
    miss the likeliest output."""
    prep = seq2seq.prepare(seq2seq.Config(**TINY), _tiny_reverse())
    params = seq2seq.init_params(seq2seq.Config(**TINY), len(prep.src_vocab), len(prep.tgt_vocab), key)
    return prep, params._replace(
        out=params.out._replace(W=3.0 * params.out.W, b=params.out.b.at[pairdata.EOS].add(1.0))
    )


@pytest.mark.slow
def test_beam_never_scores_worse_than_greedy_and_log_probs_are_the_models(trained, key):
    """On an untrained model (uncertain distributions, where beams and greedy differ most)."""
    prep, params = _fresh_model(key)
    rng = np.random.default_rng(0)
    sources = [list(rng.integers(3, len(prep.src_vocab), rng.integers(1, 6))) for _ in range(32)]
    g_ids, g_logp = seq2seq.decode_pairs(params, sources, seq2seq.make_decoder(prep.max_len), 32)
    b_ids, b_logp = seq2seq.decode_pairs(params, sources, seq2seq.make_decoder(prep.max_len, 3, 0.0), 32)
    assert np.all(b_logp >= g_logp - 1e-5)
    assert np.any(b_logp > g_logp + 1e-3)  # the beam does find likelier outputs on some inputs
    # The reported log-probability is the model's: recompute it teacher-forced.
    for ids, logp in ((g_ids, g_logp), (b_ids, b_logp)):
        finished = [bool(t) and t[-1] == pairdata.EOS for t in ids]
        assert sum(finished) >= 16
        b = pairdata.pad_batch(
            sources, [t[:-1] if f else t[:7] for t, f in zip(ids, finished, strict=True)], batch_size=32
        )
        logits = seq2seq.teacher_forced_batch(params, b)[3]
        ce = np.asarray(token_cross_entropy(logits, jnp.asarray(b.tgt_out)))
        for r, t in enumerate(ids):
            if finished[r]:  # every generated token is in tgt_out
                np.testing.assert_allclose(-ce[r, : len(t)].sum(), logp[r], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_scheduled_sampling_loss(key):
    params = seq2seq.init_params(seq2seq.Config(**TINY), 6, 7, key)
    b = pairdata.pad_batch([[3, 4], [5, 3, 4]], [[4, 5, 6], [6]])
    batch = {**seq2seq.batch_arrays(b), "teacher_forcing": jnp.float32(1.0)}
    grad_fn = jax.jit(
        jax.value_and_grad(lambda p, r: seq2seq.loss_fn(p, {**batch, "teacher_forcing": r}, key, scheduled=True)[0])
    )
    forced_loss = jax.jit(lambda p, b: seq2seq.loss_fn(p, b, key, scheduled=False)[0])
    # Ratio 1 reads the target at every step: the teacher-forced loss, per token.
    forced = forced_loss(params, batch)
    np.testing.assert_allclose(grad_fn(params, 1.0)[0], forced, rtol=1e-5)
    # Ratio 0 reads the model's own argmax at every step after <s>: the teacher-forced loss of the inputs
    # that a greedy Python loop feeds itself (not stopping at </s>: the loss masks by the target lengths).
    loss, grads = grad_fn(params, 0.0)
    T = b.tgt_in.shape[1]
    free_in = [
        [pairdata.BOS] + _greedy_reference(params, list(src[:n]), T - 1, stop=False) for src, n in zip(b.src, b.src_len)
    ]
    free = {**batch, "tgt_in": jnp.asarray(free_in, jnp.int32)}
    np.testing.assert_allclose(loss, forced_loss(params, free), rtol=1e-5)
    assert not np.allclose(loss, forced)  # the free-running inputs differ from the targets here
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    schedule = seq2seq.teacher_forcing_schedule(seq2seq.Config(teacher_forcing=0.5, teacher_forcing_decay_steps=100))
    assert [schedule(0), schedule(50), schedule(100), schedule(1000)] == [1.0, 0.75, 0.5, 0.5]


@pytest.mark.slow
def test_cli_pairs_file_with_word_targets_resume_and_evaluate_from_elsewhere(tmp_path, capsys, monkeypatch):
    rows = [f"{w}\t{' '.join(w.upper())}" for w in ("ab", "ba", "abc", "cab", "bca", "ca", "cc", "a", "bb", "acb")]
    tsv = tmp_path / "spell.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # paths relative to where training runs, as a user types them
    argv = [
        "train",
        "--pairs",
        "spell.tsv",
        "--target-unit",
        "word",
        "--steps",
        "4",
        "--batch",
        "4",
        "--hidden",
        "8",
        "--embed",
        "4",
        "--eval-every",
        "2",
        "--out",
        "run",
        "--no-progress",
    ]
    assert seq2seq.cli_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and {"exact_match", "wer", "token_error_rate", "elapsed_s"} <= set(summary)
    argv[argv.index("4")] = "6"
    assert seq2seq.cli_main(argv + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 6
    assert seq2seq.cli_main(["translate", "--ckpt", str(out), "abc"]) == 0
    src, output = capsys.readouterr().out.rstrip("\n").split("\t")
    # The printed output is the greedy decoding of the restored params, read back through the target words.
    model = seq2seq.load_model(str(out))
    ids = _greedy_reference(model.params, model.src_vocab.encode(tuple("abc")), model.length_budget(8))
    assert src == "abc" and output == " ".join(model.tgt_vocab.decode(ids))
    assert model.tgt_vocab.symbols[pairdata.UNK_ID + 1 :] == ("A", "B", "C") and model.source_unit == "char"
    # The run stores the pairs file's absolute path: evaluate finds it from any directory.
    assert model.config.pairs == str(tsv) and checkpoint.read_meta(out / "best.ckpt")["config"]["pairs"] == str(tsv)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert seq2seq.cli_main(["evaluate", "--ckpt", str(out), "--beam", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n"] == 1 and first["model"] == str(out)
    # A checkpoint that stored the path relative to where training ran (older runs) is found there.
    old = seq2seq.export_model(
        model._replace(config=dataclasses.replace(model.config, pairs="spell.tsv")), out / "old.ckpt"
    )
    assert seq2seq.load_model(old).config.pairs == str(tsv)
    # A moved file: one line that says to give --pairs, and --pairs scores it.
    tsv.rename(tmp_path / "moved.tsv")
    assert cli.main(["seq2seq", "evaluate", "--ckpt", str(out), "--beam", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(tsv) in err and "give it with --pairs FILE" in err
    assert seq2seq.cli_main(["evaluate", "--ckpt", str(out), "--beam", "1", "--pairs", "../moved.tsv"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert [second[k] for k in ("n", "wer", "token_error_rate")] == [first[k] for k in ("n", "wer", "token_error_rate")]


@pytest.mark.slow
def test_cli_stacked_layers_with_dropout_train_resume_and_translate(tmp_path, capsys):
    out = tmp_path / "deep"
    argv = ["train", "--task", "reverse", "--steps", "3", "--batch", "8", "--hidden", "8", "--embed", "4"]
    argv += ["--layers", "2", "--dropout", "0.2", "--eval-every", "3", "--eval-size", "8", "--out", str(out)]
    assert seq2seq.cli_main(argv + ["--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    model = seq2seq.load_model(str(out))
    assert model.config.layers == 2 and len(model.params.encoder) == 2 and len(model.params.decoder) == 2
    # The depth is part of the model: resuming it as a one-layer model is refused, not half-loaded.
    shallow = [a if a != "2" else "1" for a in argv]
    with pytest.raises(UserError, match="layers"):
        seq2seq.cli_main(shallow + ["--resume", "--no-progress"])
    assert seq2seq.cli_main(["translate", "--ckpt", str(out), "abc"]) == 0
    assert capsys.readouterr().out.startswith("abc\t")


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--task", "revers", "--steps", "1"],
            "task must be one of reverse, sort, addition, dates, g2p .*got 'revers'",
        ),
        (["train", "--task", "reverse", "--steps", "1", "--layers", "0"], "layers must be an integer >= 1, got 0"),
        (
            ["train", "--task", "reverse", "--steps", "1", "--dropout", "1"],
            r"dropout must be a number in \[0, 1\), got 1.0",
        ),
        (["train", "--task", "reverse", "--steps", "1", "--beam", "0"], "beam must be an integer >= 1, got 0"),
        (["translate", "--ckpt", "/nonexistent", "--beam", "0", "x"], "beam must be an integer >= 1, got 0"),
        (["translate", "--ckpt", "/nonexistent", "x"], "no such checkpoint directory: /nonexistent"),
        (
            ["train", "--task", "reverse", "--steps", "1", "--batch", "6", "--devices", str(jax.device_count() + 3)],
            "only .* visible",  # too few devices is named before the batch's divisibility
        ),
    ],
)
def test_cli_bad_input(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        seq2seq.cli_main(argv)


def test_cli_bad_pairs_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(UserError, match="has no pairs"):
        seq2seq.cli_main(["train", "--pairs", str(empty), "--steps", "1", "--out", str(tmp_path / "o")])
    bad = tmp_path / "bad.tsv"
    bad.write_text("ab\tba\nno tab here\n")
    with pytest.raises(UserError, match=r"bad.tsv:2: .*'no tab here'"):
        seq2seq.cli_main(["train", "--pairs", str(bad), "--steps", "1", "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="nothing to resume: .*fresh holds no checkpoint"):
        seq2seq.train(seq2seq.Config(steps=1, resume=True, out=str(tmp_path / "fresh"), **TINY), task=_tiny_reverse())


@pytest.mark.slow
def test_vocabulary_and_max_len_come_from_the_training_split(trained):
    """A symbol that only validation or test holds reads as <unk> and counts as an error."""
    train = [pairdata.Pair(tuple(w), (tuple(w[::-1]),)) for w in ("ab", "ba", "abb", "bab")]
    test = [pairdata.Pair(tuple("abz"), (tuple("zba"),)), pairdata.Pair(tuple("xyzxyzxyz"), (tuple("zyxzyxzyx"),))]
    prep = seq2seq.prepare(seq2seq.Config(**TINY), pairdata.Task("t", train, test[:1], test))
    assert prep.src_vocab.symbols == (*pairdata.SPECIALS, pairdata.UNK, "a", "b") == prep.tgt_vocab.symbols
    assert prep.max_len == 3 + 1 + 2  # the longest training target, </s>, slack; not the 9-token test target
    assert prep.val.sources == [[4, 5, pairdata.UNK_ID]] and prep.val.targets == [[pairdata.UNK_ID, 5, 4]]
    # The trained reversal model reverses "ab"; "ab#" has a symbol it never saw: an error, not a crash.
    _, out = trained
    model = seq2seq.load_model(str(out))
    pairs = [pairdata.Pair(tuple("ab#"), (tuple("#ba"),)), pairdata.Pair(tuple("ab"), (tuple("ba"),))]
    scores, hyps, _ = seq2seq.evaluate(
        model.params, pairs, model.src_vocab, model.tgt_vocab, seq2seq.make_decoder(model.max_len)
    )
    assert hyps[1] == ("b", "a") and "#" not in hyps[0]
    assert scores.exact_match == 0.5 and scores.n == 2


def test_cli_pairs_file_not_utf8_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("ab\tba\ncaf\u00e9\t\u00e9fac\nabc\tcba\n".encode("latin-1"))
    out = tmp_path / "run"
    assert cli.main(["seq2seq", "train", "--pairs", str(bad), "--steps", "1", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.count("\n") == 1 and "is not UTF-8 text (byte 0xe9 on line 2)" in captured.err


def test_documented_commands_parse_to_the_configs_they_mean_old_spellings_included():
    parser = seq2seq.cli._parser("rnn-jax seq2seq")
    argv = "train --task g2p --minutes 78 --beam 5 --hidden 256 --embed 64 --batch 128 --lr 3e-3 --eval-every 1500"
    cfg = seq2seq.config_from_args(parser.parse_args([*argv.split(), "--eval-size", "3000", "--out", "runs/g2p"]))
    assert cfg == seq2seq.Config(task="g2p", minutes=78.0, beam=5, hidden_size=256, embed_size=64, batch_size=128,
                           learning_rate=3e-3, eval_every=1500, eval_size=3000, out="runs/g2p")  # fmt: skip
    argv = ["train", "--pairs", "my.tsv", "--steps", "30", "--unidirectional", "--no-progress", "--warmup", "7"]
    cfg = seq2seq.config_from_args(parser.parse_args(argv))
    assert (cfg.pairs, cfg.steps, cfg.minutes, cfg.out) == ("my.tsv", 30, None, "runs/seq2seq-my")
    assert not cfg.bidirectional and not cfg.verbose and cfg.warmup_steps == 7


_ACTION_CONFIGS = {"train": seq2seq.Config, "translate": seq2seq.TranslateConfig, "evaluate": seq2seq.EvaluateConfig,
                   "export": seq2seq.ExportConfig}  # fmt: skip


@pytest.mark.parametrize("action", list(_ACTION_CONFIGS))
def test_help_shows_a_default_or_required_for_every_flag(action, capsys):
    sub = seq2seq.cli._parser("rnn-jax seq2seq")._subparsers._group_actions[0].choices[action]
    flags = [f for f in sub._actions if f.option_strings and f.option_strings[0] not in ("-h", "--unidirectional")]
    assert len(flags) == len(dataclasses.fields(_ACTION_CONFIGS[action]))
    for flag in flags:
        assert flag.help.endswith(")") and ("(default " in flag.help or "(required)" in flag.help), flag.help
    with pytest.raises(SystemExit):
        seq2seq.cli_main([action, "--help"])
    printed = " ".join(capsys.readouterr().out.split())  # help lines wrap
    assert printed.count("(default ") + printed.count("(required)") == len(flags)


def test_a_beam_wider_than_the_target_vocabulary_names_the_field():
    seq2seq.decoding.check_vocab_fits_beam(7, pairdata.Vocab.build(["abc"]))  # 3 specials, <unk>, a b c
    with pytest.raises(UserError, match="beam must be at most the target vocabulary size 7, got 8"):
        seq2seq.decoding.check_vocab_fits_beam(8, pairdata.Vocab.build(["abc"]))


def test_impl_and_unroll_flags_reach_the_config():
    parser = seq2seq.cli._parser("rnn-jax seq2seq")
    cfg = seq2seq.config_from_args(parser.parse_args(["train", "--impl", "pallas", "--unroll", "3"]))
    assert (cfg.impl, cfg.unroll) == ("pallas", 3)
    cfg = seq2seq.config_from_args(parser.parse_args(["train", "--unroll", "auto"]))
    assert (cfg.impl, cfg.unroll) == ("auto", None) == (seq2seq.Config().impl, seq2seq.Config().unroll)
    with pytest.raises(UserError, match="impl must be one of"):
        seq2seq.check_config(seq2seq.Config(impl="fast"))


def test_attention_flag_takes_the_topologies_spelling():
    """One table of attention names: the flag's choices are ``topologies.ATTENTIONS``, and its ``none`` builds
    the model without attention."""
    parser = seq2seq.cli._parser("rnn-jax seq2seq")
    assert seq2seq.ATTENTIONS is topologies.ATTENTIONS
    cfg = seq2seq.config_from_args(parser.parse_args(["train", "--attention", "none"]))
    assert cfg.attention == "none" and seq2seq.init_params(cfg, 5, 6, jax.random.key(0)).attention is None
    with pytest.raises(UserError, match="attention must be one of"):
        seq2seq.check_config(seq2seq.Config(attention="dot"))


@pytest.mark.slow
def test_train_step_with_pallas_lowers_for_cuda():
    """seq2seq's own train step (2 bidirectional LSTM encoder layers, Luong attention, dropout, scheduled
    sampling) with ``impl="pallas"`` lowers for CUDA from this CPU machine: a forward and a backward Triton
    kernel per encoder layer and direction; the attention decoder stays on the scan."""
    config = seq2seq.Config(**{**TINY, "hidden_size": 16}, layers=2, dropout=0.1, teacher_forcing=0.5, impl="pallas")
    settings = seq2seq.training._StepSettings.of(config)
    step = seq2seq.training._train_step(settings)
    state = seq2seq.state_template(config, 11, 13, seq2seq.make_optimizer(config, 1))
    B, S_, T_ = 4, 6, 5
    batch = {
        "src": jnp.zeros((B, S_), jnp.int32),
        "src_len": jnp.full((B,), S_, jnp.int32),
        "tgt_in": jnp.zeros((B, T_), jnp.int32),
        "tgt_out": jnp.zeros((B, T_), jnp.int32),
        "tgt_len": jnp.full((B,), T_, jnp.int32),
        "teacher_forcing": np.float32(0.5),
    }
    text = step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2 * 2 * 2
    scan_step = seq2seq.training._train_step(settings._replace(impl="scan"))
    assert "__gpu$xla.gpu.triton" not in scan_step.trace(state, batch).lower(lowering_platforms=("cuda",)).as_text()


def test_length_budget_fits_every_training_pair_with_the_slope_of_long_sources():
    rng = np.random.default_rng(3)
    lengths = [(int(s), int(t)) for s, t in zip(rng.integers(1, 12, 57), rng.integers(1, 20, 57), strict=True)]
    budget = seq2seq.LengthBudget.fit(lengths)
    median = sorted(s for s, _ in lengths)[len(lengths) // 2]  # 57 pairs: the middle one
    slope = max(t / s for s, t in lengths if s >= median)
    assert slope <= budget.ratio < slope + 0.01 + 1e-9 and round(budget.ratio * 100) == budget.ratio * 100
    assert all(budget(s) >= t + 1 for s, t in lengths)  # every target and its </s> fit
    assert any(budget(s) - 2 == t + 1 for s, t in lengths)  # ... and the constant is the smallest with 2 spare
    assert seq2seq.LengthBudget(1.43, 13)(60) == 99 and seq2seq.LengthBudget(1.0, 3)(8) == 11


def _biased(model, eos_bias: float):
    """``model`` with ``eos_bias`` added to the end token's logit: -1e4 never ends, +1e4 ends at once."""
    out = model.params.out
    return model._replace(params=model.params._replace(out=out._replace(b=out.b.at[pairdata.EOS].add(eos_bias))))


def test_decoding_length_follows_the_input_and_a_cut_output_is_flagged(trained):
    _, out = trained
    model = seq2seq.load_model(str(out))
    assert model.length_budget == seq2seq.LengthBudget(1.0, 3) and model.max_source_len == 5 and model.max_len == 8
    never = _biased(model, -1e4)
    # alone, a source padded to 8 decodes 11 tokens, one of 30 (padded to 32) 35: far past the old limit of 8
    # (in one batch, both would run to the budget of the longer)
    (short,), (long,) = (
        seq2seq.translate_each(never, ["abc"], beam=2),
        seq2seq.translate_each(never, ["abcde" * 6], beam=2),
    )
    assert (len(short.output), len(long.output)) == (model.length_budget(8), model.length_budget(32)) == (11, 35)
    assert short.cut and long.cut and long.unseen_length and not short.unseen_length and short.error is None
    assert "cut at the length limit" in short.notice()
    with pytest.warns(seq2seq.TranslationWarning, match=r"output for 'abc' cut at the length limit"):
        assert seq2seq.translate(never, ["abc"], beam=2) == [short.output]
    (empty,) = seq2seq.translate_each(_biased(model, 1e4), ["abc"])
    assert empty.empty and not empty.cut and empty.output == "" and "empty output for 'abc'" in empty.notice()
    with pytest.warns(seq2seq.TranslationWarning, match="empty output"):
        assert seq2seq.translate(_biased(model, 1e4), ["abc"]) == [""]
    good = seq2seq.translate_each(model, ["abcde"])[0]
    assert good == seq2seq.Translation("abcde", "edcba") and good.notice() is None


def test_inputs_are_refused_one_by_one_with_the_reason_and_a_length_cap(trained, capsys):
    _, out = trained
    model = seq2seq.load_model(str(out))
    huge = "ab" * 50_000
    results = seq2seq.translate_each(model, ["abc", "a#c", "", huge, "CBA"])
    assert [r.output for r in results] == ["cba", "", "", "", "abc"]
    assert results[1].error.startswith("input 'a#c' has symbols outside the vocabulary: ['#']; known: a b c")
    assert results[2].error == "input '' is empty"
    assert results[3].error == (
        "input 'abababababababababababab'... (100000 characters) has 100000 characters; this model reads at "
        f"most {seq2seq.MAX_INPUT_LEN}: split it"
    )
    with pytest.raises(UserError, match="reads at most 4: split it"):
        seq2seq.translate(model, ["abcde"], max_input_len=4)
    # the command line prints every input it can translate and names each other on stderr
    assert cli.main(["seq2seq", "translate", "--ckpt", str(out), "abc", "a#c", huge, "CBA"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "abc\tcba\nCBA\tabc\n"
    err = captured.err.splitlines()
    assert err[0].startswith("rnn-jax seq2seq: skipped: input 'a#c' has symbols outside the vocabulary")
    assert err[1].startswith("rnn-jax seq2seq: skipped: input 'abab") and len(err[1]) < 200
    assert err[2] == "rnn-jax seq2seq: 2 of 4 inputs could not be translated" and len(err) == 3


def test_checkpoints_store_the_length_budget_and_older_ones_get_a_generous_one(trained, tmp_path):
    _, out = trained
    meta = checkpoint.read_meta(out / "best.ckpt")
    assert meta["length_budget"] == [1.0, 3] and meta["max_source_len"] == 5
    model = seq2seq.load_model(str(out))
    path = seq2seq.export_model(model, tmp_path / "m.ckpt")
    assert seq2seq.load_model(path)[7:] == model[7:]  # max_len, length_budget, max_source_len
    older = seq2seq.export_model(model._replace(length_budget=None, max_source_len=None), tmp_path / "old.ckpt")
    assert "length_budget" not in checkpoint.read_meta(older)
    loaded = seq2seq.load_model(older)
    assert loaded.length_budget == seq2seq.LengthBudget(2.0, model.max_len) and loaded.max_source_len is None


# A user's cell (an IndRNN: each unit recurs on itself alone), importable as "tests.test_seq2seq:indrnn_cell".
class IndParams(NamedTuple):
    W: jax.Array  # [I, H]
    u: jax.Array  # [H]: each unit's own recurrent weight
    b: jax.Array  # [H]


def _ind_init(key, in_size, hidden_size, dtype=jnp.float32):
    k_w, k_u = jax.random.split(key)
    W = jax.random.normal(k_w, (in_size, hidden_size), dtype) / np.sqrt(in_size)
    return IndParams(W, jax.random.uniform(k_u, (hidden_size,), dtype), jnp.zeros((hidden_size,), dtype))


def _ind_step(p, h_H, u_H):
    h_H = jnp.tanh(u_H + p.u * h_H)
    return h_H, h_H


indrnn_cell = Cell(
    "indrnn",
    project=lambda p, x_I: x_I @ p.W + p.b,
    step=_ind_step,
    readout=identity_readout,
    init_carry=lambda p: jnp.zeros_like(p.b),
    input_size=lambda p: p.W.shape[0],
    init=_ind_init,
)


def _user_run(cell, out, **kw):
    """A few steps of reversal with ``cell``: tiny sizes, by default two layers, bidirectional, Luong attention."""
    kw = dict(dict(layers=2, embed_size=4, hidden_size=5, batch_size=8, steps=3, eval_every=3, eval_size=8,
                   eval_batch_size=8, warmup_steps=1, verbose=False), **kw)  # fmt: skip
    config = seq2seq.Config(task="reverse", cell=cell, out=str(out), **kw)
    task = make_reverse(n_train=40, n_val=8, n_test=8, max_len=4)
    return seq2seq.train(config, task=task, log=lambda msg: None)


def _assert_translates_greedily(model, params):
    """``translate`` of ``model`` is the greedy decoding (a Python loop over the decoder step) of ``params``."""
    words = ["abc", "d", "dcba"]
    got = seq2seq.translate_each(model, words)
    for word, result in zip(words, got, strict=True):
        ids = _greedy_reference(params, model.src_vocab.encode(tuple(word)), model.length_budget(8))
        assert result.output == "".join(model.tgt_vocab.decode(ids))


@pytest.mark.slow
def test_user_cell_trains_checkpoints_its_import_path_and_loads_back(tmp_path, capsys):
    result = _user_run(indrnn_cell, tmp_path / "ind")
    params = result.model.params
    enc, dec = params.encoder[1].bw, params.decoder[0]
    assert isinstance(enc, topologies.CellParams) and enc.cell is indrnn_cell and enc.params.W.shape == (10, 5)
    assert dec.cell is indrnn_cell and isinstance(dec.params, IndParams)
    meta = checkpoint.read_meta(tmp_path / "ind" / "latest.ckpt")
    assert meta["config"]["cell"] == "tests.test_seq2seq:indrnn_cell"
    assert meta["cell"] == {"name": "indrnn", "builtin": False, "import_path": "tests.test_seq2seq:indrnn_cell",
                            "module": "tests.test_seq2seq"}  # fmt: skip
    model = seq2seq.load_model(result.out, "latest")  # found by its import path
    assert model.config.cell is indrnn_cell
    jax.tree.map(np.testing.assert_array_equal, model.params, params)
    _assert_translates_greedily(model, params)
    given = seq2seq.load_model(result.out, "latest", cell=indrnn_cell)
    jax.tree.map(np.testing.assert_array_equal, given.params, params)
    exported = seq2seq.load_model(seq2seq.export_model(model, tmp_path / "ind.ckpt", dtype="float32"))
    assert exported.config.cell is indrnn_cell
    jax.tree.map(np.testing.assert_array_equal, exported.params, params)
    assert seq2seq.cli_main(["translate", "--ckpt", result.out, "--which", "latest", "abc"]) == 0  # imports the cell
    assert capsys.readouterr().out.split("\t")[1].rstrip("\n") == seq2seq.translate_each(model, ["abc"])[0].output
    assert _user_run(indrnn_cell, tmp_path / "ind", steps=5, resume=True).steps == 5


@pytest.mark.slow
def test_user_cell_without_import_path_is_passed_to_load_model(tmp_path):
    local = dataclasses.replace(indrnn_cell, name="local_ind")  # made in a function: nothing can import it
    result = _user_run(local, tmp_path / "local", layers=1, bidirectional=False, attention="bahdanau")
    with pytest.raises(UserError, match=r"trained with the user cell 'local_ind' defined in tests.test_seq2seq; "
                                        r"pass it: load_model\(.*, cell=<that Cell>\)") as err:  # fmt: skip
        seq2seq.load_model(result.out, "latest")
    assert "\n" not in str(err.value)
    model = seq2seq.load_model(result.out, "latest", cell=local)
    jax.tree.map(np.testing.assert_array_equal, model.params, result.model.params)
    _assert_translates_greedily(model, result.model.params)


def _pair_step(p, carry, u_H):
    h_H = jnp.tanh(u_H + p.u * carry[0])
    return (h_H, h_H), h_H


def test_user_cells_that_cannot_train_are_refused_in_one_line_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match=r"^the cell 'no_init' has no init; the trainer needs one: Cell\(\.\.\., init="):
        _user_run(dataclasses.replace(indrnn_cell, name="no_init", init=None), tmp_path / "n")
    pair = dataclasses.replace(indrnn_cell, name="pair", step=_pair_step, init_carry=lambda p: (p.b, p.b))
    with pytest.raises(UserError, match=r"the cell 'pair' .* carry must be the hidden state \(one array\)"):
        _user_run(pair, tmp_path / "n")
    with pytest.raises(UserError, match="cannot import the cell 'no_such_pkg:cell'"):
        _user_run("no_such_pkg:cell", tmp_path / "n")
    assert not (tmp_path / "n").exists()
