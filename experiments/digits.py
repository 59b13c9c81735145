"""The image experiments of Lecture 10 on the 8x8 digits, from frozen dataclass configs.

The same library code as ``rnn-jax digits NAME``; CONFIGS below are the runs reported in docs/digits.md.
Name the experiments to run (all five when none is named), and override config fields as key=value or
from a JSON/TOML file with --config FILE (applied to every named experiment that has the field; old
spellings such as out_dir are aliases):

    python experiments/digits.py                          # all five, CONFIGS as written
    python experiments/digits.py classify video
    python experiments/digits.py classify train_lengths=random out=runs/digits/classify_random
    python experiments/digits.py caption cell=lstm hidden_size=96
    python experiments/digits.py video --config my_video.json

Each experiment prints its metrics as one JSON line; the last line is a JSON list of all of them.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from rnn_jax import harness
from rnn_jax.apps.digits import (
    EXPERIMENTS,
    CaptionConfig,
    ClassifyConfig,
    GenerateConfig,
    GlimpseConfig,
    TrainConfig,
    VideoConfig,
)
from rnn_jax.errors import UserError
from rnn_jax.harness.config import read_config_file

CONFIGS: dict[str, TrainConfig] = {
    "classify": ClassifyConfig(cell="gru", hidden_size=64, steps=1500, read="rows", train_lengths="full"),
    "caption": CaptionConfig(cell="gru", hidden_size=64, feature_size=128, embed_size=16, steps=1500),
    "generate": GenerateConfig(cell="gru", hidden_size=128, steps=1200, levels=5, temperature=0.7),
    "glimpse": GlimpseConfig(cell="gru", hidden_size=64, steps=1500, patch=4, glimpses=4, hard=True),
    "video": VideoConfig(cell="gru", hidden_size=64, steps=2000, frames=8, noise=0.5, occlusion=4),
}


def main(configs: dict[str, TrainConfig]) -> list[dict]:
    results = []
    for name, config in configs.items():
        run, _ = EXPERIMENTS[name]
        metrics = {k: v for k, v in run(config).metrics.items() if k != "config"}
        print(json.dumps(metrics), flush=True)
        results.append(metrics)
    return results


def _keys(config_type: type) -> set[str]:
    """The keys ``key=value`` may use for ``config_type``: its field names and their aliases."""
    fields = dataclasses.fields(config_type)
    return {f.name for f in fields} | {a for f in fields for a in f.metadata.get("aliases", ())}


def _parse(args: list[str]) -> dict[str, TrainConfig]:
    """``[NAME ...] [--config FILE] [key=value ...]`` -> the config of every named experiment (all when none is).

    Each experiment takes the file's fields and the overrides it has (:func:`rnn_jax.harness.config_from_overrides`);
    a key no named experiment has is an error.
    """
    args, table = list(args), {}
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise UserError("--config needs a file: --config FILE.json (or .toml)")
        table = read_config_file(args[i + 1])
        del args[i : i + 2]
    names = [a for a in args if "=" not in a] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UserError(f"experiments must be among {list(CONFIGS)}, got {unknown}")
    pairs = [f"{k}={'none' if v is None else v}" for k, v in table.items()] + [a for a in args if "=" in a]
    configs = {}
    for name in names:
        known = _keys(type(CONFIGS[name]))
        mine = [p for p in pairs if p.partition("=")[0] in known]
        configs[name] = harness.config_from_overrides(type(CONFIGS[name]), mine, base=CONFIGS[name])
    every = set().union(*(_keys(type(c)) for c in configs.values()))
    left = sorted({p.partition("=")[0] for p in pairs} - every)
    if left:
        raise UserError(f"no named experiment has the field(s) {left}")
    return configs


if __name__ == "__main__":
    try:
        print(json.dumps(main(_parse(sys.argv[1:]))))
    except UserError as err:
        print(f"digits.py: error: {err}", file=sys.stderr)
        sys.exit(2)
