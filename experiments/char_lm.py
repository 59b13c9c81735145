"""Character-level language model from a dataclass config: the same library code as `rnn-jax charlm train`.

Edit CONFIG below, or override fields on the command line as key=value:

    python experiments/char_lm.py                                  # CONFIG as written
    python experiments/char_lm.py text=../shared/data/tinyshakespeare.txt minutes=5
    python experiments/char_lm.py cell=gru hidden=256 steps=300 out=runs/gru

The last line printed is the same JSON summary as the command line's.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from rnn_jax.apps.charlm import CharLMConfig, train
from rnn_jax.errors import UserError

CONFIG = CharLMConfig(
    text=None,  # a UTF-8 file; None trains on the embedded python-stdlib corpus
    cell="gru",
    hidden=384,
    layers=1,
    embed=64,
    batch=64,
    seq_len=32,
    lr=4e-3,
    minutes=2.0,
    out="runs/char_lm",
)


def main(config: CharLMConfig = CONFIG) -> dict:
    summary = train(config)
    print(json.dumps(summary))
    return summary


def _parse_overrides(args: list[str], config: CharLMConfig) -> CharLMConfig:
    """``key=value`` pairs; values are read as JSON where they parse (numbers, true/false, null), else strings."""
    names = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or key not in names:
            raise UserError(f"expected key=value with key one of {sorted(names)}, got {arg!r}")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    if "steps" in changes:
        changes.setdefault("minutes", None)
    if "minutes" in changes:
        changes.setdefault("steps", None)
    return dataclasses.replace(config, **changes)


if __name__ == "__main__":
    try:
        main(_parse_overrides(sys.argv[1:], CONFIG))
    except UserError as err:
        print(f"char_lm.py: error: {err}", file=sys.stderr)
        sys.exit(2)
