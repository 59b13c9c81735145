"""``rnn-jax charlm train|sample``: train (or ``--resume``) a char-LM, or sample text from a trained one.

Every flag of ``train`` is a field of :class:`~rnn_jax.apps.charlm.CharLMConfig` (``--hidden-size``, with older
spellings such as ``--hidden`` kept as aliases); ``sample``'s are :class:`~rnn_jax.apps.charlm.SampleConfig`'s.
"""

from __future__ import annotations

import argparse
import json

import jax

from rnn_jax import distributed, harness
from rnn_jax.apps.charlm.config import KIND, CharLMConfig, SampleConfig
from rnn_jax.apps.charlm.inference import default_prime, generate, load_model
from rnn_jax.apps.charlm.training import train

__all__ = ["config_from_args", "cli_main"]

DESCRIPTION = "Character-level language model: train, evaluate, checkpoint, resume, sample (``rnn-jax charlm``)."


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train_p = sub.add_parser("train", help="train (or --resume) a character-level language model")
    harness.add_config_arguments(train_p, CharLMConfig)
    sample_p = sub.add_parser("sample", help="sample text from a trained model")
    harness.add_config_arguments(sample_p, SampleConfig)
    return parser


def config_from_args(given: dict | argparse.Namespace) -> CharLMConfig:
    """The run's config: the flags given, over (with ``resume``) the checkpoint's config, over the defaults."""
    given = {k: v for k, v in dict(vars(given) if isinstance(given, argparse.Namespace) else given).items()
             if k != "action"}  # fmt: skip
    if given.get("resume"):
        return harness.resumed_config(CharLMConfig, given.get("out", CharLMConfig.out), KIND, given)
    return harness.config_from_args(CharLMConfig, given)


def _sample(args: argparse.Namespace) -> str:
    sc = harness.config_from_args(SampleConfig, args)
    model = load_model(sc.ckpt, sc.which)
    vocab = model.vocab
    prime = sc.prime if sc.prime is not None else default_prime(vocab)
    harness.check_int("length", sc.length)
    (text,) = generate(model.params, model.config, vocab, prime, jax.random.key(sc.seed), length=sc.length,
                       temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                       compute_dtype=harness.compute_dtype(model.config.dtype), include_prime=True)  # fmt: skip
    return text


def cli_main(argv: list[str], prog: str = "rnn-jax charlm") -> int:
    args = _parser(prog).parse_args(argv)
    if args.action == "train":
        summary = train(config_from_args(args)).summary()
        if distributed.is_main_process():
            print(json.dumps(summary))
    else:
        print(_sample(args))
    return 0
