"""Pure-torch scatter of new K/V rows and their expiry into pool slots."""

from __future__ import annotations

import torch


def write_kv_slots(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    expiry: torch.Tensor,
) -> None:
    """Write row i of k, v, expiry into flat slot slot_mapping[i], in place; slots < 0 are skipped.

    kv_pool [num_blocks, 2, block_size, D]; slot_expiry [num_blocks, block_size] int32;
    slot_mapping [N] int64 (block * block_size + offset, unique); k, v [N, D]; expiry [N] int32.
    """
    block_size = kv_pool.shape[2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    blocks, offsets = slots // block_size, slots % block_size
    kv_pool[blocks, 0, offsets] = k[keep].to(kv_pool.dtype)
    kv_pool[blocks, 1, offsets] = v[keep].to(kv_pool.dtype)
    slot_expiry[blocks, offsets] = expiry[keep]
