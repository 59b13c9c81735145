"""Metrics over decoded sequences: edit distance against a brute-force recursion, multi-reference scoring."""

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnn_jax.metrics import closest_reference, edit_distance, exact_match, score, token_error_rate


def _brute_edit_distance(a, b):
    @functools.cache
    def d(i, j):
        if i == 0 or j == 0:
            return i + j
        return min(d(i - 1, j) + 1, d(i, j - 1) + 1, d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))

    return d(len(a), len(b))


@given(st.text("abc", max_size=7), st.text("abc", max_size=7))
def test_edit_distance_matches_recursion_and_is_symmetric(a, b):
    assert edit_distance(a, b) == _brute_edit_distance(a, b) == edit_distance(b, a)


def test_edit_distance_known_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance((), ("HH", "AH")) == 2
    assert edit_distance(("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW")) == 1


def test_multiple_references_count_any_match_and_closest_for_per():
    refs = [[("R", "EH", "D"), ("R", "IY", "D")], [("HH", "AH", "L", "OW")]]
    hyps = [("R", "IY", "D"), ("HH", "AH", "L")]
    assert exact_match(hyps, refs) == 0.5
    # One deletion against a 4-phone reference; the first word matches its second reference exactly.
    assert token_error_rate(hyps, refs) == pytest.approx(1 / 7)
    s = score(hyps, refs)
    assert (s.exact_match, s.wer, s.n) == (0.5, 0.5, 2)
    assert closest_reference(("A",), [("A", "B", "C"), ("B",)]) == (1, 1)


def test_token_error_rate_is_ratio_of_totals():
    refs = [[("a",)], [("b", "c", "d", "e", "f", "g", "h", "i", "j")]]
    hyps = [("x",), ("b", "c", "d", "e", "f", "g", "h", "i", "j")]
    assert token_error_rate(hyps, refs) == pytest.approx(1 / 10)  # not the mean of 1/1 and 0/9


def test_bad_input():
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        exact_match([("a",), ("b",)], [[("a",)]])
    with pytest.raises(ValueError, match="no reference"):
        token_error_rate([("a",)], [[]])
    with pytest.raises(ValueError, match="no hypotheses"):
        exact_match([], [])
