"""rnn_jax.keep_freed_memory: glibc keeps freed blocks mapped, so a program that allocates the same large
temporaries call after call (XLA:CPU does) stops paying a page fault per page on every call."""

import subprocess
import sys

import pytest

from rnn_jax import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")

# 20 rounds of five fresh 16 MiB arrays, written whole and freed together (as XLA frees a call's temporaries);
# prints the page faults of the rounds after the first
ROUNDS = """
import resource, sys, numpy as np
if sys.argv[1] == "keep":
    import rnn_jax.allocator
    assert rnn_jax.allocator.keep_freed_memory()
def round():
    arrays = [np.ones(1 << 22, np.float32) for _ in range(5)]
    del arrays
round()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_freed_memory_is_reused_without_page_faults():
    plain, kept = _faults("plain"), _faults("keep")
    assert plain > 20 * 1000  # glibc gives the freed top of the heap back: the next round faults again
    assert kept < 1000, (plain, kept)


def test_turned_off_by_the_environment(monkeypatch):
    allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("RNN_JAX_KEEP_FREED_MEMORY", "0")
    try:
        assert allocator.keep_freed_memory() is False
    finally:
        allocator.keep_freed_memory.cache_clear()
