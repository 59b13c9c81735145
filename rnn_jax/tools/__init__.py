"""Measurement tools: :mod:`rnn_jax.tools.bench` (``rnn-jax bench``: time against torch and flax) and
:mod:`rnn_jax.tools.memory` (``rnn-jax memory``: BPTT memory against sequence length)."""
