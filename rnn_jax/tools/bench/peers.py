"""The peers ``rnn-jax bench`` times rnn_jax against: flax's ``nn.RNN`` cells (and ``nnx.RNN``), torch's
``nn.RNN``/``nn.LSTM``/``nn.GRU`` and, on GPU, cuDNN's LSTM inside JAX (``jax.experimental.rnn``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_jax.errors import UserError
from rnn_jax.tools.bench.timing import Shape, Timed, cpu_model, mean_square


def flax_impl(name, s, dtype, key, cell_name):
    import flax.linen as nn

    wanted = {"vanilla": ("SimpleCell",), "lstm": ("LSTMCell", "OptimizedLSTMCell"), "gru": ("GRUCell",)}
    if cell_name not in wanted.get(name, ()):
        return None
    model = nn.RNN(getattr(nn, cell_name)(features=s.H, param_dtype=dtype, dtype=dtype))
    params = model.init(key, jnp.zeros((s.B, s.T, s.I), dtype))

    def loss(params, xs):
        return mean_square(model.apply(params, xs))

    return loss, params


def nnx_rnn_impl(name, s, dtype, key, ours: bool):
    """flax's ``nnx.OptimizedLSTMCell`` under ``rnn_jax.flax_interop.RNN`` (``ours``) or flax's ``nnx.RNN``."""
    from flax import nnx

    from rnn_jax.flax_interop import RNN

    if name != "lstm":
        return None
    cell = nnx.OptimizedLSTMCell(s.I, s.H, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(params=key))
    graphdef, params, rest = nnx.split((RNN if ours else nnx.RNN)(cell), nnx.Param, ...)

    def loss(params, xs):
        return mean_square(nnx.merge(graphdef, params, rest, copy=True)(xs))  # copies: calls update the rngs

    return loss, params


FLAX_IMPLS = ("flax LSTMCell", "flax OptimizedLSTMCell", "flax SimpleCell", "flax GRUCell")
CUDNN_IMPL = "jax_cudnn LSTM"
"""The row of ``jax.experimental.rnn.lstm``: cuDNN's fused LSTM layer, called from JAX (GPU only)."""
PEER_ROWS = {**dict.fromkeys(FLAX_IMPLS, "flax"), CUDNN_IMPL: "jax_cudnn"}
"""Rows of the JAX peers -> their library (the ``lib`` of the record, what the ratios compare against)."""
TORCH_CELLS = ("vanilla", "lstm", "gru")


def check_cudnn_platform() -> None:
    """``--peers jax_cudnn`` needs a GPU: jax.experimental.rnn lowers for CUDA (and ROCm) only."""
    if jax.default_backend() != "gpu":
        raise UserError(
            f"--peers jax_cudnn needs a GPU: jax.experimental.rnn runs cuDNN's LSTM and has no "
            f"{jax.default_backend()} lowering"
        )


def cudnn_impl(name, s, dtype, key):
    """One LSTM layer through ``jax.experimental.rnn.lstm`` (cuDNN), batch-major like the other rows; float32
    only (its lowering takes float32 and float64)."""
    if name != "lstm" or jnp.dtype(dtype) != jnp.float32:
        return None
    from jax.experimental import rnn as jax_rnn

    weights = jax_rnn.init_lstm_weight(key, s.I, s.H, 1, False)
    zeros_1BH = jnp.zeros((1, s.B, s.H), jnp.float32)
    lengths_B = jnp.full((s.B,), s.T, jnp.int32)

    def loss(weights, xs):
        ys, _, _ = jax_rnn.lstm(xs, zeros_1BH, zeros_1BH, weights, lengths_B, input_size=s.I, hidden_size=s.H,
                                num_layers=1, dropout=0.0, bidirectional=False)  # fmt: skip
        return mean_square(ys)

    return loss, weights


def torch_module():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_items(cell: str, s: Shape, dtype_name: str, modes, threads: int) -> list[Timed]:
    torch = torch_module()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cpu":
        torch.set_num_threads(threads)
    tdtype = getattr(torch, dtype_name)  # torch spells the names of DTYPES the same way
    cls = {"vanilla": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    torch.manual_seed(0)
    module = cls(s.I, s.H).to(dev, tdtype)
    x = torch.randn(s.T, s.B, s.I, device=dev, dtype=tdtype)  # torch's native time-major layout
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    device = f"cuda: {torch.cuda.get_device_name()}" if dev == "cuda" else f"cpu: {cpu_model()}"
    backend = "cudnn" if dev == "cuda" and torch.backends.cudnn.enabled else "aten"

    def fwd():
        with torch.no_grad():
            out, _ = module(x)
            out.float().pow(2).mean().item()
        sync()

    def fwd_bwd():
        module.zero_grad(set_to_none=True)
        out, _ = module(x)
        out.float().pow(2).mean().backward()
        sync()

    items = []
    for mode in modes:
        meta = dict(impl=f"torch nn.{cls.__name__}", lib="torch", backend=backend, device=device, compile_s=0.0)
        meta.update(peak_mb=None, threads=torch.get_num_threads() if dev == "cpu" else None)
        items.append(Timed(meta=dict(meta, mode=mode), call=fwd if mode == "fwd" else fwd_bwd))
    return items
