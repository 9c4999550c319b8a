"""Reading part of a session cache: positions of every live slot, K/V of chosen rows only.

An incremental save needs the K/V of the slots written since the previous checkpoint, not
of the whole cache. `pack_positions` copies what deciding that takes (8 bytes per live
slot: position and expiry, in the packed order of `agentrt.dms.cache_state`) and
`gather_kv` then copies the K/V of the rows the delta holds, so a save under the engine
lock costs what the turn added plus 8 bytes per slot, not the whole cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from agentrt.dms.cache_state import stream_slots

if TYPE_CHECKING:
    from agentrt.dms.session_cache import SessionCache


def pack_positions(cache: SessionCache) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """(the cache state without `layer.{l}.k`/`.v`, each layer's flat pool slots [sum lens]).

    The state holds `layer.{l}.pos`, `.expiry`, `.lens`, `ring_slot`, `ring_flag` and
    `next_pos` exactly as `pack_state` packs them.
    """
    pool = cache.pool
    bs = pool.block_size
    state: dict[str, torch.Tensor] = {}
    flats = []
    for layer in range(cache.num_layers):
        flat = stream_slots(cache.blocks[layer], cache.lens[layer], bs).to(pool.kv.device)
        blocks, offsets = flat // bs, flat % bs
        state[f"layer.{layer}.pos"] = pool.slot_pos[blocks, offsets].cpu()
        state[f"layer.{layer}.expiry"] = pool.slot_expiry[blocks, offsets].cpu()
        state[f"layer.{layer}.lens"] = torch.tensor(cache.lens[layer], dtype=torch.int32)
        flats.append(flat)
    state["ring_slot"] = cache.ring_slot.detach().to("cpu", torch.int64).clone()
    state["ring_flag"] = cache.ring_flag.detach().to("cpu", torch.bool).clone()
    state["next_pos"] = torch.tensor([cache.next_pos], dtype=torch.int64)
    return state, flats


def gather_kv(
    cache: SessionCache, flat: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [len(rows), head_dim] on the CPU of packed rows `rows` of one layer, whose
    flat pool slots (`pack_positions`) are `flat`."""
    pool = cache.pool
    bs = pool.block_size
    at = flat[rows.to(flat.device)]
    blocks, offsets = at // bs, at % bs
    return pool.kv[blocks, 0, offsets].cpu(), pool.kv[blocks, 1, offsets].cpu()


__all__ = ["gather_kv", "pack_positions"]
