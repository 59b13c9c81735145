"""Strict settings for every test: implicit rank promotion is an error, keys are explicit; the platform.

The tests run on the CPU, whatever the machine has, unless one of these picks another (first match wins):
``RNN_JAX_TEST_PLATFORM`` (a ``JAX_PLATFORMS`` value such as ``cuda`` or ``cuda,cpu``), an explicit
``JAX_PLATFORMS``, or a marker expression that selects the ``gpu`` tests (``pytest -m gpu``): then JAX picks
its default backend, the GPU where there is one, and the ``gpu`` tests skip where there is none.
"""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_numpy_rank_promotion", "raise")

# Property tests (masking in test_scan.py, edit distance in test_metrics.py): the "ci" profile, the default
# (what `python -m pytest` and .ci/run use), tries 100 examples of each; RNN_JAX_HYPOTHESIS=quick tries 12
# while editing. No deadline: an example that compiles a new shape is slow, not wrong.
_PROFILE = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("ci", max_examples=100, **_PROFILE)
settings.register_profile("quick", max_examples=12, **_PROFILE)
settings.load_profile(os.environ.get("RNN_JAX_HYPOTHESIS", "ci"))


def _selects_gpu_tests(markexpr: str) -> bool:
    """Whether ``-m markexpr`` keeps a test marked ``gpu`` and drops an unmarked one (``gpu``, ``gpu and not slow``)."""
    if not markexpr.strip():
        return False
    from _pytest.mark.expression import Expression  # pytest's own parser of -m expressions

    expression = Expression.compile(markexpr)
    return expression.evaluate(lambda name, **_: name == "gpu") and not expression.evaluate(lambda name, **_: False)


def platform_for(markexpr: str, env) -> str | None:
    """The ``JAX_PLATFORMS`` value for a run with ``-m markexpr`` under ``env``; None leaves JAX's default."""
    if env.get("RNN_JAX_TEST_PLATFORM"):
        return env["RNN_JAX_TEST_PLATFORM"]
    if env.get("JAX_PLATFORMS"):
        return env["JAX_PLATFORMS"]
    return None if _selects_gpu_tests(markexpr) else "cpu"


def pytest_configure(config):
    # Before collection, so before any test module touches a device. Subprocesses the tests start inherit it.
    platform = platform_for(config.getoption("markexpr", "") or "", os.environ)
    if platform is not None:
        os.environ["JAX_PLATFORMS"] = platform
        jax.config.update("jax_platforms", platform)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (for comparisons against float64 numpy references)."""
    with jax.enable_x64(True):
        yield
