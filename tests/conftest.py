"""Strict settings for every test: implicit rank promotion is an error, keys are explicit."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests (masking in test_scan.py, edit distance in test_metrics.py): the "ci" profile, the default
# (what `python -m pytest` and .ci/run use), tries 100 examples of each; RNN_JAX_HYPOTHESIS=quick tries 12
# while editing. No deadline: an example that compiles a new shape is slow, not wrong.
_PROFILE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", max_examples=100, **_PROFILE)
settings.register_profile("quick", max_examples=12, **_PROFILE)
settings.load_profile(os.environ.get("RNN_JAX_HYPOTHESIS", "ci"))


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (for comparisons against float64 numpy references)."""
    with jax.enable_x64(True):
        yield
