"""Pure-torch paged decode attention: the test oracle and the CPU execution path."""

from __future__ import annotations

import torch


def gather_stream(
    kv_pool: torch.Tensor, block_row: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather the first `n` slots of one stream; returns K, V each [n, D] in pool dtype.

    kv_pool [num_blocks, 2, block_size, D]; block_row [max_blocks] int32 (this stream's blocks).
    """
    block_size, d = kv_pool.shape[2], kv_pool.shape[3]
    nblk = -(-n // block_size)
    blocks = kv_pool[block_row[:nblk].long()]  # [nblk, 2, block_size, D]
    k = blocks[:, 0].reshape(-1, d)[:n]
    v = blocks[:, 1].reshape(-1, d)[:n]
    return k, v


def gather_stream_expiry(
    slot_expiry: torch.Tensor, block_row: torch.Tensor, n: int
) -> torch.Tensor:
    """Gather the expiry of the first `n` slots of one stream -> [n] int32.

    slot_expiry [num_blocks, block_size] int32; block_row [max_blocks] int32.
    """
    block_size = slot_expiry.shape[1]
    nblk = -(-n // block_size)
    return slot_expiry[block_row[:nblk].long()].reshape(-1)[:n]


def gather_padded(
    kv_pool: torch.Tensor, block_tables: torch.Tensor, cache_lens: torch.Tensor, longest: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every stream's K, V [S, H_kv, longest, D] (pool dtype; padding unmasked) and its
    validity [S, H_kv, longest] bool, gathered in one indexing per tensor."""
    num_seqs, num_kv_heads = block_tables.shape[:2]
    block_size, d = kv_pool.shape[2], kv_pool.shape[3]
    nblk = -(-longest // block_size)
    idx = block_tables[:, :, :nblk].long()
    # K and V gathered apart ([S, H_kv, nblk, block_size, D] each, contiguous): the reshape
    # is a view, so each plane is copied once instead of gathered whole and then split.
    k = kv_pool[:, 0][idx].reshape(num_seqs, num_kv_heads, nblk * block_size, d)[:, :, :longest]
    v = kv_pool[:, 1][idx].reshape(num_seqs, num_kv_heads, nblk * block_size, d)[:, :, :longest]
    valid = torch.arange(longest, device=kv_pool.device) < cache_lens[..., None].long()
    return k, v, valid


def paged_decode_attention(
    q: torch.Tensor,
    kv_pool: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One decode query per sequence over its paged streams -> out [S, H_q, D] (q's dtype).

    q [S, H_q, D]; kv_pool [num_blocks, 2, block_size, D]; block_tables [S, H_kv, max_blocks]
    int32; cache_lens [S, H_kv] int32. Every held slot is visible; an empty stream gives zeros.
    `num_splits` only matters to the Triton kernel (the reference computes in one pass).
    """
    del num_splits
    num_seqs, num_q_heads, d = q.shape
    num_kv_heads = block_tables.shape[1]
    g = num_q_heads // num_kv_heads
    ct = torch.promote_types(q.dtype, torch.float32)  # fp32 math, fp64 stays fp64
    longest = int(cache_lens.max()) if cache_lens.numel() else 0
    if longest == 0:
        return torch.zeros_like(q)
    k, v, valid = gather_padded(kv_pool, block_tables, cache_lens, longest)
    v = v.to(ct).masked_fill(~valid[..., None], 0.0)  # padding may hold garbage (even NaN)
    qg = q.view(num_seqs, num_kv_heads, g, d).to(ct)
    scores = torch.einsum("shgd,shld->shgl", qg, k.to(ct)) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = scores.softmax(dim=-1).nan_to_num(0.0)  # empty streams -> zeros
    out = torch.einsum("shgl,shld->shgd", probs, v)
    return out.reshape(num_seqs, num_q_heads, d).to(q.dtype)
