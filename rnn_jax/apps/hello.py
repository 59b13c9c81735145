"""The lecture's first example: a vanilla RNN learns the next character of "hello".

Vocabulary ``[h, e, l, o]``, one-hot inputs, hidden size 3 as on the slide. The input ``"hell"`` must
produce the targets ``"ello"``: the same ``l`` is followed once by ``l`` and once by ``o``, which only
the hidden state can tell apart.
"""

from __future__ import annotations

import argparse
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnn_jax.cells import VanillaParams, vanilla_cell, vanilla_init
from rnn_jax.errors import UserError
from rnn_jax.scan import run

VOCAB = "helo"


class HelloResult(NamedTuple):
    params: VanillaParams
    losses: list[float]
    predicted: str


def encode(text: str) -> jax.Array:
    unknown = sorted(set(text) - set(VOCAB))
    if unknown:
        raise UserError(f"characters {unknown} are not in the vocabulary {list(VOCAB)}")
    return jnp.array([VOCAB.index(ch) for ch in text])


def sequence_loss(params: VanillaParams, inputs_T, targets_T) -> jax.Array:
    """The lecture's loss: cross-entropy of every step's prediction, summed over the steps."""
    xs = jax.nn.one_hot(inputs_T, len(VOCAB), dtype=params.W_xh.dtype)
    _, logits = run(vanilla_cell, params, None, xs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets_T).sum()


def train(word: str = "hello", hidden_size: int = 3, steps: int = 300, lr: float = 0.1, seed: int = 0) -> HelloResult:
    if len(word) < 2:
        raise UserError(f"the word needs at least two characters, got {word!r}")
    if steps < 1 or hidden_size < 1:
        raise UserError(f"steps and hidden size must be positive, got steps={steps}, hidden_size={hidden_size}")
    tokens = encode(word)
    inputs, targets = tokens[:-1], tokens[1:]
    params = vanilla_init(jax.random.key(seed), len(VOCAB), hidden_size, len(VOCAB))
    optimizer = optax.adam(lr)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(sequence_loss)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    _, logits = run(vanilla_cell, params, None, jax.nn.one_hot(inputs, len(VOCAB)))
    predicted = "".join(VOCAB[i] for i in jnp.argmax(logits, axis=-1).tolist())
    return HelloResult(params, losses, predicted)


def cli_main(argv: list[str], prog: str = "rnn-jax hello") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--word", default="hello", help="a word over the letters h, e, l, o")
    parser.add_argument("--hidden", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.word, args.hidden, args.steps, seed=args.seed)
    print(f"input {args.word[:-1]!r} -> predicted next characters {result.predicted!r} (target {args.word[1:]!r})")
    summary = {"first_loss": result.losses[0], "final_loss": result.losses[-1], "predicted": result.predicted}
    print(json.dumps(summary))
    return 0
