"""docs/cells.md runs as written, and its IndRNN equals a float64 Python loop."""

import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as R

# Its module-scoped fixtures train or compile once: under pytest-xdist the file stays on one worker.
pytestmark = [pytest.mark.xdist_group("docs_cells"), pytest.mark.slow]  # the page trains a char-LM

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cells.md"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """Every ```python block of the page, run in order in one namespace (each block's asserts hold), in a
    fresh directory: the page trains a char-LM into runs/."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 9, "the page lost its examples"
    namespace: dict = {"__name__": "docs_cells"}
    here, where = os.getcwd(), tmp_path_factory.mktemp("docs_cells")
    namespace["__test_dir__"] = where
    os.chdir(where)
    try:
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace


def _python_loop(params, xs_BTI, lengths=None, reverse=False):
    """h_t = relu(x_t W + u * h_{t-1} + b), one example and one step at a time, in float64 numpy."""
    W, u, b = (np.asarray(a, np.float64) for a in params)
    B, T, _ = xs_BTI.shape
    ys, finals = np.zeros((B, T, W.shape[1])), np.zeros((B, W.shape[1]))
    for i in range(B):
        n = T if lengths is None else int(lengths[i])
        h = np.zeros(W.shape[1])
        for t in reversed(range(n)) if reverse else range(n):
            h = np.maximum(np.asarray(xs_BTI[i, t], np.float64) @ W + u * h + b, 0.0)
            ys[i, t] = h
        finals[i] = h
    return finals, ys


def test_page_runs(page):
    assert isinstance(page["indrnn_cell"], R.Cell) and page["indrnn_cell"].saved == ("indrnn_pre",)


def test_page_trains_its_cell_with_the_charlm_trainer(page):
    """The trained IndRNN language model learnt something of its toy text and loads back as it was saved."""
    result, model = page["result"], page["model"]
    assert result.val_loss < np.log(result.vocab.size) - 0.5  # better than a uniform guess
    jax.tree.map(np.testing.assert_array_equal, model.params, result.params)
    with pytest.raises(R.UserError, match="defined in docs_cells; pass it: load_model"):
        page["charlm"].load_model(page["__test_dir__"] / result.out)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("form", ["plain function", "Cell", "Cell jit hoisted"])
def test_indrnn_equals_python_loop(page, form, reverse, x64):
    B, T, I, H = 3, 7, 4, 5
    params = page["indrnn_init"](jax.random.key(5), I, H, jnp.float64)
    xs = jax.random.normal(jax.random.key(6), (B, T, I), jnp.float64)
    lengths = jnp.array([7, 2, 5])
    kw = dict(lengths=lengths, reverse=reverse)
    if form == "plain function":
        final, ys = R.run(page["indrnn"], params, jnp.zeros((B, H), jnp.float64), xs, **kw)
    elif form == "Cell":
        final, ys = R.run(page["indrnn_cell"], params, None, xs, hoist=False, **kw)
    else:
        final, ys = jax.jit(lambda p, x: R.run(page["indrnn_cell"], p, None, x, hoist=True, **kw))(params, xs)
    final_ref, ys_ref = _python_loop(params, np.asarray(xs), np.asarray(lengths), reverse)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(final, final_ref, rtol=1e-12, atol=1e-14)


def test_page_trains_its_cell_with_the_seq2seq_trainer(page):
    """The seq2seq run of the page's IndRNN loads back as it was trained, and only with the cell passed."""
    s2s, model = page["s2s"], page["s2s_model"]
    assert model.config.cell is page["indrnn_cell"]
    jax.tree.map(np.testing.assert_array_equal, model.params, s2s.model.params)
    with pytest.raises(R.UserError, match="defined in docs_cells; pass it: load_model"):
        page["seq2seq"].load_model(page["__test_dir__"] / "runs" / "indrnn-s2s")
