"""The digits experiments' models on tiny random data (shapes, masks, causality, gradients), and each
experiment end to end for a few steps (files written, JSON last on stdout). The full runs are not here."""

import importlib.util
import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cli, harness
from rnn_jax.apps import digits
from rnn_jax.data import images as imagedata
from rnn_jax.errors import UserError

H = 5


def _images(key, n):
    return jax.random.uniform(key, (n, 8, 8))


def _all_grads_nonzero(grads):
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.isfinite(np.asarray(g)).all(), path
        assert np.abs(np.asarray(g)).sum() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


# ---------------------------------------------------------------------------------------------------
# Many to one
# ---------------------------------------------------------------------------------------------------


def test_classifier_prefix_equals_many_to_one_with_lengths():
    k1, k2 = jax.random.split(jax.random.key(1))
    params = digits.classifier_init(k1, in_size=8, hidden_size=H, cell="lstm")  # a pytree carry
    x = _images(k2, 1)[0]
    prefix = jax.jit(digits.prefix_logits)(params, x)
    assert prefix.shape == (8, 10)
    lengths = jnp.arange(1, 9, dtype=jnp.int32)
    by_length = jax.jit(jax.vmap(digits.classifier_logits, (None, 0, 0)))
    xs = jnp.broadcast_to(x, (8, 8, 8))
    np.testing.assert_allclose(by_length(params, xs, lengths), prefix, rtol=1e-5, atol=1e-6)
    # Rows past each length are never read: overwrite them and nothing changes.
    garbage = jnp.where(jnp.arange(8)[None, :, None] >= lengths[:, None, None], 9.0, xs)
    np.testing.assert_allclose(by_length(params, garbage, lengths), prefix, rtol=1e-5, atol=1e-6)
    # Without lengths: the whole image, i.e. the last row of prefix_logits.
    np.testing.assert_allclose(digits.classifier_logits(params, x), prefix[-1], rtol=1e-5, atol=1e-6)


def test_classifier_loss_gradients():
    k1, k2 = jax.random.split(jax.random.key(2))
    params = digits.classifier_init(k1, in_size=1, hidden_size=H)
    xs = imagedata.as_pixels(np.asarray(_images(k2, 3)))
    batch = (xs, jnp.array([1, 4, 9]), jnp.array([64, 5, 17], jnp.int32))
    (loss, aux), grads = jax.jit(jax.value_and_grad(digits.classifier_loss, has_aux=True))(params, batch, None)
    assert loss.shape == () and np.isfinite(loss) and 0 <= aux["accuracy"] <= 1
    _all_grads_nonzero(grads)


# ---------------------------------------------------------------------------------------------------
# One to many: captions
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captioner():
    return digits.captioner_init(jax.random.key(3), hidden_size=H, feature_size=7, embed_size=3, cell="lstm")


def test_caption_loss_masks_padding_and_reaches_every_param(captioner):
    images = _images(jax.random.key(4), 3)
    inputs, targets, lengths = imagedata.caption_tokens(np.array([1, 3, 6]))  # "one", "three", "six": padded
    loss_and_grad = jax.jit(jax.value_and_grad(digits.caption_loss, has_aux=True))
    (loss, aux), grads = loss_and_grad(captioner, (images, inputs, targets, lengths), None)
    padded = np.where(np.arange(6) < lengths[:, None], targets, 5)  # change only the masked targets
    (loss_padded, _), _ = loss_and_grad(captioner, (images, inputs, padded, lengths), None)
    np.testing.assert_allclose(loss, aux["per_char"] * lengths.sum() / 3, rtol=1e-5)  # summed over characters
    np.testing.assert_allclose(loss, loss_padded, rtol=1e-6)
    _all_grads_nonzero(grads)


def test_caption_image_sets_the_initial_state(captioner):
    a, b = _images(jax.random.key(5), 2)
    ha, hb = digits.caption_start(captioner, a), digits.caption_start(captioner, b)
    assert not np.allclose(ha.h, hb.h)
    np.testing.assert_array_equal(ha.c, 0)  # the LSTM's cell state starts at zero


def test_caption_greedy_equals_python_argmax_loop(captioner):
    image = _images(jax.random.key(6), 1)[0]
    out = jax.jit(digits.caption_greedy, static_argnums=2)(captioner, image, 6)
    assert out.tokens.shape == (6,) and 1 <= int(out.length) <= 6
    carry, logits = digits.caption_step(captioner, digits.caption_start(captioner, image), jnp.int32(imagedata.START))
    expected = []
    for _ in range(6):
        token = int(jnp.argmax(logits))
        expected.append(token)
        if token == imagedata.END:
            break
        carry, logits = digits.caption_step(captioner, carry, jnp.int32(token))
    assert np.asarray(out.tokens)[: len(expected)].tolist() == expected


# ---------------------------------------------------------------------------------------------------
# One to many, fed back: generation
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generator():
    return digits.generator_init(jax.random.key(7), hidden_size=H, levels=3)


def test_generator_row_t_depends_only_on_rows_before(generator):
    levels = imagedata.quantize(np.asarray(_images(jax.random.key(8), 1)[0]), 3)
    gen_logits = jax.jit(digits.generator_logits)
    logits = gen_logits(generator, 4, levels)
    assert logits.shape == (8, 8, 3)
    changed = levels.copy()
    changed[5] = 2 - changed[5]
    other = gen_logits(generator, 4, changed)
    np.testing.assert_allclose(other[:6], logits[:6], atol=1e-6)  # rows 0..5 see rows < 5 only
    assert not np.allclose(other[6], logits[6])
    assert not np.allclose(gen_logits(generator, 5, levels)[0], logits[0])  # the class sets h_0


def test_generate_feeds_its_rows_back(generator):
    # At temperature 0 each drawn row is the argmax given the rows drawn before it, which is exactly
    # what teacher forcing on the drawn image predicts.
    draw = jax.jit(digits.generate_image, static_argnums=3)
    drawn = draw(generator, 2, jax.random.key(0), 0.0)
    assert drawn.shape == (8, 8)
    levels = np.rint(np.asarray(drawn) * 2).astype(np.int32)
    np.testing.assert_allclose(levels / 2, drawn, atol=1e-6)  # values on the grey-level grid
    np.testing.assert_array_equal(np.argmax(jax.jit(digits.generator_logits)(generator, 2, levels), -1), levels)
    a = draw(generator, 2, jax.random.key(1), 1.0)
    np.testing.assert_array_equal(a, draw(generator, 2, jax.random.key(1), 1.0))
    assert not np.array_equal(a, draw(generator, 2, jax.random.key(2), 1.0))


def test_generator_loss_gradients(generator):
    levels = imagedata.quantize(np.asarray(_images(jax.random.key(9), 3)), 3)
    (loss, aux), grads = jax.jit(jax.value_and_grad(digits.generator_loss, has_aux=True))(
        generator, (jnp.array([0, 3, 8]), levels), None
    )
    np.testing.assert_allclose(loss, 64 * aux["per_pixel"], rtol=1e-5)  # the sum over the 64 pixels
    _all_grads_nonzero(grads)


# ---------------------------------------------------------------------------------------------------
# Glimpses
# ---------------------------------------------------------------------------------------------------


def test_image_windows_match_sliding_patches():
    images = np.asarray(_images(jax.random.key(10), 2))
    expected, _ = imagedata.sliding_patches(images, 3)
    np.testing.assert_array_equal(
        jax.jit(jax.vmap(digits.image_windows, (0, None)), static_argnums=1)(images, 3), expected
    )


def test_glimpse_shapes_looks_and_gradients():
    hard = True  # the soft variant runs end to end below
    params = digits.glimpse_init(jax.random.key(11), n_parts=25, part_size=16, hidden_size=H, n_classes=10)
    images = _images(jax.random.key(12), 3)
    fn = jax.jit(jax.vmap(lambda p, x: digits.glimpse_logits(p, x, patch=4, glimpses=3, hard=hard), (None, 0)))
    logits, looks = fn(params, images)
    assert logits.shape == (3, 10) and looks.shape == (3, 3, 25)
    np.testing.assert_allclose(looks.sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(looks.max(-1), 1, rtol=1e-5)  # one window per step
    loss_fn = partial(digits.glimpse_class_logits, patch=4, glimpses=3, hard=hard)
    grads = jax.jit(
        jax.grad(lambda p: digits.classification_loss(loss_fn, p, (images, jnp.array([0, 1, 2])), None)[0])
    )(params)
    _all_grads_nonzero(grads)


# ---------------------------------------------------------------------------------------------------
# Many to many: per-frame labels
# ---------------------------------------------------------------------------------------------------


def test_video_labels_are_causal_and_trainable():
    params = digits.video_init(jax.random.key(13), hidden_size=H)
    frames = jnp.asarray(
        imagedata.video_frames(np.asarray(_images(jax.random.key(14), 2)), n_frames=5, noise=0.2, occlusion=2)
    )
    video_logits = jax.jit(jax.vmap(digits.video_logits, (None, 0)))
    logits = video_logits(params, frames)
    assert logits.shape == (2, 5, 10)
    later = video_logits(params, frames.at[:, 3].set(1.0))
    np.testing.assert_allclose(later[:, :3], logits[:, :3], atol=1e-6)  # frame 3 cannot change earlier labels
    assert not np.allclose(later[:, 3], logits[:, 3])
    labels = np.array([2, 7])
    (loss, _), grads = jax.jit(jax.value_and_grad(digits.video_loss, has_aux=True))(params, (frames, labels), None)
    # Every frame of a video carries the video's label, all frames weighted alike (float64 numpy reference).
    z = np.asarray(logits, np.float64)
    log_p = z - z.max(-1, keepdims=True) - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        loss, -log_p[np.arange(2)[:, None], np.arange(5)[None, :], labels[:, None]].mean(), rtol=1e-5
    )
    _all_grads_nonzero(grads)


# ---------------------------------------------------------------------------------------------------
# The experiments end to end, a few steps each (the real runs are in docs/digits.md)
# ---------------------------------------------------------------------------------------------------

TINY = ["--steps", "2", "--hidden-size", "5", "--batch-size", "7", "--no-progress"]
EXTRA = {
    "classify": ["--train-lengths", "random"],
    "caption": ["--feature-size", "6", "--embed-size", "3"],
    "glimpse": ["--patch", "3", "--glimpses", "2", "--cell", "lstm", "--no-hard"],
    "video": ["--frames", "3", "--cell", "vanilla"],
}


# generate is left out (it trains two models: ~15 s of compiles); its model is tested above, and the
# whole run is in docs/digits.md.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["classify", "caption", "glimpse", "video"])
def test_experiment_runs_end_to_end(name, tmp_path, capsys):
    pytest.importorskip("sklearn")
    out = tmp_path / name
    assert cli.main(["digits", name, *TINY, *EXTRA[name], "--out-dir", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads(last)
    assert metrics["experiment"] == name
    assert (out / f"{name}.png").stat().st_size > 1000
    assert (out / f"{name}.png").stat().st_size < 200_000
    assert json.loads((out / f"{name}.json").read_text())["config"]["steps"] == 2
    assert (out / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption", "--batch-size", "5000"], "exceeds"),
        (["generate", "--temperature", "-1"], "temperature"),
        (["glimpse", "--patch", "9"], "patch"),
        (["video", "--occlusion", "9"], "occlusion"),
    ],
)
def test_bad_flags_are_one_line_errors(args, message, capsys):
    assert cli.main(["digits", *args, "--steps", "1", "--no-progress", "--out-dir", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "args, message",
    [(["classify", "--cell", "rnn"], "invalid choice: 'rnn'"), (["classify", "--read", "columns"], "invalid choice")],
)
def test_flags_outside_their_choices_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["digits", *args, "--steps", "1"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_python_errors_name_config_fields(tmp_path):
    with pytest.raises(UserError, match=r"cell must be one of \['vanilla', 'lstm', 'gru'\], got 'rnn'"):
        digits.classify(digits.ClassifyConfig(cell="rnn", steps=1, out=str(tmp_path / "x")))
    with pytest.raises(UserError, match="read must be 'rows' or 'pixels', got 'columns'"):
        digits.classify(digits.ClassifyConfig(read="columns", steps=1, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()  # a refused config writes nothing


def test_experiment_script_overrides_go_through_the_harness(tmp_path):
    spec = importlib.util.spec_from_file_location("digits_script", Path(__file__).parents[1] / "experiments/digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "c.json").write_text('{"hidden_size": 9, "read": "pixels"}')
    configs = script._parse(["classify", "video", "out_dir=o", "steps=3", "--config", str(tmp_path / "c.json")])
    assert configs["classify"] == digits.ClassifyConfig(hidden_size=9, read="pixels", out="o", steps=3)
    assert configs["video"] == digits.VideoConfig(hidden_size=9, out="o", steps=3)  # read: a classify field only
    with pytest.raises(UserError, match=r"no named experiment has the field\(s\) \['read'\]"):
        script._parse(["video", "read=rows"])


# ---------------------------------------------------------------------------------------------------
# run's options (impl, unroll) in every training loss
# ---------------------------------------------------------------------------------------------------


def _loss_cases(captioner, generator):
    images = _images(jax.random.key(20), 3)
    labels = jnp.array([1, 4, 9])
    inputs, targets, lengths = imagedata.caption_tokens(np.array([1, 3, 6]))
    frames = jnp.asarray(imagedata.video_frames(np.asarray(images), n_frames=3, noise=0.2, occlusion=2))
    glimpse = digits.glimpse_init(jax.random.key(21), n_parts=25, part_size=16, hidden_size=H, n_classes=10)
    glimpse_logits = partial(digits.glimpse_class_logits, patch=4, glimpses=2, hard=True)
    return {
        "classifier": (digits.classifier_loss, digits.classifier_init(jax.random.key(22), in_size=8, hidden_size=H),
                       (imagedata.as_rows(np.asarray(images)), labels, jnp.array([8, 3, 1], jnp.int32))),
        "caption": (digits.caption_loss, captioner, (images, inputs, targets, lengths)),
        "generator": (digits.generator_loss, generator, (labels, imagedata.quantize(np.asarray(images), 3))),
        "glimpse": (partial(digits.classification_loss, glimpse_logits), glimpse, (images, labels)),
        "video": (digits.video_loss, digits.video_init(jax.random.key(23), hidden_size=H), (frames, labels)),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classifier", "caption", "generator", "glimpse", "video"])
def test_run_options_reach_every_training_loss(name, captioner, generator):
    """Each loss with ``impl="scan", unroll=2`` equals the default in value and gradient (float32 tolerance),
    and an unknown ``impl`` reaches ``run``'s check."""
    loss, params, batch = _loss_cases(captioner, generator)[name]
    grad = jax.value_and_grad(loss, has_aux=True)
    (value, _), grads = grad(params, batch, None)
    (value_o, _), grads_o = grad(params, batch, None, impl="scan", unroll=2)
    np.testing.assert_allclose(value_o, value, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads_o, grads)
    with pytest.raises(UserError, match="impl must be one of"):
        loss(params, batch, None, impl="fast")


def test_impl_and_unroll_are_flags_and_pallas_is_refused_naming_scan(tmp_path):
    cfg = harness.config_from_args(digits.ClassifyConfig, {"impl": "scan", "unroll": 4})
    assert (cfg.impl, cfg.unroll) == ("scan", 4) and (digits.VideoConfig().impl, digits.VideoConfig().unroll) == (
        "auto",
        None,
    )
    with pytest.raises(UserError, match="impl='pallas' cannot train the digits models.*use impl='scan'"):
        digits.classify(digits.ClassifyConfig(impl="pallas", steps=1, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
