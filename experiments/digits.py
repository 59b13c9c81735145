"""The image experiments of Lecture 10 on the 8x8 digits, from frozen dataclass configs.

The same library code as ``rnn-jax digits NAME``; CONFIGS below are the runs reported in docs/digits.md.
Name the experiments to run (all five when none is named), and override config fields as key=value
(applied to every named experiment that has the field):

    python experiments/digits.py                          # all five, CONFIGS as written
    python experiments/digits.py classify video
    python experiments/digits.py classify train_lengths=random out_dir=runs/digits/classify_random
    python experiments/digits.py caption cell=lstm hidden_size=96

Each experiment prints its metrics as one JSON line; the last line is a JSON list of all of them.
"""

from __future__ import annotations

import dataclasses
import json
import sys

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


def _parse(args: list[str]) -> dict[str, TrainConfig]:
    names = [a for a in args if "=" not in a] or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise UserError(f"experiments must be among {list(CONFIGS)}, got {unknown}")
    changes = {}
    for arg in (a for a in args if "=" in a):
        key, _, raw = arg.partition("=")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    configs = {}
    for name in names:
        fields = {f.name for f in dataclasses.fields(CONFIGS[name])}
        configs[name] = dataclasses.replace(CONFIGS[name], **{k: v for k, v in changes.items() if k in fields})
    every = set().union(*({f.name for f in dataclasses.fields(c)} for c in configs.values()))
    if set(changes) - every:
        raise UserError(f"no named experiment has the field(s) {sorted(set(changes) - every)}")
    return configs


if __name__ == "__main__":
    try:
        print(json.dumps(main(_parse(sys.argv[1:]))))
    except UserError as err:
        print(f"digits.py: error: {err}", file=sys.stderr)
        sys.exit(2)
