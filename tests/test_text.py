"""Character data: vocabulary, corpora (loopback download only), split, TBPTT streams, random windows."""

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from rnn_jax.data import text as textdata
from rnn_jax.errors import UserError
from rnn_jax.harness import Batcher


def test_vocab_round_trip_and_unknown_characters():
    vocab = textdata.Vocab.from_text("hello, wörld\n")
    assert vocab.chars == "\n ,dehlorwö" and vocab.size == 11
    ids = vocab.encode("world, hello\n")
    assert ids.dtype == np.int32 and vocab.decode(ids) == "world, hello\n"
    with pytest.raises(UserError, match=r"\['X', 'z'\] are not in the vocabulary"):
        vocab.encode("hello Xz")


def test_load_text_errors_are_one_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    cases = {
        tmp_path / "latin1.txt": "not UTF-8 text: byte 0xe9 at offset 3",
        tmp_path / "empty.txt": "is empty",
        tmp_path / "missing.txt": "no such file",
        tmp_path: "is a directory",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            textdata.load_text(path)
        assert "\n" not in str(err.value)


def test_split_and_size_checks():
    ids = np.arange(100, dtype=np.int32)
    split = textdata.split_text(ids)
    assert len(split.train) == 90 and split.val[0] == 90
    textdata.check_sizes(split, batch=3, seq_len=29)  # 3 * 30 = 90 characters: exactly one batch
    with pytest.raises(UserError, match="too short: 100 characters, of which 90 for training; .* needs 93"):
        textdata.check_sizes(split, batch=3, seq_len=30)
    with pytest.raises(UserError, match="batch must be a positive integer, got 0"):
        textdata.check_sizes(split, batch=0, seq_len=5)


def test_streams_continue_across_batches_and_reset_on_wrap():
    ids = np.arange(3 * 23, dtype=np.int32)  # 3 streams of 23: (23 - 1) // 5 = 4 windows each
    batches = textdata.StreamBatches(ids, batch=3, seq_len=5)
    assert batches.windows == 4
    b0, b1 = batches(0), batches(1)
    assert b0.inputs_BT.shape == (3, 5) and b0.reset_B.tolist() == [True] * 3 and not b1.reset_B.any()
    np.testing.assert_array_equal(b0.inputs_BT[:, 0], [0, 23, 46])  # row b reads stream b
    np.testing.assert_array_equal(b1.inputs_BT[:, 0], b0.inputs_BT[:, -1] + 1)  # and continues it
    np.testing.assert_array_equal(b0.targets_BT, b0.inputs_BT + 1)
    wrapped = batches(4)
    assert wrapped.reset_B.all()
    np.testing.assert_array_equal(wrapped.inputs_BT, b0.inputs_BT)  # a pure function of the cursor
    np.testing.assert_array_equal(batches(7).inputs_BT, batches(3).inputs_BT)
    assert isinstance(batches, Batcher) and batches.items_per_step == 3 * 5  # the harness's batcher protocol


def test_random_windows_are_deterministic_per_cursor():
    ids = np.arange(500, dtype=np.int32)
    windows = textdata.RandomWindows(ids, batch=3, seq_len=7, seed=5)
    a, b = windows(11), windows(11)
    np.testing.assert_array_equal(a.inputs_BT, b.inputs_BT)
    np.testing.assert_array_equal(a.targets_BT, a.inputs_BT + 1)
    assert a.reset_B.all() and not np.array_equal(windows(12).inputs_BT, a.inputs_BT)
    assert isinstance(windows, Batcher) and windows.items_per_step == 3 * 7


def test_eval_windows_predict_every_character_once():
    ids = np.arange(1, 102, dtype=np.int32)  # 101 characters: 100 predictions
    x, y, m = textdata.eval_windows(ids, streams=4, window=5)
    assert x.shape == (5, 4, 5) and m.all()  # 5 windows of 4 streams, nothing padded
    per_stream = np.concatenate(list(y), axis=1)  # [streams, 25]
    np.testing.assert_array_equal(per_stream.reshape(-1), ids[1:])
    np.testing.assert_array_equal(np.concatenate(list(x), axis=1).reshape(-1), ids[:-1])


@pytest.mark.parametrize("n, streams, window", [(24, 4, 5), (102, 4, 5), (111, 64, 256), (8, 64, 3), (2, 5, 5)])
def test_eval_windows_count_every_character_when_nothing_divides(n, streams, window):
    ids = np.arange(1, n + 1, dtype=np.int32)  # n - 1 predictions, prime to the streams and the window
    x, y, m = textdata.eval_windows(ids, streams=streams, window=window)
    assert m.sum() == n - 1 and m.dtype == np.float32
    stream_major = lambda a: np.concatenate(list(a), axis=1)  # noqa: E731  [streams, N * W]
    xs, ys, ms = stream_major(x), stream_major(y), stream_major(m)
    np.testing.assert_array_equal(np.sort(ys[ms > 0]), ids[1:])  # every target exactly once
    np.testing.assert_array_equal(xs[ms > 0] + 1, ys[ms > 0])  # each read after its predecessor
    for row_m, row_y in zip(ms, ys, strict=True):  # a stream is one contiguous run, padded at its end only
        k = int(row_m.sum())
        assert row_m[:k].all() and not row_m[k:].any()
        np.testing.assert_array_equal(np.diff(row_y[:k]), np.ones(max(k - 1, 0)))
    with pytest.raises(UserError, match="at least 2 characters"):
        textdata.eval_windows(ids[:1], streams, window)


def test_texts_a_language_model_cannot_learn_are_refused(tmp_path):
    (tmp_path / "nul.bin").write_bytes(b"\x00" * 5000)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "one.txt").write_text("a" * 5000)
    cases = {"nul.bin": "looks like a binary file (a NUL byte at offset 0)",
             "binary.bin": "looks like a binary file (a NUL byte at offset 0)",
             "one.txt": "holds 1 distinct character(s); a language model needs at least 2"}  # fmt: skip
    for name, message in cases.items():
        with pytest.raises(UserError) as err:
            textdata.load_text(tmp_path / name)
        assert message in str(err.value) and str(tmp_path / name) in str(err.value)
    with pytest.raises(UserError, match="the text given holds 1 distinct"):
        textdata.load_corpus(text="zzzz")
    long_text = "to be or not to be\n" * 500  # a text where a path belongs: the message shows its start only
    with pytest.raises(UserError) as err:
        textdata.load_text(long_text)
    assert "'to be or not to be" in str(err.value) and len(str(err.value)) < 300 and "text_path" in str(err.value)
    with pytest.raises(UserError, match="give one text source, not text and text_path"):
        textdata.load_corpus(text="ab", text_path="x.txt")


def test_default_corpus_is_the_named_stdlib_modules_in_order(tmp_path, monkeypatch):
    """The default corpus reads STDLIB_MODULES from the interpreter's stdlib directory: here a stand-in one,
    so the test reads no file outside the repository and its temporary directory."""
    for i, name in enumerate(reversed(textdata.STDLIB_MODULES[1:])):  # the first module missing: skipped
        (tmp_path / f"{name}.py").write_text(f"# {name} {i}\n", encoding="utf-8")
    monkeypatch.setattr(textdata.sysconfig, "get_paths", lambda: {"stdlib": str(tmp_path)})
    text, source = textdata.load_corpus()
    n = len(textdata.STDLIB_MODULES) - 1
    expected = "".join(f"# {name} {n - 1 - i}\n" for i, name in enumerate(textdata.STDLIB_MODULES[1:]))
    assert source.startswith("python-stdlib") and text == expected == textdata.stdlib_corpus()
    for path in tmp_path.iterdir():
        path.unlink()
    with pytest.raises(UserError, match="ships no standard library sources"):
        textdata.stdlib_corpus()


@pytest.fixture
def loopback(tmp_path):
    """A local HTTP server for the download path (never the internet)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_caches(loopback, tmp_path, monkeypatch):
    root, url = loopback
    body = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
    (root / "input.txt").write_text(body)
    sha = hashlib.sha256(body.encode()).hexdigest()
    monkeypatch.setitem(textdata.CORPORA, "tinyshakespeare", (f"{url}/input.txt", sha))
    monkeypatch.setenv("RNN_JAX_CACHE", str(tmp_path / "cache"))
    text, source = textdata.load_corpus("tinyshakespeare")
    assert text == body and source == "tinyshakespeare"
    assert (tmp_path / "cache" / "tinyshakespeare.txt").read_text() == body
    (root / "input.txt").unlink()  # the second time comes from the cache
    assert textdata.load_corpus("tinyshakespeare")[0] == body

    (root / "bad.txt").write_text("tampered")
    with pytest.raises(UserError, match="has SHA-256 .* expected"):
        textdata.download(f"{url}/bad.txt", sha, tmp_path / "other.txt")
    assert not (tmp_path / "other.txt").exists()
    with pytest.raises(UserError, match="could not download"):
        textdata.download(f"{url}/missing.txt", sha, tmp_path / "other.txt")


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(UserError, match="unknown corpus 'shakespeare'; known corpora: python-stdlib, tinyshakespeare"):
        textdata.load_corpus("shakespeare")
