"""The digits experiments (the table in :mod:`rnn_jax.apps.digits`): each ``name(config) -> Result``.

Each trains with the harness's :func:`rnn_jax.harness.fit`, evaluates on the fixed test split of
:func:`rnn_jax.data.images.split_digits`, writes ``name.png`` and ``name.json`` (its metrics) into
``config.out`` (``runs/digits/name`` by default, next to the fit loop's ``metrics.jsonl`` and
``loss.png``), and returns the params and the metrics.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import decode, harness, losses, train
from rnn_jax.apps.digits import plots
from rnn_jax.apps.digits.config import (
    CaptionConfig,
    ClassifyConfig,
    GenerateConfig,
    GlimpseConfig,
    Result,
    TrainConfig,
    VideoConfig,
    check_config,
)
from rnn_jax.apps.digits.models import (
    as_sequence,
    caption_greedy,
    caption_loss,
    captioner_init,
    classification_loss,
    classifier_init,
    classifier_logits,
    classifier_loss,
    generate_image,
    generator_init,
    generator_loss,
    glimpse_class_logits,
    glimpse_init,
    glimpse_logits,
    prefix_logits,
    video_init,
    video_logits,
    video_loss,
)
from rnn_jax.data import images as imagedata
from rnn_jax.errors import UserError

__all__ = ["classify", "caption", "generate", "glimpse", "video", "train_classifier", "ImageBatches"]


def _out_dir(cfg: TrainConfig, name: str) -> Path:
    return Path(cfg.out or f"runs/digits/{name}")


class ImageBatches:
    """The harness's :class:`~rnn_jax.harness.Batcher`: ``batches(step)`` is a pure function of the step, so
    a rerun sees the same data in the same order.

    Each epoch is a fresh permutation of the ``n`` training images (seeded by ``(seed, epoch)``);
    ``take(indices, rng)`` builds the batch (``rng`` is seeded by ``(seed, step)`` for per-batch noise).
    """

    def __init__(self, n: int, batch_size: int, seed: int, take):
        self.n, self.items_per_step, self.seed, self.take = n, batch_size, seed, take
        self.per_epoch = n // batch_size

    def __call__(self, step: int):
        epoch, i = divmod(step, self.per_epoch)
        B = self.items_per_step
        idx = np.random.default_rng([self.seed, epoch]).permutation(self.n)[i * B : (i + 1) * B]
        return self.take(idx, np.random.default_rng([self.seed, 1, step]))


def _batches(cfg: TrainConfig, n: int, take) -> ImageBatches:
    return ImageBatches(n, cfg.batch_size, cfg.seed, take)


def _fit(cfg: TrainConfig, params, loss_fn, batches: ImageBatches, out_dir) -> harness.FitResult:
    """AdamW (warm-up over the first tenth of the steps, at most 100) for ``cfg.steps`` on the harness's loop."""
    optimizer = train.make_optimizer(
        cfg.learning_rate,
        total_steps=cfg.steps,
        warmup_steps=min(100, cfg.steps // 10),
        weight_decay=cfg.weight_decay,
    )
    state = train.init_state(params, optimizer, jax.random.key(cfg.seed))
    out = harness.prepare(out_dir, resume=False) if out_dir is not None else None  # the first write, after the checks
    options = harness.FitOptions(steps=cfg.steps, log_every=100, item_name="images", verbose=cfg.verbose)
    loss_fn = partial(loss_fn, impl=cfg.impl, unroll=cfg.unroll)
    return harness.fit(state, train.make_train_step(loss_fn, optimizer), batches, options, out_dir=out)


def _finish(
    name: str, cfg: TrainConfig, params, metrics: dict, fitted: harness.FitResult, png: Path, **extra
) -> Result:
    metrics = {
        "experiment": name,
        **metrics,
        "train_seconds": round(fitted.elapsed_s, 2),
        "train_images_per_s": round(fitted.items_per_s, 1),
        **extra,
        "png": str(png),
        "config": dataclasses.asdict(cfg),
    }
    (png.parent / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    return Result(params, metrics, png)


def _accuracy(logits, labels) -> float:
    return float(losses.token_accuracy(jnp.asarray(logits), jnp.asarray(labels)))


def _on_test_and_val(fn, params, splits: imagedata.DigitSplits, view=lambda images: images):
    """``vmap(fn)`` over the test and the validation images in one compiled call (one compile, not two).

    Returns ``(test_outputs, val_outputs)`` as numpy pytrees.
    """
    n = len(splits.test.labels)
    images = np.concatenate([view(splits.test.images), view(splits.val.images)])
    out = jax.jit(jax.vmap(fn, (None, 0)))(params, jnp.asarray(images))
    return jax.tree.map(lambda a: np.asarray(a[:n]), out), jax.tree.map(lambda a: np.asarray(a[n:]), out)


def train_classifier(cfg: ClassifyConfig, splits: imagedata.DigitSplits | None = None, out_dir=None):
    """Train the many-to-one classifier; returns ``(params, FitResult)`` (used by :func:`generate` too)."""
    splits = imagedata.split_digits(seed=cfg.seed) if splits is None else splits
    check_config(cfg, len(splits.train.labels))
    if cfg.train_lengths not in ("full", "random"):
        raise UserError(f"train_lengths must be 'full' or 'random', got {cfg.train_lengths!r}")
    xs = as_sequence(splits.train.images, cfg.read)
    T = xs.shape[-2]
    params = classifier_init(jax.random.key(cfg.seed), in_size=xs.shape[-1], hidden_size=cfg.hidden_size, cell=cfg.cell)

    def take(idx, rng):
        # "random": each image is cut after 1..T steps (many_to_one's lengths); the label stays the same.
        lengths = rng.integers(1, T + 1, len(idx)) if cfg.train_lengths == "random" else np.full(len(idx), T)
        return xs[idx], splits.train.labels[idx], lengths.astype(np.int32)

    fitted = _fit(cfg, params, classifier_loss, _batches(cfg, len(xs), take), out_dir)
    return fitted.state.params, fitted


def classify(cfg: ClassifyConfig = ClassifyConfig()) -> Result:  # noqa: B008 (frozen, so shared safely)
    """Many to one: feed a digit's rows one at a time, label it from the last output.

    Reports the test accuracy after all rows, and after each number of rows read (the same model and
    head, summarising at an earlier step: ``many_to_one(..., lengths=k)``).
    """
    out = _out_dir(cfg, "classify")
    splits = imagedata.split_digits(seed=cfg.seed)
    params, fitted = train_classifier(cfg, splits, out)
    # The last row of prefix_logits is the many-to-one answer after the whole image (tests check it).
    test_prefix, val_prefix = _on_test_and_val(prefix_logits, params, splits, partial(as_sequence, read=cfg.read))
    acc_by_steps = (test_prefix.argmax(-1) == splits.test.labels[:, None]).mean(0)
    metrics = {
        "test_accuracy": _accuracy(test_prefix[:, -1], splits.test.labels),
        "val_accuracy": _accuracy(val_prefix[:, -1], splits.val.labels),
        f"test_accuracy_by_{cfg.read}_read": [round(float(a), 4) for a in acc_by_steps],
    }
    metrics["target"] = "test_accuracy >= 0.95"
    metrics["target_met"] = metrics["test_accuracy"] >= 0.95
    png = plots.plot_accuracy_curve(
        out / "classify.png",
        acc_by_steps,
        xlabel=f"{cfg.read} read",
        title=f"Many to one: {cfg.cell.upper()} reads a digit by {cfg.read[:-1]}, trained on "
        + ("whole images" if cfg.train_lengths == "full" else "random prefixes"),
    )
    return _finish("classify", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


def caption(cfg: CaptionConfig = CaptionConfig()) -> Result:  # noqa: B008 (frozen, so shared safely)
    """One to many: an image feature initialises the hidden state; the decoder spells the class name.

    Reports the exact match of the greedy captions on the test split: every character and the end
    token right (a caption that stops early or runs on is wrong).
    """
    out = _out_dir(cfg, "caption")
    splits = imagedata.split_digits(seed=cfg.seed)
    check_config(cfg, len(splits.train.labels))
    params = captioner_init(
        jax.random.key(cfg.seed),
        hidden_size=cfg.hidden_size,
        feature_size=cfg.feature_size,
        embed_size=cfg.embed_size,
        cell=cfg.cell,
    )
    train_split = splits.train
    batches = _batches(
        cfg,
        len(train_split.labels),
        lambda idx, rng: (train_split.images[idx], *imagedata.caption_tokens(train_split.labels[idx])),
    )
    fitted = _fit(cfg, params, caption_loss, batches, out)
    params = fitted.state.params

    max_len = imagedata.caption_tokens(np.zeros(1, np.int32))[1].shape[1]
    decoded_test, decoded_val = _on_test_and_val(partial(caption_greedy, max_len=max_len), params, splits)

    def exact(decoded: decode.Decoded, split: imagedata.DigitSplit) -> float:
        _, targets, lengths = imagedata.caption_tokens(split.labels)  # the end token counts: no early stop, no run-on
        return float(losses.exact_match(decoded.tokens, jnp.asarray(targets), lengths=jnp.asarray(lengths)))

    test_match, val_match = exact(decoded_test, splits.test), exact(decoded_val, splits.val)
    captions = [imagedata.decode_caption(t) for t in decoded_test.tokens]
    wrong = [
        (imagedata.CLASS_NAMES[y], c)
        for y, c in zip(splits.test.labels, captions, strict=True)
        if c != imagedata.CLASS_NAMES[y]
    ]
    metrics = {
        "test_exact_match": test_match,
        "val_exact_match": val_match,
        "test_errors": [f"{want}->{got}" for want, got in wrong[:10]],
        "target": "test_exact_match >= 0.95",
        "target_met": test_match >= 0.95,
    }
    png = plots.plot_captions(out / "caption.png", splits.test, captions)
    return _finish("caption", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


def generate(cfg: GenerateConfig = GenerateConfig()) -> Result:  # noqa: B008 (frozen, so shared safely)
    """One to many: draw digits of a requested class row by row; check them with the many-to-one classifier.

    Reports the share of drawn digits that the many-to-one classifier of :func:`classify` (trained here
    on real digits for ``classifier_steps``) labels as the requested class, and the test negative
    log-likelihood of the real digits.
    """
    out = _out_dir(cfg, "generate")
    splits = imagedata.split_digits(seed=cfg.seed)
    check_config(cfg, len(splits.train.labels))
    if cfg.temperature < 0 or cfg.samples_per_class < 1:
        raise UserError(
            f"need temperature >= 0 and samples_per_class >= 1, got {cfg.temperature} and {cfg.samples_per_class}"
        )
    params = generator_init(jax.random.key(cfg.seed), hidden_size=cfg.hidden_size, levels=cfg.levels, cell=cfg.cell)
    train_levels = imagedata.quantize(splits.train.images, cfg.levels)
    batches = _batches(cfg, len(train_levels), lambda idx, rng: (splits.train.labels[idx], train_levels[idx]))
    fitted = _fit(cfg, params, generator_loss, batches, out)
    params = fitted.state.params

    test_levels = jnp.asarray(imagedata.quantize(splits.test.images, cfg.levels))
    test_loss, _ = jax.jit(generator_loss)(params, (jnp.asarray(splits.test.labels), test_levels), None)

    wanted = np.repeat(np.arange(imagedata.NUM_CLASSES), cfg.samples_per_class)
    keys = jax.random.split(jax.random.key(cfg.seed + 1), len(wanted))
    draw = partial(generate_image, temperature=cfg.temperature)
    drawn = jax.jit(jax.vmap(draw, (None, 0, 0)))(params, jnp.asarray(wanted), keys)

    checker_cfg = ClassifyConfig(
        seed=cfg.seed, steps=cfg.classifier_steps, verbose=cfg.verbose, cell="gru", unroll=cfg.unroll, impl=cfg.impl
    )
    checker, _ = train_classifier(checker_cfg, splits)
    # The drawn digits and the real test digits through the checker in one call.
    judge_all = jax.jit(jax.vmap(classifier_logits, (None, 0)))
    checked = np.asarray(judge_all(checker, jnp.concatenate([drawn, jnp.asarray(splits.test.images)])).argmax(-1))
    judged, checker_test = checked[: len(wanted)], checked[len(wanted) :]
    share = float((judged == wanted).mean())
    metrics = {
        "labelled_as_requested": share,
        "labelled_as_requested_by_class": [round(float((judged[wanted == c] == c).mean()), 3) for c in range(10)],
        "checker_test_accuracy": float((checker_test == splits.test.labels).mean()),
        "test_nll_nats_per_image": float(test_loss),
        "target": "labelled_as_requested >= 0.80",
        "target_met": share >= 0.80,
    }
    png = plots.plot_samples(
        out / "generate.png", np.asarray(drawn), wanted, judged, columns=min(10, cfg.samples_per_class)
    )
    return _finish("generate", cfg, params, metrics, fitted, png, n_samples=len(wanted))


def glimpse(cfg: GlimpseConfig = GlimpseConfig()) -> Result:  # noqa: B008 (frozen, so shared safely)
    """Sequential processing of a fixed input: a glimpse per step, the next place chosen by the model.

    Reports the test accuracy and how the looks depend on the image; plots the glimpse path on a few.
    """
    out = _out_dir(cfg, "glimpse")
    splits = imagedata.split_digits(seed=cfg.seed)
    check_config(cfg, len(splits.train.labels))
    if not 1 <= cfg.patch <= imagedata.SIDE or cfg.glimpses < 1:
        raise UserError(f"need a patch in 1..{imagedata.SIDE} and glimpses >= 1, got {cfg.patch} and {cfg.glimpses}")
    n = imagedata.SIDE - cfg.patch + 1
    params = glimpse_init(
        jax.random.key(cfg.seed),
        n_parts=n * n,
        part_size=cfg.patch**2,
        hidden_size=cfg.hidden_size,
        n_classes=imagedata.NUM_CLASSES,
        cell=cfg.cell,
    )
    logits_fn = partial(glimpse_class_logits, patch=cfg.patch, glimpses=cfg.glimpses, hard=cfg.hard)
    batches = _batches(
        cfg, len(splits.train.labels), lambda idx, rng: (splits.train.images[idx], splits.train.labels[idx])
    )
    fitted = _fit(cfg, params, partial(classification_loss, logits_fn), batches, out)
    params = fitted.state.params

    looks_fn = partial(glimpse_logits, patch=cfg.patch, glimpses=cfg.glimpses, hard=cfg.hard)
    (logits, looks), (val_logits, _) = _on_test_and_val(looks_fn, params, splits)
    _, corners = imagedata.sliding_patches(np.zeros((imagedata.SIDE, imagedata.SIDE)), cfg.patch)
    centres = looks @ corners + (cfg.patch - 1) / 2  # [N_test, G, 2] expected (row, col) of each look
    paths = [tuple(p) for p in looks.argmax(-1).tolist()]
    common = max(set(paths), key=paths.count)
    metrics = {
        "test_accuracy": _accuracy(logits, splits.test.labels),
        "val_accuracy": _accuracy(val_logits, splits.val.labels),
        "distinct_paths": len(set(paths)),
        "share_on_most_common_path": round(paths.count(common) / len(paths), 4),
        "mean_distinct_windows_per_image": round(float(np.mean([len(set(p)) for p in paths])), 3),
        "attention_max_weight_by_step": [round(float(w), 3) for w in looks.max(-1).mean(0)],
    }
    png = plots.plot_glimpses(out / "glimpse.png", splits.test, logits.argmax(-1), centres, cfg.patch, hard=cfg.hard)
    return _finish("glimpse", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))


def video(cfg: VideoConfig = VideoConfig()) -> Result:  # noqa: B008 (frozen, so shared safely)
    """Many to many: label every frame of a noisy, partly occluded video of one digit.

    Each frame alone is ambiguous; the hidden state accumulates the evidence, so the accuracy rises
    with the frame index. Reports the test accuracy at every frame (fresh noise, fixed seed).
    """
    out = _out_dir(cfg, "video")
    splits = imagedata.split_digits(seed=cfg.seed)
    check_config(cfg, len(splits.train.labels))
    make = partial(imagedata.video_frames, n_frames=cfg.frames, noise=cfg.noise, occlusion=cfg.occlusion)
    try:
        make(splits.train.images[:1], seed=0)
    except ValueError as err:
        raise UserError(str(err)) from None
    params = video_init(jax.random.key(cfg.seed), hidden_size=cfg.hidden_size, cell=cfg.cell)
    train_split = splits.train
    batches = _batches(
        cfg,
        len(train_split.labels),
        lambda idx, rng: (make(train_split.images[idx], seed=rng), train_split.labels[idx]),
    )
    fitted = _fit(cfg, params, video_loss, batches, out)
    params = fitted.state.params

    test_frames = make(splits.test.images, seed=np.random.default_rng([cfg.seed, 10**6]))
    logits = jax.jit(jax.vmap(video_logits, (None, 0)))(params, jnp.asarray(test_frames))
    predicted = np.asarray(logits.argmax(-1))
    by_frame = (predicted == splits.test.labels[:, None]).mean(0)
    metrics = {
        "test_accuracy_by_frame": [round(float(a), 4) for a in by_frame],
        "first_frame_accuracy": float(by_frame[0]),
        "last_frame_accuracy": float(by_frame[-1]),
        "target": "last_frame_accuracy > first_frame_accuracy",
        "target_met": bool(by_frame[-1] > by_frame[0]),
    }
    png = plots.plot_video(out / "video.png", by_frame, test_frames, predicted, splits.test.labels, cfg)
    return _finish("video", cfg, params, metrics, fitted, png, n_test=len(splits.test.labels))
