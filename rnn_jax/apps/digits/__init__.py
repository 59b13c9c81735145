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

The package reads top to bottom in four files:

- :mod:`~rnn_jax.apps.digits.config`: one frozen dataclass config per experiment;
- :mod:`~rnn_jax.apps.digits.models`: each model's params, init, logits and loss, on one example;
- :mod:`~rnn_jax.apps.digits.experiments`: ``name(config) -> Result``: train, evaluate, draw, write ``name.json``;
- :mod:`~rnn_jax.apps.digits.plots`: the figures; :mod:`~rnn_jax.apps.digits.cli`: ``rnn-jax digits NAME``.
"""

from rnn_jax.apps.digits import cli as _cli
from rnn_jax.apps.digits import config as _config
from rnn_jax.apps.digits import experiments as _experiments
from rnn_jax.apps.digits import models as _models
from rnn_jax.apps.digits.cli import *  # noqa: F403 (the package re-exports each module's __all__)
from rnn_jax.apps.digits.config import *  # noqa: F403
from rnn_jax.apps.digits.experiments import *  # noqa: F403
from rnn_jax.apps.digits.models import *  # noqa: F403

__all__ = [*_config.__all__, *_models.__all__, *_experiments.__all__, *_cli.__all__]
