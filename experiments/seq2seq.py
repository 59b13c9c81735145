"""Seq2seq experiments: the issue's targets (addition, dates, reversal) and the CMUdict G2P run.

Each task has a frozen :class:`Experiment` preset (the trainer's :class:`rnn_jax.apps.seq2seq.Config` plus the
target it must reach); ``main`` trains the chosen presets one after the other and writes every summary
to ``runs/seq2seq_experiments.json`` (one JSON object per line on stdout as well).

Run::

    python experiments/seq2seq.py addition dates reverse     # the <= 5 minute targets, one after the other
    python experiments/seq2seq.py g2p --minutes 60           # the long G2P run (beam 5 at the end)
    python experiments/seq2seq.py reverse hidden_size=64 steps=500 --config extra.json   # presets overridden

Config fields are overridden as ``key=value`` or from a JSON/TOML ``--config FILE`` (the harness's
:func:`rnn_jax.harness.config_from_overrides`, applied to every named preset).

Timings depend on the machine and on what else runs on it: the summaries record the elapsed time and
the visible hardware, and the numbers in docs/seq2seq.md say under which load they were measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from rnn_jax import harness
from rnn_jax.apps.seq2seq import Config, train
from rnn_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Experiment:
    config: Config
    target_exact_match: float | None = None  # what the test split must reach (None: report only)


# Short tasks pad every batch to one shape (pad_multiple >= the longest sequence): one compilation of the train
# step instead of one per length bucket, which matters more than the padded compute within a 5-minute budget
# (and a bucket compiled late would also spoil fit's estimate of the steps that fit in the time budget).
_SMALL = dict(embed_size=32, hidden_size=128, batch_size=128, learning_rate=3e-3, warmup_steps=100, eval_every=500)

# The long G2P run: a wider model, evaluated (and checkpointed) less often on a larger validation sample.
_G2P = dict(embed_size=64, hidden_size=256, batch_size=128, eval_every=1500, checkpoint_every=1500, eval_size=3000)

PRESETS: dict[str, Experiment] = {
    "addition": Experiment(Config(task="addition", minutes=4.0, pad_multiple=8, **_SMALL), 0.99),
    "dates": Experiment(Config(task="dates", minutes=4.0, pad_multiple=32, **_SMALL), 0.99),
    "reverse": Experiment(Config(task="reverse", minutes=4.0, pad_multiple=24, **_SMALL), 0.99),
    "sort": Experiment(Config(task="sort", minutes=4.0, pad_multiple=16, **_SMALL), None),
    "g2p": Experiment(Config(task="g2p", minutes=60.0, beam=5, **_G2P), None),
}


def main(names: list[str], minutes: float | None = None, out_root: str = "runs", overrides=(), config_file=None):
    """Train each named preset (``overrides``/``config_file`` on top) and write every summary; return them."""
    results = []
    for name in names:
        exp = PRESETS[name]
        base = harness.replace_config(exp.config, {"out": os.path.join(out_root, f"seq2seq-{name}"), "verbose": False})
        if minutes is not None:
            base = harness.replace_config(base, {"minutes": minutes})
        config = harness.config_from_overrides(Config, overrides, config_file, base=base)
        summary = train(config).summary()
        summary["target_exact_match"] = exp.target_exact_match
        summary["target_met"] = (
            None if exp.target_exact_match is None else summary["exact_match"] >= exp.target_exact_match
        )
        summary["config"] = dataclasses.asdict(config)
        print(json.dumps(summary), flush=True)
        results.append(summary)
        with open(os.path.join(out_root, "seq2seq_experiments.json"), "a") as f:
            f.write(json.dumps(summary) + "\n")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+", metavar="TASK|key=value", help=f"presets ({', '.join(PRESETS)}), overrides")
    parser.add_argument("--minutes", type=float, help="override every preset's time budget")
    parser.add_argument("--out-root", default="runs", help="where the run directories go (default runs)")
    parser.add_argument("--config", help="a JSON or TOML file of config fields laid over every preset")
    args = parser.parse_args()
    names = [t for t in args.tasks if "=" not in t]
    if not names or set(names) - set(PRESETS):
        parser.error(f"name presets among {sorted(PRESETS)}, got {names}")
    try:
        main(names, args.minutes, args.out_root, [t for t in args.tasks if "=" in t], args.config)
    except UserError as err:
        parser.exit(2, f"seq2seq.py: error: {err}\n")
