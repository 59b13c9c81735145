"""Pairs: vocabularies, TSV files (splits, errors, length caps), bucketed batches."""

import numpy as np
import pytest

from rnn_jax.apps.seq2seq.tasks import make_reverse
from rnn_jax.data import pairs as pairdata
from rnn_jax.errors import UserError


def _join(tokens):
    return "".join(tokens)


def test_vocab_round_trip_and_unknown_symbol_error():
    v = pairdata.Vocab.build(["abc", "cd"])
    assert v.symbols == (*pairdata.SPECIALS, pairdata.UNK, "a", "b", "c", "d") and v.has_unknown
    ids = v.encode("cab")
    assert ids == [6, 4, 5] and v.decode(ids + [pairdata.EOS, v.encode("d")[0]]) == ("c", "a", "b")
    assert pairdata.Vocab.from_json(v.to_json()) == v
    with pytest.raises(UserError, match=r"'cxz'.*\['x', 'z'\]; known: a b c d$"):
        v.encode("cxz")
    # Evaluating a split the vocabulary was not built from: unseen (and reserved) symbols read as <unk>.
    assert v.encode(["c", "x", "<s>", "a"], unknown=True) == [6, pairdata.UNK_ID, pairdata.UNK_ID, 4]
    assert v.decode([6, pairdata.UNK_ID, 4]) == ("c", pairdata.UNK, "a")  # <unk> stays: it matches no reference
    # A vocabulary written before <unk> existed still loads; there an unseen symbol stays an error.
    old = pairdata.Vocab.from_json(["<pad>", "<s>", "</s>", "a", "b"])
    assert not old.has_unknown and old.encode("ba") == [4, 3]
    with pytest.raises(UserError, match=r"\['x'\]"):
        old.encode("ax", unknown=True)


def test_pairs_file(tmp_path):
    path = tmp_path / "p.tsv"
    lines = ["# comment", "ab\tba", "", "abc\tcba", "ab\tbb", "x\ty", "yz\tzy", "q\tq"]
    path.write_text("\n".join(lines) + "\n")
    task = pairdata.load_pairs_file(path)
    pairs = {_join(p.source): p for p in task.train + task.val + task.test}
    assert pairs["ab"].targets == (tuple("ba"), tuple("bb"))
    assert len(pairs) == 5 and len(task.test) == 1 and len(task.val) == 1
    assert pairdata.load_pairs_file(path).test == task.test


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
        pairdata.load_pairs_file(path)


def test_pairs_file_word_units_reject_reserved_symbols(tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text("a b\tB A\nc\tC\nd\tD\ne\t</s> E\n")
    with pytest.raises(UserError, match=r":4: the reserved symbol '</s>'"):
        pairdata.load_pairs_file(path, source_unit="word", target_unit="word")


def test_batches_cover_every_row_once_with_masks():
    task = make_reverse(n_train=103, n_val=5, n_test=5)
    v = pairdata.Vocab.build(p.source for p in task.train)
    enc = pairdata.encode_pairs(task.train, v, v)
    seen = []
    for b in pairdata.batches(enc, 16, pad_multiple=4):
        assert b.src.shape[0] == 16 and b.src.shape[1] % 4 == 0 and b.tgt_in.shape[1] % 4 == 0
        for r in range(16):
            if b.weight[r] == 0:
                assert b.index[r] == -1 and b.tgt_len[r] == 0
                continue
            i = int(b.index[r])
            seen.append(i)
            s, t, n = enc.sources[i], enc.targets[i], b.tgt_len[r]
            assert list(b.src[r, : b.src_len[r]]) == s and np.all(b.src[r, b.src_len[r] :] == pairdata.PAD)
            assert n == len(t) + 1 and b.tgt_in[r, 0] == pairdata.BOS
            assert (
                list(b.tgt_in[r, 1:n]) == t and list(b.tgt_out[r, : n - 1]) == t and b.tgt_out[r, n - 1] == pairdata.EOS
            )
    assert sorted(seen) == list(range(103))
    shuffled = [int(i) for b in pairdata.batches(enc, 16, rng=np.random.default_rng(0)) for i in b.index if i >= 0]
    assert sorted(shuffled) == list(range(103)) and shuffled != sorted(shuffled)


def test_pairs_file_that_is_not_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes(b"ab\tba\r\nabc\tcba\nna\xefve\tevian\n")
    with pytest.raises(UserError, match=r"is not UTF-8 text \(byte 0xef on line 3\); save it as UTF-8") as err:
        pairdata.load_pairs_file(path)
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
        pairdata.load_pairs_file(_long_line_file(tmp_path, line))


def test_long_lines_are_skipped_and_counted_when_asked(tmp_path):
    path = _long_line_file(tmp_path, "x" * 100_000 + "\tshort\n" + "ok\t" + "z" * 40 + "\n")
    task = pairdata.load_pairs_file(path, skip_long=True, max_target_len=30)
    assert task.skipped_long == 2 and "(2 line(s) over the length caps skipped)" in task.description
    kept = sorted("".join(p.source) for split in (task.train, task.val, task.test) for p in split)
    assert kept == ["ab", "cde", "fgh", "ijkl"]
    assert pairdata.load_pairs_file(path, max_source_len=100_000, max_target_len=40).skipped_long == 0  # raised caps
    with pytest.raises(UserError, match="max_source_len must be an integer >= 1, got 0"):
        pairdata.load_pairs_file(path, max_source_len=0)


def test_the_seq2seq_trainer_passes_its_length_caps_to_the_pairs_file(tmp_path):
    from rnn_jax.apps.seq2seq import config as s2s_config
    from rnn_jax.apps.seq2seq import data as s2s_data

    path = _long_line_file(tmp_path, "x" * 600 + "\tshort\n")
    with pytest.raises(UserError, match="over max_source_len 500"):
        s2s_data.load_config_task(s2s_config.check_config(s2s_config.Config(pairs=str(path))))
    assert (
        s2s_data.load_config_task(
            s2s_config.check_config(s2s_config.Config(pairs=str(path), skip_long=True))
        ).skipped_long
        == 1
    )
    assert (
        s2s_data.load_config_task(
            s2s_config.check_config(s2s_config.Config(pairs=str(path), max_source_len=600))
        ).skipped_long
        == 0
    )
    with pytest.raises(UserError, match="max_target_len must be an integer >= 1, got 0"):
        s2s_config.check_config(s2s_config.Config(pairs=str(path), max_target_len=0))
