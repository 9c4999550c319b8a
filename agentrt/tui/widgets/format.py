"""Small text formatters shared by the widgets (bytes, counts, ages)."""

from __future__ import annotations

from datetime import datetime

from agentrt.dms.budget import format_bytes


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (B, KiB, MiB, GiB, TiB)."""
    return format_bytes(int(n), digits=1)


def human_count(n: int) -> str:
    """12345 -> '12.3k'."""
    return str(n) if n < 1000 else f"{n / 1000:.1f}k"


def age(then: datetime | None, now: datetime) -> str:
    """How long ago `then` was: 'now', '5m', '3h', '2d', or '-' when unknown."""
    if then is None:
        return "-"
    seconds = (now - then).total_seconds()
    if seconds < 60:
        return "now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return "now"
