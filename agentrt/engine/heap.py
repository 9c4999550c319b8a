"""Giving freed host memory back to the operating system after a session leaves.

A long-lived engine allocates and frees large host buffers again and again (checkpoint
reads, snapshots, swap copies). glibc keeps freed heap memory for reuse and raises its mmap
threshold after large frees, so a process that churns sessions for hours sees its RSS creep
up although nothing leaks (measured by `agentrt bench soak`: +77 MiB over an hour of 32
sessions, flat once the heap is trimmed). `trim_heap` calls glibc's `malloc_trim(0)`, which
returns the free memory at the top and in the middle of the heap; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another libc or OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return free heap memory to the OS (glibc only); True when it was attempted."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


__all__ = ["trim_heap"]
