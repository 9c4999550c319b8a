"""Pure-torch copy of K/V and expiry between pool slots (compaction, copy-on-write)."""

from __future__ import annotations

import torch


def copy_kv_slots(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> None:
    """Copy K, V and expiry of flat slot src[i] to flat slot dst[i], in place.

    kv_pool [num_blocks, 2, block_size, D]; slot_expiry [num_blocks, block_size] int32;
    src, dst [N] int64 flat slots (block * block_size + offset); dst must be unique. Every
    source is read before any destination is written, so src and dst may overlap.
    """
    block_size = kv_pool.shape[2]
    sb, so = src // block_size, src % block_size
    db, do = dst // block_size, dst % block_size
    rows = kv_pool[sb, :, so]  # [N, 2, D]
    expiry = slot_expiry[sb, so]
    kv_pool[db, :, do] = rows
    slot_expiry[db, do] = expiry
