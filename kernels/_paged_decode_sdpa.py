"""Paged decode attention on CPU through torch's fused SDPA: one call per layer, no score pass.

Same signature and semantics as `agentrt.kernels.reference.paged_decode_attention` (the
oracle). Every stream's blocks are gathered whole (K and V of a block are one contiguous
row of the pool) with one `index_select`, then K and V are split out, upcast and laid out
for SDPA by one copy, padded to the longest held length, and attended by
`scaled_dot_product_attention` with a boolean mask for the padding; the einsum /
masked_fill / softmax / nan_to_num passes over materialised scores of the reference are
gone. The decode step of a small model is many small ops, so fewer of them is most of the
gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def paged_decode_attention_sdpa(
    q: torch.Tensor,
    kv_pool: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One decode query per sequence over its paged streams -> out [S, H_q, D] (q's dtype).

    Shapes as the reference: q [S, H_q, D]; kv_pool [num_blocks, 2, block_size, D];
    block_tables [S, H_kv, max_blocks] int32; cache_lens [S, H_kv] int32. An empty stream
    gives zeros.
    """
    longest = int(cache_lens.max()) if cache_lens.numel() else 0
    if longest == 0:
        return torch.zeros_like(q)
    nblk = -(-longest // kv_pool.shape[2])
    # table entries past a stream's length are never read but may be anything (-1 in tests)
    blocks = block_tables[:, :, :nblk].long().clamp_(0, kv_pool.shape[0] - 1)
    return decode_attention_blocks(q, kv_pool, blocks, cache_lens, longest, scale)


def decode_attention_blocks(
    q: torch.Tensor,
    kv_pool: torch.Tensor,
    blocks: torch.Tensor,
    cache_lens: torch.Tensor,
    longest: int,
    scale: float,
    *,
    mask: torch.Tensor | None = None,
    padded: bool = True,
    guarded: bool = True,
) -> torch.Tensor:
    """`paged_decode_attention_sdpa` given each stream's first ceil(longest / block_size)
    blocks as int64 `blocks` [S, H_kv, nblk] (entries past a stream's length: any valid
    block) and `longest` = max(cache_lens) ≥ 1 (the decode step builds both once per step).

    `mask`: the additive padding mask [S, H_kv, 1, longest] (0 held, -inf padding), built
    from cache_lens when None; `padded=False`: every stream holds `longest` slots, no mask.
    `guarded=False` skips the NaN check: the caller guarantees that every gathered slot is
    finite and no stream is empty (the decode step: blocks of the stream's own, zeroed when
    allocated).
    """
    num_seqs, num_q_heads, d = q.shape
    num_kv_heads, nblk = blocks.shape[1], blocks.shape[2]
    block_size = kv_pool.shape[2]
    g = num_q_heads // num_kv_heads
    ct = torch.promote_types(q.dtype, torch.float32)
    if kv_pool.is_contiguous():
        rows = kv_pool.view(kv_pool.shape[0], -1).index_select(0, blocks.reshape(-1))
    else:
        rows = kv_pool[blocks.reshape(-1)]
    rows = rows.view(num_seqs, num_kv_heads, nblk, 2, block_size, d)
    kv = torch.empty((2, num_seqs, num_kv_heads, nblk, block_size, d), dtype=ct, device=q.device)
    kv.copy_(rows.permute(3, 0, 1, 2, 4, 5))  # split K / V, upcast: one pass
    kv = kv.view(2, num_seqs, num_kv_heads, nblk * block_size, d)[:, :, :, :longest]
    k, v = kv[0], kv[1]
    if padded and mask is None:
        mask = padding_mask(cache_lens, longest, ct)
    qg = q.view(num_seqs, num_kv_heads, g, d).to(ct)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask if padded else None, scale=scale)
    if guarded and bool(torch.isnan(out).any()):
        # Padding slots may hold garbage (never-written pool memory can be NaN, and a masked
        # NaN still poisons the row) or a stream is empty: clear the padding and redo.
        valid = held_slots(cache_lens, longest)
        k = k.masked_fill(~valid[..., None], 0.0)
        v = v.masked_fill(~valid[..., None], 0.0)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=valid[:, :, None, :], scale=scale)
        out = torch.where((cache_lens > 0)[:, :, None, None], out, 0.0)  # empty streams: zeros
    return out.reshape(num_seqs, num_q_heads, d).to(q.dtype)


def padding_mask(cache_lens: torch.Tensor, longest: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [..., 1, longest]: 0 for the slots each stream holds, -inf past them
    (`cache_lens` [...]); what SDPA makes of a boolean mask, built once for many layers."""
    held = held_slots(cache_lens, longest)
    bias = torch.zeros(held.shape, dtype=dtype, device=cache_lens.device)
    return bias.masked_fill_(~held, float("-inf")).unsqueeze(-2)


def held_slots(cache_lens: torch.Tensor, longest: int) -> torch.Tensor:
    """[..., longest] bool: slot i of each stream is held (i < its length in `cache_lens`)."""
    return torch.arange(longest, device=cache_lens.device) < cache_lens[..., None].long()
