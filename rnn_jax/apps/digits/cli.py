"""``rnn-jax digits NAME``: one experiment from the command line, its metrics as the last stdout line."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from rnn_jax import harness
from rnn_jax.apps.digits.config import (
    CaptionConfig,
    ClassifyConfig,
    GenerateConfig,
    GlimpseConfig,
    VideoConfig,
)
from rnn_jax.apps.digits.experiments import caption, classify, generate, glimpse, video

__all__ = ["EXPERIMENTS", "cli_main"]

EXPERIMENTS: dict[str, tuple[Any, type]] = {
    "classify": (classify, ClassifyConfig),
    "caption": (caption, CaptionConfig),
    "generate": (generate, GenerateConfig),
    "glimpse": (glimpse, GlimpseConfig),
    "video": (video, VideoConfig),
}
"""Every experiment by name: ``(run, config type)``."""


def cli_main(argv: list[str], prog: str = "rnn-jax digits") -> int:
    """Run the experiment named in ``argv`` with its flags; print where its files are and its metrics as JSON."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Image experiments of Lecture 10 on the 8x8 digits, one per topology."
    )
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    for name, (fn, config_type) in EXPERIMENTS.items():
        harness.add_config_arguments(sub.add_parser(name, help=fn.__doc__.splitlines()[0]), config_type)
    args = vars(parser.parse_args(argv))
    name = args.pop("experiment")
    fn, config_type = EXPERIMENTS[name]
    start = time.perf_counter()
    result = fn(harness.config_from_args(config_type, args))
    metrics = {**result.metrics, "total_seconds": round(time.perf_counter() - start, 2)}
    summary = {k: v for k, v in metrics.items() if k != "config"}
    print(f"{name}: figure {result.png}, metrics {result.png.parent / (name + '.json')}")
    print(json.dumps(summary))
    return 0
