"""Pure-torch DMS prefill attention: the test oracle and the CPU execution path."""

from __future__ import annotations

import torch

from agentrt.kernels.reference.paged_decode_attention import gather_stream, gather_stream_expiry

QUERY_CHUNK = 512  # queries per mask block: bounds the reference's memory to chunk x keys


def dms_prefill_attention(
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
    """Queries of packed chunks over (cached slots U chunk keys) with the DMS rule -> [T, H_q, D].

    q [T, H_q, D]; k, v [T, H_kv, D]; k_expiry [T, H_kv] int32; positions [T] int32;
    cu_seqlens [S+1] int32; kv_pool [num_blocks, 2, block_size, D]; slot_expiry
    [num_blocks, block_size] int32; block_tables [S, H_kv, max_blocks] int32; cache_lens
    [S, H_kv] int32. A query at position p sees cached slot s iff p <= slot_expiry[s], and new
    key j of its own sequence iff positions[j] <= p <= k_expiry[j, h]. No visible key -> zeros.
    """
    num_q_heads = q.shape[1]
    num_kv_heads = k.shape[1]
    g = num_q_heads // num_kv_heads
    ct = torch.promote_types(q.dtype, torch.float32)  # fp32 math, fp64 stays fp64
    out = torch.zeros_like(q)
    bounds = cu_seqlens.tolist()
    lens = cache_lens.tolist()
    for b in range(len(bounds) - 1):
        start, end = int(bounds[b]), int(bounds[b + 1])
        if end == start:
            continue
        pos_new = positions[start:end].long()  # [n]
        for h in range(num_kv_heads):
            n_cached = int(lens[b][h])
            k_c, v_c = gather_stream(kv_pool, block_tables[b, h], n_cached)
            exp_c = gather_stream_expiry(slot_expiry, block_tables[b, h], n_cached).long()
            keys = torch.cat([k_c.to(ct), k[start:end, h].to(ct)])  # [n_cached + n, D]
            vals = torch.cat([v_c.to(ct), v[start:end, h].to(ct)])
            exp_new = k_expiry[start:end, h].long()
            heads = slice(h * g, (h + 1) * g)
            for c0 in range(start, end, QUERY_CHUNK):
                c1 = min(end, c0 + QUERY_CHUNK)
                p = positions[c0:c1].long()[:, None]  # [m, 1]
                visible = torch.cat(
                    [p <= exp_c[None, :], (pos_new[None, :] <= p) & (p <= exp_new[None, :])],
                    dim=1,
                )  # [m, n_cached + n]
                scores = torch.einsum("mgd,nd->gmn", q[c0:c1, heads].to(ct), keys) * scale
                scores = scores.masked_fill(~visible[None], float("-inf"))
                probs = scores.softmax(dim=-1).nan_to_num(0.0)  # rows with nothing visible -> 0
                out[c0:c1, heads] = torch.einsum("gmn,nd->mgd", probs, vals).to(q.dtype)
    return out
