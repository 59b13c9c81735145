"""Image experiments from Lecture 10 on scikit-learn's 8x8 digits, one per topology.

======================  ===============================  ==================================================
experiment              topology                         what the model does
======================  ===============================  ==================================================
:func:`classify`        many to one                      reads the rows one at a time, labels the digit
:func:`caption`         one to many (tokens)             image feature -> ``h_0``, writes "seven" + <end>
:func:`generate`        one to many (fed back)           class -> ``h_0``, draws the digit row by row
:func:`glimpse`         sequential processing            looks at one patch per step, chooses the next
:func:`video`           many to many (synchronised)      labels every frame of a noisy, occluded video
======================  ===============================  ==================================================

The package reads top to bottom in five files; it re-exports the public names of all but plots:

- :mod:`~rnn_jax.apps.digits.config`: one frozen dataclass config per experiment;
- :mod:`~rnn_jax.apps.digits.models`: each model's params, init, logits and loss, on one example;
- :mod:`~rnn_jax.apps.digits.experiments`: ``name(config) -> Result``: train, evaluate, draw, write ``name.json``;
- :mod:`~rnn_jax.apps.digits.plots`: the figures; :mod:`~rnn_jax.apps.digits.cli`: ``rnn-jax digits NAME``.
"""

from rnn_jax.apps.digits.cli import EXPERIMENTS, cli_main
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
from rnn_jax.apps.digits.experiments import ImageBatches, caption, classify, generate, glimpse, train_classifier, video
from rnn_jax.apps.digits.models import (
    CaptionerParams,
    ClassifierParams,
    GeneratorParams,
    GlimpseParams,
    VideoParams,
    as_sequence,
    caption_greedy,
    caption_logits,
    caption_loss,
    caption_start,
    caption_step,
    captioner_init,
    classification_loss,
    classifier_init,
    classifier_logits,
    classifier_loss,
    generate_image,
    generator_init,
    generator_logits,
    generator_loss,
    generator_start,
    glimpse_class_logits,
    glimpse_init,
    glimpse_logits,
    image_windows,
    prefix_logits,
    video_init,
    video_logits,
    video_loss,
)

__all__ = [
    "TrainConfig",
    "ClassifyConfig",
    "CaptionConfig",
    "GenerateConfig",
    "GlimpseConfig",
    "VideoConfig",
    "Result",
    "check_config",
    "ClassifierParams",
    "CaptionerParams",
    "GeneratorParams",
    "VideoParams",
    "GlimpseParams",
    "as_sequence",
    "classifier_init",
    "classifier_logits",
    "prefix_logits",
    "classification_loss",
    "classifier_loss",
    "captioner_init",
    "caption_start",
    "caption_step",
    "caption_logits",
    "caption_greedy",
    "caption_loss",
    "generator_init",
    "generator_start",
    "generator_logits",
    "generate_image",
    "generator_loss",
    "glimpse_init",
    "image_windows",
    "glimpse_logits",
    "glimpse_class_logits",
    "video_init",
    "video_logits",
    "video_loss",
    "classify",
    "caption",
    "generate",
    "glimpse",
    "video",
    "train_classifier",
    "ImageBatches",
    "EXPERIMENTS",
    "cli_main",
]
