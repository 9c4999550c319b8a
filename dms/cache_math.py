"""Cache arithmetic that needs no torch: ceil-division into blocks and the compression ratio.

`CacheSpec` builds on these; the CLI reads checkpoint headers with them without torch.
"""

from __future__ import annotations

from collections.abc import Sequence


def ceil_div(a: int, b: int) -> int:
    """⌈a / b⌉ for a ≥ 0, b ≥ 1."""
    return -(-a // b)


def compression_ratio(tokens: int, lens: Sequence[Sequence[int]]) -> float:
    """Tokens · streams / slots held (window included); 1.0 for an empty cache.

    `lens` [layers][kv heads] are the live slots per stream; every stream saw `tokens` tokens.
    """
    streams = sum(len(row) for row in lens)
    slots = sum(sum(row) for row in lens)
    return tokens * streams / slots if slots else 1.0


__all__ = ["ceil_div", "compression_ratio"]
