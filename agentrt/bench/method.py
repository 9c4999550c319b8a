"""The measuring method every `agentrt bench` suite shares.

Warm-up, then repeats interleaved across the compared variants (the order rotates each
repeat, so load that drifts over time hits every variant alike), medians with the spread,
ratios only between samples of the same repeat, and tokens counted the same way on every
side (tokens carried by forward passes, never a token that came free from earlier logits).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch


@dataclass(frozen=True)
class Sample:
    """One timed run: wall seconds and the tokens its forward passes carried (0: not a rate)."""

    seconds: float
    tokens: int = 0


@dataclass(frozen=True)
class Case:
    """A named variant: `run()` does the work once and returns what it timed (setup excluded)."""

    name: str
    run: Callable[[], Sample]


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of `fn()`, synchronised on `device` before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def interleaved(
    cases: list[Case],
    *,
    repeats: int,
    warmup: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[Sample]]:
    """Run every case `warmup` times (discarded), then `repeats` rounds with a rotating order."""
    for _ in range(warmup):
        for case in cases:
            case.run()
    samples: dict[str, list[Sample]] = {c.name: [] for c in cases}
    for r in range(repeats):
        shift = r % len(cases)
        for case in cases[shift:] + cases[:shift]:
            samples[case.name].append(case.run())
        if progress is not None:
            progress(f"repeat {r + 1}/{repeats}")
    return samples


def spread(values: list[float]) -> dict[str, float | int]:
    """Median, min, max and the relative spread (max − min) / median of `values`."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread": (hi - lo) / med if med else 0.0,
        "n": len(values),
    }


def summarize(samples: list[Sample]) -> dict[str, Any]:
    """Seconds and (where tokens were counted) tokens/s, each as `spread`, plus the raw samples."""
    out: dict[str, Any] = {"seconds": spread([s.seconds for s in samples])}
    if all(s.tokens for s in samples):
        out["tokens"] = samples[0].tokens
        out["tokens_per_s"] = spread([s.tokens / s.seconds for s in samples])
    out["samples"] = [[s.seconds, s.tokens] for s in samples]
    return out


def paired_ratio(num: list[Sample], den: list[Sample], *, rate: bool) -> dict[str, float | int]:
    """Per-repeat ratio of two variants measured in the same rounds (rate: tokens/s, else time).

    rate=True gives num tokens/s ÷ den tokens/s (> 1: num is faster); rate=False gives
    den seconds ÷ num seconds (> 1: num takes less time).
    """
    if len(num) != len(den):
        raise ValueError(f"paired_ratio needs equal repeats, got {len(num)} and {len(den)}")
    if rate:
        values = [
            (a.tokens / a.seconds) / (b.tokens / b.seconds) for a, b in zip(num, den, strict=True)
        ]
    else:
        values = [b.seconds / a.seconds for a, b in zip(num, den, strict=True)]
    return spread(values)


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what a result was measured (date, host, cores, load, card, versions)."""
    import transformers

    from agentrt import __version__

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": round(load[0], 2),
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {
            "agentrt": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    }
