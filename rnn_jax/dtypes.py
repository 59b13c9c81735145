"""Floating dtypes by name: the one table that configs and command lines look names up in."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["DTYPES", "COMPUTE_DTYPES"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
"""Every dtype a command line may name (the benchmark times all three)."""

COMPUTE_DTYPES = ("float32", "bfloat16")
"""The dtypes a trainer computes in (``--dtype``): float16 is left out, as its gradients underflow without the
loss scaling the train step does not do (bfloat16 has float32's exponent range)."""
