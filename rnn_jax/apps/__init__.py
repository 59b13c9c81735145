"""The applications built on the library: each brings its model, its data and its metrics; the run directory,
the fit loop, checkpoints and the command line come from the shared harness.

- :mod:`rnn_jax.apps.charlm`: character-level language model (``rnn-jax charlm``)
- :mod:`rnn_jax.apps.seq2seq`: encoder-decoder translation, G2P and synthetic tasks (``rnn-jax seq2seq``)
- :mod:`rnn_jax.apps.digits`: image experiments on the 8x8 digits (``rnn-jax digits``)
- :mod:`rnn_jax.apps.hello`: the lecture's vanilla RNN learning "hello" (``rnn-jax hello``)
"""
