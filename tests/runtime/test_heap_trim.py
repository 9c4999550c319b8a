"""Freed host memory goes back to the OS when a session closes (glibc's malloc_trim)."""

from __future__ import annotations

import sys

import pytest

from agentrt.engine.heap import _malloc_trim, trim_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim (Linux)")
def test_trim_heap_returns_freed_heap_memory() -> None:
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # ~250 MiB of 64 KiB heap chunks
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    keep = [bytearray(64) for _ in range(4000)]  # small live objects between them
    peak = _rss_mb()
    del blocks
    assert trim_heap()
    after = _rss_mb()
    assert after < peak - 150, (peak, after)
    assert keep


def test_trim_heap_is_a_no_op_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    _malloc_trim.cache_clear()
    monkeypatch.setattr(sys, "platform", "darwin")
    try:
        assert trim_heap() is False
    finally:
        monkeypatch.undo()
        _malloc_trim.cache_clear()
