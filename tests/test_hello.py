"""The lecture's first example: the vanilla RNN learns "hello" and samples it back."""

import json

import numpy as np
import pytest

from rnn_jax import cli
from rnn_jax.apps import hello
from rnn_jax.errors import UserError


def test_vanilla_rnn_learns_hello_and_samples_it_back():
    result = hello.train(hello.HelloConfig(steps=150))
    assert result.predicted == "ello"  # "l" is followed once by "l", once by "o": only the hidden state knows which
    assert result.losses[0] > 4 * np.log(4) * 0.8 and result.losses[-1] < 0.05  # ~4 ln 4 untrained, summed over 4 steps
    assert hello.sample(result.params, "h", 4) == "hello"
    # The loss trained on is the lecture's: recomputed step by step in float64 numpy.
    p = {k: np.asarray(v, np.float64) for k, v in result.params._asdict().items()}
    h, expected = np.zeros(3), 0.0
    for x, y in zip("hell", "ello", strict=True):
        h = np.tanh(np.eye(4)[hello.VOCAB.index(x)] @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
        logits = h @ p["W_hy"] + p["b_y"]
        expected += np.log(np.exp(logits).sum()) - logits[hello.VOCAB.index(y)]
    tokens = hello.encode("hello")
    np.testing.assert_allclose(
        float(hello.sequence_loss(result.params, tokens[:-1], tokens[1:])), expected, rtol=1e-4, atol=1e-6
    )


def test_cli_prints_prediction_sample_and_json(capsys):
    assert cli.main(["hello", "--steps", "150", "--hidden", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["predicted"] == "ello" and summary["sampled"] == "hello"
    assert summary["final_loss"] < summary["first_loss"] / 50


def test_bad_words_are_refused():
    with pytest.raises(UserError, match=r"characters \['x'\] are not in the vocabulary"):
        hello.train(hello.HelloConfig(word="hex"))
    with pytest.raises(UserError, match="word needs at least two characters"):
        hello.train(hello.HelloConfig(word="h"))
    with pytest.raises(UserError, match="hidden_size must be an integer >= 1"):
        hello.train(hello.HelloConfig(hidden_size=0))
