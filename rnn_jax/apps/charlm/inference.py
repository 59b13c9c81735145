"""A trained char-LM from Python: load a run's checkpoint (:func:`load_model`) and sample text that continues a
prime (:func:`generate`: temperature, top-k, nucleus; ``temperature=0`` is greedy)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import decode, harness, losses
from rnn_jax.apps.charlm.config import KIND, CharLMConfig
from rnn_jax.apps.charlm.model import LMParams, build_state, model_cfg, token_step, zero_carries
from rnn_jax.cells import Cell
from rnn_jax.data import text as textdata
from rnn_jax.harness.usercells import loaded_cell
from rnn_jax.train import cast_floating

__all__ = ["LoadedModel", "load_model", "generate", "default_prime"]


@partial(jax.jit, static_argnames=("cfg", "length", "top_k", "nucleus"))
def _generate(params, prime_P, keys_N, temperature, top_p, *, cfg, length, top_k, nucleus):
    # temperature and top_p are traced (no recompile per value); top_k fixes a shape, so it is static.
    step = token_step(cfg)

    def one(key):
        carries = jax.tree.map(lambda c: c[0], zero_carries(cfg, params, 1))
        carries, logits = decode.prime(step, params, carries, prime_P)
        nucleus_p = top_p if nucleus else None
        out = decode.sample(step, params, carries, logits, key, max_len=length, temperature=temperature,
                            top_k=top_k, top_p=nucleus_p)  # fmt: skip
        return out.tokens

    return jax.vmap(one)(keys_N)


def generate(
    params: LMParams,
    cfg: CharLMConfig,
    vocab: textdata.Vocab,
    prime: str,
    key,
    *,
    n: int = 1,
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    compute_dtype=None,
    include_prime: bool = False,
) -> list[str]:
    """``n`` samples of ``length`` characters that continue ``prime`` (``decode.sample``).

    Each string returned is the continuation alone (``length`` characters), without the prime;
    ``include_prime=True`` returns ``prime + continuation`` instead. ``temperature=0`` is greedy.
    Every character of ``prime`` must be in ``vocab``.
    """
    decode.check_sampling_args(vocab.size, max_len=length, temperature=temperature, top_k=top_k, top_p=top_p)
    prime_P = losses.check_token_ids(decode.check_prime(prime, vocab.chars), vocab.size, "prime tokens")
    tokens = _generate(
        cast_floating(params, compute_dtype),
        jnp.asarray(prime_P),
        jax.random.split(key, n),
        jnp.float32(temperature),
        jnp.float32(1.0 if top_p is None else top_p),
        cfg=model_cfg(cfg),
        length=length,
        top_k=top_k,
        nucleus=top_p is not None,
    )
    head = prime if include_prime else ""
    return [head + vocab.decode(row) for row in np.asarray(tokens)]


def default_prime(vocab: textdata.Vocab) -> str:
    """What sampling starts from when no prime is given: a newline, or the first character without one."""
    return "\n" if "\n" in vocab.chars else vocab.chars[0]


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: ``params, config, vocab, meta = load_model(run_dir)``.

    Attributes:
      params: the model's :class:`LMParams` (float32).
      config: the run's :class:`CharLMConfig` (a config stored by an older release is translated).
      vocab: the character vocabulary (``vocab.chars[i]`` is the character of id ``i``).
      meta: the checkpoint's meta dict (``step``, ``metrics`` of a best checkpoint, ``source``...).
    """

    params: LMParams
    config: CharLMConfig
    vocab: textdata.Vocab
    meta: dict


def load_model(ckpt: str, which: str = "best", cell: Cell | str | None = None) -> LoadedModel:
    """The model of a run directory (its ``best`` checkpoint, else its ``latest``) or of a ``.ckpt`` file.

    A run of a user's cell loads it from the import path its checkpoint records; where it has none (a cell
    defined in ``__main__`` or inside a function), pass the cell: ``load_model(run_dir, cell=my_cell)``.
    The returned ``config.cell`` is then the :class:`Cell` itself.
    """
    run = harness.read_run(ckpt, which, KIND, CharLMConfig)
    config = dataclasses.replace(run.config, cell=loaded_cell(run.meta, run.config.cell, ckpt, cell))
    vocab = textdata.Vocab(run.meta["vocab"])
    template, _ = build_state(config, vocab.size, 1)
    params = harness.load_params(run, template, expect={"vocab": vocab.chars})
    return LoadedModel(params, config, vocab, run.meta)
