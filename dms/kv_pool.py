"""KVPool: one global pool of fixed-size KV blocks shared by all sessions, layers and KV heads.

A block holds `block_size` slots of one stream (session, layer, KV head): K and V vectors
plus two int32 metadata rows (expiry position, absolute position). The pool owns the
tensors, the LIFO free list and the reference counts (copy-on-write forks); which block
belongs to which stream is the per-session cache's business. Check-then-act, nano-vllm
style: `can_allocate(n)` then `allocate(n)`; `free(blocks)` drops one reference each.

Memory layout: `kv` is contiguous `[num_blocks, 2, block_size, head_dim]` (the layout
agentrt.kernels requires). A flat slot id `block * block_size + offset` (`flat_slot`)
addresses K/V through the kernels' `write_kv_slots` / `copy_kv_slots` and the metadata
through the true views `expiry_flat` / `pos_flat`. There are no flat K or V views: in this
layout K rows are not evenly strided, so such a "view" would be a copy that drops writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import torch

from agentrt.dms.budget import format_bytes, parse_bytes
from agentrt.dms.cache_spec import CacheSpec
from agentrt.errors import BudgetError, ConfigError
from agentrt.kernels import KEEP_FOREVER  # INT32_MAX: slot_expiry of a key kept forever

UNUSED = -1  # slot_expiry / slot_pos of a slot that holds no token


class KVPool:
    """Fixed-size blocks `[2, block_size, head_dim]` + slot metadata, a free list and refcounts."""

    def __init__(
        self, spec: CacheSpec, num_blocks: int, device: str | torch.device = "cpu"
    ) -> None:
        """Allocate every tensor once: K/V uninitialised, metadata filled with UNUSED (-1)."""
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ConfigError(
                f"KVPool num_blocks={num_blocks!r} must be an int >= 1",
                hint="size the pool with KVPool.from_budget(spec, kv_budget)",
            )
        self.spec = spec
        self.device = torch.device(device)
        self.block_size = spec.block_size
        self.head_dim = spec.head_dim
        self.bytes_per_block = spec.bytes_per_block
        self._num_blocks = num_blocks
        bs, hd = spec.block_size, spec.head_dim
        # dim 1: 0 = K, 1 = V.
        self.kv = torch.empty(
            num_blocks, 2, bs, hd, dtype=spec.dtype, device=self.device
        )  # [num_blocks, 2, block_size, head_dim]
        # Last query position allowed to see the slot (KEEP_FOREVER = never expires).
        self.slot_expiry = torch.full(
            (num_blocks, bs), UNUSED, dtype=torch.int32, device=self.device
        )  # [num_blocks, block_size]
        # Absolute token position stored in the slot (UNUSED = empty).
        self.slot_pos = torch.full(
            (num_blocks, bs), UNUSED, dtype=torch.int32, device=self.device
        )  # [num_blocks, block_size]
        self.expiry_flat = self.slot_expiry.view(-1)  # [num_blocks*block_size]
        self.pos_flat = self.slot_pos.view(-1)  # [num_blocks*block_size]
        # LIFO: pop() from the end, so a fresh pool hands out 0, 1, 2, ...
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._refcount: list[int] = [0] * num_blocks

    @classmethod
    def from_budget(
        cls, spec: CacheSpec, budget: str | int, device: str | torch.device = "cpu"
    ) -> KVPool:
        """Build the largest pool whose blocks (K/V + metadata) fit in `budget` ("40GiB", bytes)."""
        total = parse_bytes(budget)
        num_blocks = total // spec.bytes_per_block
        if num_blocks == 0:
            raise BudgetError(
                f"kv_budget {budget!r} ({total} bytes) is smaller than one block of "
                f"{spec.bytes_per_block} bytes (block_size={spec.block_size} slots x "
                f"head_dim={spec.head_dim} x K+V in {spec.describe()['dtype']}, plus slot metadata)",
                hint=f"raise kv_budget to at least {format_bytes(spec.bytes_per_block)}, "
                "or lower block_size",
            )
        return cls(spec, num_blocks, device)

    # -- sizes ---------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """Total number of blocks in the pool."""
        return self._num_blocks

    @property
    def num_free(self) -> int:
        """Blocks on the free list (refcount 0)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one owner."""
        return self._num_blocks - len(self._free)

    @property
    def bytes_total(self) -> int:
        """Bytes of the whole pool (K/V + slot metadata)."""
        return self._num_blocks * self.bytes_per_block

    @property
    def bytes_used(self) -> int:
        """Bytes of the blocks in use (a shared block counts once)."""
        return self.num_used * self.bytes_per_block

    # -- allocation ----------------------------------------------------------------------

    def can_allocate(self, n: int) -> bool:
        """Whether `allocate(n)` would succeed now."""
        return 0 <= n <= len(self._free)

    def allocate(self, n: int, *, fill: bool = True) -> list[int]:
        """Take `n` blocks (refcount 1, metadata reset to UNUSED, K/V zeroed); all or nothing,
        else BudgetError. Zeroed K/V keep every slot of a held block finite, so a gather that
        reads a block whole (the CPU decode path) never meets NaN garbage in its padding.
        `fill=False` skips the resets for a caller that writes every slot of the blocks (K,
        V, positions and expiry) before anything reads them."""
        assert n >= 0, f"allocate(n={n}): n must be >= 0"
        free = len(self._free)
        if n > free:
            bpb = self.bytes_per_block
            raise BudgetError(
                f"KV pool needs {n} blocks ({n * bpb} bytes), only {free} free "
                f"({free * bpb} bytes) of {self._num_blocks} "
                f"({format_bytes(self.bytes_total)} total)",
                hint="raise kv_budget, or close or swap out idle sessions",
            )
        blocks = [self._free.pop() for _ in range(n)]
        for block in blocks:
            self._refcount[block] = 1
        if blocks and fill:
            index = torch.tensor(blocks, dtype=torch.long).to(self.device)
            self.slot_expiry.index_fill_(0, index, UNUSED)
            self.slot_pos.index_fill_(0, index, UNUSED)
            self.kv.index_fill_(0, index, 0)
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Drop one reference per listed block; blocks reaching refcount 0 go back on the free list."""
        blocks = [int(b) for b in blocks]
        for block, count in Counter(blocks).items():
            self._check_id(block)
            held = self._refcount[block]
            assert held >= count, f"double free: block {block} freed {count}x, refcount {held}"
        released = []
        for block in blocks:
            self._refcount[block] -= 1
            if self._refcount[block] == 0:
                released.append(block)
        # Reversed, so that allocate(len(released)) hands them out again in the same order.
        self._free.extend(reversed(released))

    def incref(self, blocks: Iterable[int]) -> None:
        """Add one reference per listed block (a fork now shares it); blocks must be in use."""
        blocks = [int(b) for b in blocks]
        for block in blocks:
            self._check_id(block)
            assert self._refcount[block] > 0, f"incref of free block {block} (refcount 0)"
        for block in blocks:
            self._refcount[block] += 1

    def refcount(self, block: int) -> int:
        """Number of owners of `block` (0 = free)."""
        self._check_id(block)
        return self._refcount[block]

    def is_shared(self, block: int) -> bool:
        """Whether more than one owner holds `block` (writing to it needs copy_on_write)."""
        return self.refcount(block) > 1

    def copy_on_write(self, block: int) -> int:
        """Return a block the caller may write: `block` itself if unshared, else a private copy.

        The copy gets the K/V and metadata rows of `block`; the caller's reference on
        `block` moves to the copy, the other owners keep `block` untouched. Raises
        BudgetError (changing nothing) when the pool has no free block for the copy.
        """
        held = self.refcount(block)
        assert held > 0, f"copy_on_write of free block {block} (refcount 0)"
        if held == 1:
            return block
        (new,) = self.allocate(1, fill=False)  # the copy writes every row of it
        self._copy_block(block, new)
        self._refcount[block] -= 1
        return new

    # -- helpers for the per-session cache -----------------------------------------------

    def flat_slot(self, block_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Flat slot ids `block * block_size + offset` (int64, broadcast shape of the inputs)."""
        return block_ids.to(torch.int64) * self.block_size + offsets.to(torch.int64)

    def stats(self) -> dict[str, Any]:
        """JSON-ready counters: blocks free/used/shared and bytes."""
        shared = sum(1 for r in self._refcount if r > 1)
        return {
            "num_blocks": self._num_blocks,
            "num_free": self.num_free,
            "num_used": self.num_used,
            "num_shared": shared,
            "block_size": self.block_size,
            "bytes_per_block": self.bytes_per_block,
            "bytes_total": self.bytes_total,
            "bytes_used": self.bytes_used,
            "bytes_free": self.num_free * self.bytes_per_block,
            "utilization": self.num_used / self._num_blocks,
            "device": str(self.device),
            "dtype": self.spec.describe()["dtype"],
        }

    def __repr__(self) -> str:
        """Short summary: blocks used/total and bytes."""
        return (
            f"KVPool(blocks={self.num_used}/{self._num_blocks} used, "
            f"{format_bytes(self.bytes_used)}/{format_bytes(self.bytes_total)}, "
            f"device={self.device})"
        )

    # -- internals -----------------------------------------------------------------------

    def _check_id(self, block: int) -> None:
        """Internal invariant: `block` is a valid block id."""
        assert 0 <= block < self._num_blocks, f"block id {block} outside [0, {self._num_blocks})"

    def _copy_block(self, src: int, dst: int) -> None:
        """Copy K/V `[2, block_size, head_dim]` and both metadata rows of block `src` to `dst`.

        A whole block is one contiguous range, so this is one device memcpy per tensor (no
        index tensors, no sync). agentrt.kernels.copy_kv_slots is the per-slot gather for
        compaction: it needs head_dim >= 16 and does not move slot_pos.
        """
        self.kv[dst].copy_(self.kv[src])
        self.slot_expiry[dst].copy_(self.slot_expiry[src])
        self.slot_pos[dst].copy_(self.slot_pos[src])


__all__ = ["KEEP_FOREVER", "UNUSED", "KVPool"]
