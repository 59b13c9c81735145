"""Character-level language model: train, evaluate, checkpoint, resume, sample (``rnn-jax charlm``).

The model reads characters ``x_1..x_T`` and predicts each next one::

    e_t = E[x_t]                   (an embedding; or the lecture's one-hot vector with embed_size=0)
    h_t = stack of cells(h_{t-1}, e_t)      lstm | gru | vanilla, any depth, dropout between layers
                                            and before the output layer
    p(x_{t+1} | x_<=t) = softmax(h_t W + b)

and is trained on the mean cross-entropy (nats per character) with truncated BPTT: each batch continues
the ``B`` streams of the previous one, starting from its final carry with the gradient cut.

``train(CharLMConfig(...))`` does everything the command line does; ``experiments/char_lm.py`` calls it.

The package, one concern per module: :mod:`~rnn_jax.apps.charlm.config` (the configs, their checks, the cell),
:mod:`~rnn_jax.apps.charlm.data` (the text, the batcher, the validation windows),
:mod:`~rnn_jax.apps.charlm.model` (params, forward, loss, the decoding step),
:mod:`~rnn_jax.apps.charlm.evaluation` (validation loss and samples), :mod:`~rnn_jax.apps.charlm.training`
(:func:`train`), :mod:`~rnn_jax.apps.charlm.inference` (:func:`load_model`, :func:`generate`) and
:mod:`~rnn_jax.apps.charlm.cli`.
"""

from rnn_jax.apps.charlm.cli import cli_main, config_from_args
from rnn_jax.apps.charlm.config import (
    DATA_FIELDS,
    KIND,
    MODEL_FIELDS,
    CharLMConfig,
    SampleConfig,
    check_config,
    model_cell,
)
from rnn_jax.apps.charlm.evaluation import make_evaluator
from rnn_jax.apps.charlm.inference import LoadedModel, generate, load_model
from rnn_jax.apps.charlm.model import (
    LMParams,
    build_state,
    forward,
    init_params,
    loss_fn,
    token_step,
    zero_carries,
)
from rnn_jax.apps.charlm.training import TrainResult, train

__all__ = [
    "CharLMConfig",
    "SampleConfig",
    "KIND",
    "MODEL_FIELDS",
    "DATA_FIELDS",
    "check_config",
    "model_cell",
    "LMParams",
    "init_params",
    "forward",
    "loss_fn",
    "token_step",
    "zero_carries",
    "build_state",
    "make_evaluator",
    "TrainResult",
    "train",
    "LoadedModel",
    "load_model",
    "generate",
    "config_from_args",
    "cli_main",
]
