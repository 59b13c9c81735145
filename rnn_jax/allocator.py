"""Keep freed memory mapped: glibc's malloc tuned for XLA:CPU's per-call temporaries (a process-wide choice).

XLA:CPU allocates an executable's temporaries afresh on every call and frees them at its end. glibc returns
blocks that large to the kernel (``mmap``/``munmap`` above its mmap threshold, and trimming the top of the
heap), so every call touches new pages and pays one page fault per 4 KiB: an LSTM layer's forward+backward at
(B, T, I, H) = (32, 128, 256, 256) took 22,000 faults per call, 21 ms of its 67 ms (docs/bench.md, "Page
faults"). :func:`keep_freed_memory` raises both thresholds so freed blocks stay mapped and are reused. The
``rnn-jax`` commands call it; call it yourself at the start of a program that runs rnn_jax on CPU. The cost:
the process keeps the memory of its largest call mapped after the call ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused there
_TRIM_THRESHOLD = (1 << 31) - 1  # never give the top of the heap back


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed memory mapped (once per process); ``False`` where that cannot be
    done (not Linux with glibc) or ``RNN_JAX_KEEP_FREED_MEMORY=0`` turns it off, ``True`` once done."""
    if os.environ.get("RNN_JAX_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
