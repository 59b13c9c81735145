"""The lecture's first example: a vanilla RNN learns the next character of "hello".

Vocabulary ``[h, e, l, o]``, one-hot inputs, hidden size 3 as on the slide. The input ``"hell"`` must
produce the targets ``"ello"``: the same ``l`` is followed once by ``l`` and once by ``o``, which only
the hidden state can tell apart. ``sample`` then feeds the model its own predictions from ``h``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnn_jax import decode, harness
from rnn_jax.cells import VanillaParams, vanilla_cell
from rnn_jax.errors import UserError
from rnn_jax.scan import run

__all__ = ["VOCAB", "HelloConfig", "HelloResult", "encode", "sequence_loss", "train", "sample", "cli_main"]

VOCAB = "helo"


@dataclasses.dataclass(frozen=True)
class HelloConfig:
    """The lecture's settings: a word over ``h, e, l, o``, a vanilla RNN of 3 hidden units, plain Adam."""

    word: str = harness.field("hello", "a word over the letters h, e, l, o")
    hidden_size: int = harness.shared_field("hidden_size", 3)
    steps: int = harness.field(300, "training steps (the whole word each)")
    learning_rate: float = harness.field(0.1, "Adam's learning rate (constant)", aliases=("lr",))
    seed: int = harness.field(0, "seed of the init")


class HelloResult(NamedTuple):
    """The trained params, the loss at every step, and the argmax prediction for each input character."""

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


def _check(cfg: HelloConfig) -> None:
    if len(cfg.word) < 2:
        raise UserError(f"word needs at least two characters, got {cfg.word!r}")
    encode(cfg.word)
    harness.check_int("hidden_size", cfg.hidden_size)
    harness.check_int("steps", cfg.steps)
    harness.check_number("learning_rate", cfg.learning_rate)


def train(cfg: HelloConfig = HelloConfig()) -> HelloResult:
    """Fit the vanilla RNN to ``cfg.word`` with Adam; the prediction is the argmax at every input step."""
    _check(cfg)
    tokens = encode(cfg.word)
    inputs, targets = tokens[:-1], tokens[1:]
    params = harness.init_cell("vanilla", jax.random.key(cfg.seed), len(VOCAB), cfg.hidden_size, out_size=len(VOCAB))
    optimizer = optax.adam(cfg.learning_rate)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(sequence_loss)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(cfg.steps):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    _, logits = run(vanilla_cell, params, None, jax.nn.one_hot(inputs, len(VOCAB)))
    predicted = "".join(VOCAB[i] for i in jnp.argmax(logits, axis=-1).tolist())
    return HelloResult(params, losses, predicted)


def sample(params: VanillaParams, first: str = "h", length: int = 4) -> str:
    """Greedy generation: ``first``, then ``length`` characters, each the argmax given the ones before."""

    def step(p, h, token):
        return vanilla_cell(p, h, jax.nn.one_hot(token, len(VOCAB), dtype=p.W_xh.dtype))

    carry = jnp.zeros((params.W_hh.shape[0],), params.W_hh.dtype)
    carry, logits = decode.prime(step, params, carry, encode(first))
    out = decode.greedy(step, params, carry, logits, max_len=length)
    return first + "".join(VOCAB[int(i)] for i in out.tokens)


def cli_main(argv: list[str], prog: str = "rnn-jax hello") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    harness.add_config_arguments(parser, HelloConfig)
    cfg = harness.config_from_args(HelloConfig, parser.parse_args(argv))
    result = train(cfg)
    generated = sample(result.params, cfg.word[0], len(cfg.word) - 1)
    print(f"input {cfg.word[:-1]!r} -> predicted next characters {result.predicted!r} (target {cfg.word[1:]!r})")
    print(f"sampled from {cfg.word[0]!r}: {generated!r}")
    summary = {"first_loss": result.losses[0], "final_loss": result.losses[-1], "predicted": result.predicted}
    print(json.dumps({**summary, "sampled": generated}))
    return 0
