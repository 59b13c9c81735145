"""rnn_jax: recurrent networks as pure JAX functions (Stanford cs231n, Lecture 10).

Shape letters used in names throughout (``x_BTI`` is a batch-major input sequence):

- ``B``: batch, ``T``: time steps, ``I``: input features, ``H``: hidden units,
- ``O``: outputs of a cell's head, ``V``: vocabulary size, ``S``: source length (seq2seq).

A cell is a pure function ``cell(params, carry, x) -> (carry, y)`` on one example; :func:`run` is the
one ``lax.scan`` that applies it over time (and ``jax.vmap`` over batches). Nothing here is jitted:
jit at the edges of your program (the train step, evaluation, sampling).
"""

from rnn_jax import checkpoint, decode, losses, topologies
from rnn_jax.allocator import keep_freed_memory
from rnn_jax.cells import (
    CELLS,
    Cell,
    GRUParams,
    LSTMParams,
    LSTMState,
    VanillaParams,
    gru_cell,
    gru_init,
    lstm_cell,
    lstm_init,
    vanilla_cell,
    vanilla_init,
)
from rnn_jax.decode import BeamResult, Decoded, beam_search, greedy, prime, sample
from rnn_jax.errors import UserError
from rnn_jax.harness import FitOptions, FitResult, fit
from rnn_jax.kernels import available_impls
from rnn_jax.linear import DiagParams, MinGRUParams, diag_cell, diag_init, mingru_cell, mingru_init, run_linear
from rnn_jax.losses import (
    SequenceLoss,
    check_token_ids,
    classification_accuracy,
    classification_cross_entropy,
    exact_match,
    length_mask,
    sequence_cross_entropy,
    token_accuracy,
)
from rnn_jax.plan import Plan, auto_plan
from rnn_jax.scan import broadcast_carry, run, zeros_carry
from rnn_jax.stacks import bidirectional, run_stack
from rnn_jax.topologies import (
    encoder_decoder_apply,
    encoder_decoder_init,
    glimpse_apply,
    glimpse_init,
    many_to_one,
    one_to_many,
    one_to_one,
)
from rnn_jax.train import TrainState, init_state, make_optimizer, make_train_step

__version__ = "0.1.0"

__all__ = [
    "keep_freed_memory",
    "BeamResult",
    "Decoded",
    "SequenceLoss",
    "beam_search",
    "decode",
    "encoder_decoder_apply",
    "encoder_decoder_init",
    "check_token_ids",
    "classification_accuracy",
    "classification_cross_entropy",
    "exact_match",
    "glimpse_apply",
    "glimpse_init",
    "greedy",
    "length_mask",
    "losses",
    "many_to_one",
    "one_to_many",
    "one_to_one",
    "prime",
    "sample",
    "sequence_cross_entropy",
    "token_accuracy",
    "topologies",
    "DiagParams",
    "MinGRUParams",
    "diag_cell",
    "diag_init",
    "mingru_cell",
    "mingru_init",
    "run_linear",
    "CELLS",
    "Cell",
    "GRUParams",
    "LSTMParams",
    "LSTMState",
    "VanillaParams",
    "bidirectional",
    "broadcast_carry",
    "gru_cell",
    "gru_init",
    "lstm_cell",
    "lstm_init",
    "run",
    "run_stack",
    "vanilla_cell",
    "vanilla_init",
    "zeros_carry",
    "available_impls",
    "Plan",
    "auto_plan",
    "checkpoint",
    "FitOptions",
    "FitResult",
    "TrainState",
    "UserError",
    "fit",
    "init_state",
    "make_optimizer",
    "make_train_step",
]
