"""The anchor configurations of the GPU measurements (``rnn_anchor.py``; the H100 numbers: docs/bench.md, "GPU").

Each is ``(name, B, T, I, H)``: one layer, fwd+bwd, loss ``mean(h^2)``. The kernels' lowering tests and
the device check (``experiments/device_check.sh``) use exactly these, so their numbers line up with the
H100 table: cuDNN vanilla/LSTM at "tiny_step" 0.98/1.34 us per step, at "latency" 4.8/38.5 ms.
"""

from __future__ import annotations

from typing import NamedTuple


class Anchor(NamedTuple):
    """One anchor configuration: batch, steps, input and hidden size."""

    name: str
    B: int
    T: int
    I: int  # noqa: E741 (the shape letter used everywhere in the project)
    H: int


ANCHORS: tuple[Anchor, ...] = (
    Anchor("typical", 64, 256, 512, 512),
    Anchor("latency", 16, 1024, 256, 256),
    Anchor("throughput", 256, 128, 1024, 1024),
    Anchor("tiny_step", 1, 4096, 64, 64),
    Anchor("flashrnn", 16, 1024, 768, 768),  # the FlashRNN paper's H100 LSTM configuration
)
"""The five GPU anchor configurations, in the order of ``rnn_anchor.py``."""
