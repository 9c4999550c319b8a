"""DMS prefill attention on CPU through torch's fused SDPA: no [queries × keys] float scores.

Same signature and semantics as `agentrt.kernels.reference.dms_prefill_attention` (the
oracle). Per sequence and KV head, the visibility rule becomes one boolean mask block
(queries × (cached ∪ chunk) keys); the fused kernel computes the softmax blockwise, so the
masked_fill / softmax / nan_to_num passes over materialised scores are gone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentrt.kernels.reference.paged_decode_attention import gather_stream, gather_stream_expiry

# Queries per SDPA call. A block of queries attends the cached slots and the chunk's keys
# up to its own last position only (later keys are invisible to it), so smaller blocks skip
# more of the chunk's upper triangle, at the price of more calls; 256 is the CPU optimum for
# the default model's 512-token prefill chunks. It also bounds the mask to 256 x keys bytes.
QUERY_CHUNK = 256


def dms_prefill_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_expiry: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Queries of packed chunks over (cached slots ∪ chunk keys) with the DMS rule -> [T, H_q, D].

    Shapes as the reference: q [T, H_q, D]; k, v [T, H_kv, D]; k_expiry [T, H_kv] int32;
    positions [T] int32; cu_seqlens [S+1] int32; kv_pool [num_blocks, 2, block_size, D];
    slot_expiry [num_blocks, block_size] int32; block_tables [S, H_kv, max_blocks] int32;
    cache_lens [S, H_kv] int32. A query that sees nothing gets zeros.
    """
    num_q_heads, num_kv_heads = q.shape[1], k.shape[1]
    g = num_q_heads // num_kv_heads
    ct = torch.promote_types(q.dtype, torch.float32)
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    lens = cache_lens.tolist()
    # a key that is visible at its own position keeps every query's row non-empty (the
    # serving step's keys always are: expiry ≥ position); else rows seeing nothing get zeros
    self_visible = bool((k_expiry.long() >= positions.long()[:, None]).all())
    for b in range(len(bounds) - 1):
        start, end = int(bounds[b]), int(bounds[b + 1])
        if end == start:
            continue
        pos_new = positions[start:end].long()  # [n]
        for h in range(num_kv_heads):
            n_cached = int(lens[b][h])
            k_c, v_c = gather_stream(kv_pool, block_tables[b, h], n_cached)
            exp_c = gather_stream_expiry(slot_expiry, block_tables[b, h], n_cached).long()
            keys = torch.cat([k_c.to(ct), k[start:end, h].to(ct)])  # [N, D]
            vals = torch.cat([v_c.to(ct), v[start:end, h].to(ct)])
            exp_new = k_expiry[start:end, h].long()
            heads = slice(h * g, (h + 1) * g)
            for c0 in range(start, end, QUERY_CHUNK):
                c1 = min(end, c0 + QUERY_CHUNK)
                seen_new = c1 - start  # chunk keys at or before this block's last query
                p = positions[c0:c1].long()[:, None]  # [m, 1]
                pos_seen, exp_seen = pos_new[None, :seen_new], exp_new[None, :seen_new]
                visible = torch.cat(
                    [p <= exp_c[None, :], (pos_seen <= p) & (p <= exp_seen)], dim=1
                )  # [m, n_cached + seen_new]
                n_keys = n_cached + seen_new
                qh = q[c0:c1, heads].to(ct).transpose(0, 1)[None]  # [1, g, m, D]
                o = F.scaled_dot_product_attention(
                    qh,
                    keys[None, None, :n_keys].expand(1, g, -1, -1),
                    vals[None, None, :n_keys].expand(1, g, -1, -1),
                    attn_mask=visible[None, None],
                    scale=scale,
                )[0].transpose(0, 1)  # [m, g, D]
                if not self_visible:
                    seen = visible.any(dim=1)[:, None, None]  # rows with nothing visible -> 0
                    o = torch.where(seen, o, 0.0)
                out[c0:c1, heads] = o.to(q.dtype)
    return out
