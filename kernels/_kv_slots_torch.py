"""Slot writes on CPU through `index_copy_` on flat views: no boolean masks, no `nonzero`.

Same semantics as `agentrt.kernels.reference.write_kv_slots` (the oracle), which stays the
path for a mapping with skipped (negative) slots. A slot s of block b = s // block_size,
offset o lives at row (2b)·block_size + o of the pool viewed as [rows, D] for K and one
block_size further for V, so each tensor is one indexed copy.
"""

from __future__ import annotations

import torch

from agentrt.kernels.reference.write_kv_slots import write_kv_slots as _reference


def write_kv_slots_flat(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    expiry: torch.Tensor,
) -> None:
    """Write row i of k, v, expiry into flat slot slot_mapping[i] (k, v in the pool dtype)."""
    if slot_mapping.numel() == 0:
        return
    if int(slot_mapping.min()) < 0 or not (kv_pool.is_contiguous() and slot_expiry.is_contiguous()):
        _reference(kv_pool, slot_expiry, slot_mapping, k, v, expiry)
        return
    k_rows = kv_rows(slot_mapping, kv_pool.shape[2])
    write_kv_rows(kv_pool, k_rows, k_rows + kv_pool.shape[2], k, v)
    slot_expiry.view(-1).index_copy_(0, slot_mapping, expiry)


def kv_rows(slot_mapping: torch.Tensor, block_size: int) -> torch.Tensor:
    """Row of each flat slot's K in the pool viewed as [rows, D] (its V is block_size further)."""
    return slot_mapping + torch.div(slot_mapping, block_size, rounding_mode="floor") * block_size


def write_kv_rows(
    kv_pool: torch.Tensor,
    k_rows: torch.Tensor,
    v_rows: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Write k, v [N, D] (cast to the pool dtype) at rows k_rows, v_rows [N] int64 of the
    pool viewed as [rows, D] (`kv_rows(slots)` and that + block_size)."""
    rows = kv_pool.view(-1, kv_pool.shape[3])
    rows.index_copy_(0, k_rows, k.to(kv_pool.dtype))
    rows.index_copy_(0, v_rows, v.to(kv_pool.dtype))
