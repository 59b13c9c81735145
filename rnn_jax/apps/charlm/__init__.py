"""Character-level language model (``rnn-jax charlm``); the package is split into modules in the next step."""

from rnn_jax.apps.charlm.training import *  # noqa: F403
from rnn_jax.apps.charlm.training import __all__, __doc__, _build, _parser, cli_main  # noqa: F401
