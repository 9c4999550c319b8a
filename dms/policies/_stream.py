"""Plain-torch access to one stream of a session cache: read its keys, score them, evict slots.

A stream is (session, layer, KV head); its live slots are 0..lens−1, addressed through the
session's block table. These helpers never keep state: positions come from the pool's
`slot_pos`, so callers can key anything by absolute token position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrt.dms.session_cache import SessionCache
from agentrt.kernels import copy_kv_slots


@dataclass
class Stream:
    """The live slots of one stream, in slot order."""

    keys: torch.Tensor  # [n, d] post-RoPE keys, pool dtype and device
    positions: torch.Tensor  # [n] int64 absolute token positions


def read_stream(cache: SessionCache, layer: int, head: int) -> Stream:
    """Gather the keys [n, d] and positions [n] of one stream's live slots."""
    pool = cache.pool
    n = cache.lens[layer][head]
    bs = pool.block_size
    device = pool.kv.device
    blocks = torch.tensor(cache.blocks[layer][head], dtype=torch.int64, device=device)
    slot = torch.arange(n, device=device)
    flat = blocks[slot // bs] * bs + slot % bs  # [n]
    keys = pool.kv[flat // bs, 0, flat % bs]  # [n, d]
    return Stream(keys=keys, positions=pool.pos_flat[flat].to(torch.int64))


def group_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    key_pos: torch.Tensor,
    query_pos: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal softmax weights averaged over a query group: q [T, G, d], keys [n, d] → [T, n].

    Query t sees the keys with key_pos ≤ query_pos[t] (key_pos [n], query_pos [T]); every
    query sees at least its own key. Computed in float32 (float64 for float64 inputs).
    Cost O(T·G·n·d) flops and a [T, G, n] intermediate.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("tgd,nd->tgn", q.to(dtype), keys.to(dtype)) * scale
    hidden = key_pos[None, None, :] > query_pos[:, None, None]
    return scores.masked_fill(hidden, float("-inf")).softmax(dim=-1).mean(dim=1)


def lowest_slots(
    scores: torch.Tensor, positions: torch.Tensor, count: int, protected: torch.Tensor | None = None
) -> list[int]:
    """The `count` slots with the lowest score (ties: older position first), never a protected one.

    scores [n] float, positions [n] int64, protected [n] bool or None. The caller guarantees
    at least `count` unprotected slots.
    """
    if count <= 0:
        return []
    key = scores.to(torch.float64)
    if protected is not None:
        key = key.masked_fill(protected, float("inf"))
    by_pos = torch.argsort(positions)
    order = by_pos[torch.argsort(key[by_pos], stable=True)]
    return order[:count].tolist()


def evict_slots(cache: SessionCache, layer: int, head: int, slots: list[int]) -> None:
    """Drop live slots of one stream: plan, move tail slots into the holes, release emptied blocks."""
    plan = cache.plan_evict(layer, head, slots)
    if plan.move_src:
        pool = cache.pool
        device = pool.kv.device
        src = torch.tensor(plan.move_src, dtype=torch.int64, device=device)
        dst = torch.tensor(plan.move_dst, dtype=torch.int64, device=device)
        copy_kv_slots(pool.kv, pool.slot_expiry, src, dst)
        pool.pos_flat[dst] = pool.pos_flat[src]
    cache.release_shrunk(layer, plan)
