"""CacheSpec: the layout of the paged DMS KV cache as data; memory planning reads it, never layers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agentrt.dms.cache_math import ceil_div, compression_ratio
from agentrt.errors import ConfigError

# Per-slot metadata stored beside K/V: int32 expiry position + int32 absolute position.
SLOT_METADATA_BYTES = 4 + 4


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """Geometry of one model's paged KV cache; a block holds `block_size` slots of one stream.

    A stream is one (session, layer, KV head). `window` is DMS's w: a marked key stays
    visible for w more queries, so the last `ring_len = w + 1` tokens are always kept.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype
    window: int

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError listing all problems."""
        problems: list[str] = []
        for name, minimum in (
            ("num_layers", 1),
            ("num_kv_heads", 1),
            ("head_dim", 1),
            ("block_size", 1),
            ("window", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name}={value!r} must be an int")
            elif value < minimum:
                problems.append(f"{name}={value!r} must be >= {minimum}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            problems.append(
                f"dtype={self.dtype!r} must be a floating torch.dtype (e.g. torch.bfloat16)"
            )
        if problems:
            raise ConfigError(
                "invalid CacheSpec: " + "; ".join(problems),
                hint="take the values from the model config (layers, KV heads, head dim) and DMS config",
            )

    @property
    def ring_len(self) -> int:
        """W = w + 1: the number of most recent tokens of a stream that are always visible."""
        return self.window + 1

    @property
    def itemsize(self) -> int:
        """Bytes of one K or V element in `dtype`."""
        return self.dtype.itemsize

    @property
    def bytes_per_slot(self) -> int:
        """Bytes of one slot: K + V vectors plus int32 expiry and int32 position."""
        return 2 * self.head_dim * self.itemsize + SLOT_METADATA_BYTES

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one pool block: K+V `[2, block_size, head_dim]` plus `[block_size]` x 2 int32."""
        return self.block_size * self.bytes_per_slot

    def blocks_for_slots(self, n: int) -> int:
        """Blocks one stream needs to hold `n` slots (ceil(n / block_size))."""
        assert n >= 0, f"slot count n={n} must be >= 0"
        return ceil_div(n, self.block_size)

    def bytes_for(self, slots_per_stream: Sequence[int]) -> int:
        """Pool bytes needed for streams holding the given slot counts (each rounded up to blocks)."""
        return sum(self.blocks_for_slots(n) for n in slots_per_stream) * self.bytes_per_block

    def max_stream_slots(self, tokens: int) -> int:
        """Worst-case slots one stream holds after `tokens` tokens (no eviction: every token kept)."""
        if tokens < 0:
            raise ConfigError(f"token count tokens={tokens} must be >= 0")
        return tokens

    def blocks_for_streams(self, lens: Sequence[Sequence[int]]) -> int:
        """Blocks a session needs for the slot counts `lens` [layers][kv heads]."""
        return sum(self.blocks_for_slots(n) for row in lens for n in row)

    def blocks_to_grow(self, lens: Sequence[Sequence[int]], num_new: int) -> int:
        """Extra blocks unshared streams holding `lens` need to append `num_new` slots each."""
        return sum(
            self.blocks_for_slots(n + num_new) - self.blocks_for_slots(n)
            for row in lens
            for n in row
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary of the fields and the derived sizes."""
        return {
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "block_size": self.block_size,
            "dtype": str(self.dtype).removeprefix("torch."),
            "window": self.window,
            "ring_len": self.ring_len,
            "streams_per_session": self.num_layers * self.num_kv_heads,
            "bytes_per_slot": self.bytes_per_slot,
            "bytes_per_block": self.bytes_per_block,
        }


__all__ = ["SLOT_METADATA_BYTES", "CacheSpec", "ceil_div", "compression_ratio"]
