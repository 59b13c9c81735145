"""Character-level language model from a dataclass config: the same library code as `rnn-jax charlm train`.

Edit CONFIG below, or override its fields with a config file and/or key=value pairs (field names, or the
old spellings such as hidden, batch, lr, text):

    python experiments/char_lm.py                                  # CONFIG as written
    python experiments/char_lm.py text_path=../shared/data/tinyshakespeare.txt minutes=5
    python experiments/char_lm.py cell=gru hidden_size=256 steps=300 out=runs/gru
    python experiments/char_lm.py --config my_run.toml seed=1      # JSON or TOML: field = value

The last line printed is the same JSON summary as the command line's.
"""

from __future__ import annotations

import json
import sys

from rnn_jax.apps.charlm import CharLMConfig, TrainResult, train
from rnn_jax.errors import UserError
from rnn_jax.harness import config_from_argv

CONFIG = CharLMConfig(
    text_path=None,  # a UTF-8 file; None trains on the embedded python-stdlib corpus
    cell="gru",
    hidden_size=256,
    layers=2,
    embed_size=64,
    batch_size=64,
    seq_len=32,
    learning_rate=4e-3,
    weight_decay=0.2,
    minutes=2.0,
    out="runs/char_lm",
)


def main(config: CharLMConfig = CONFIG) -> TrainResult:
    result = train(config)
    print(json.dumps(result.summary()))
    return result


if __name__ == "__main__":
    try:
        main(config_from_argv(CharLMConfig, sys.argv[1:], base=CONFIG))
    except UserError as err:
        print(f"char_lm.py: error: {err}", file=sys.stderr)
        sys.exit(2)
