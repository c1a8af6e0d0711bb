"""Reuse of freed host memory, for training and inference on the CPU.

A CPU training step allocates and frees gigabytes of large tensors. glibc's malloc serves every
block above its mmap threshold (32 MB at most) with a fresh ``mmap`` and unmaps it on ``free``, so
each step faults in brand-new pages that the kernel must zero first (`docs/speed.md`
has the measured cost). Serving large blocks from malloc's heap and never trimming it keeps those
pages mapped from one step to the next; the price is that the process holds on to its peak memory
until it exits, which is what GPU frameworks' caching allocators do too.

``mireg``'s command line turns this on at start; ``MIREG_KEEP_FREED_MEMORY=0`` turns it off. It is a
process-wide malloc setting, so the library never changes it behind an embedding program's back.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "MIREG_KEEP_FREED_MEMORY"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory mapped; returns whether it was applied.

    Nothing is changed (and ``False`` returned) when ``MIREG_KEEP_FREED_MEMORY`` is ``0``, off
    Linux, or with a C library without glibc's ``mallopt`` (musl, for one).
    """
    if os.environ.get(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        # The symbols of this process: the C library Python itself runs on (no library search).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No mmap for large blocks (they come from the heap), and no trimming of the heap's top
    # (-1 disables it). mallopt returns 1 on success.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
