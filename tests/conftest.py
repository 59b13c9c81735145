"""Strict settings for every test: implicit rank promotion is an error, keys are explicit."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests compile a few shapes each; keep them bounded and free of deadline flakiness on CI.
settings.register_profile("ci", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (for comparisons against float64 numpy references)."""
    with jax.enable_x64(True):
        yield
