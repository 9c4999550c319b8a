"""Paged decode attention on CPU through torch's fused SDPA: one call per layer, no score pass.

Same signature and semantics as `agentrt.kernels.reference.paged_decode_attention` (the
oracle). Every stream is gathered once, padded to the longest held length, and attended by
`scaled_dot_product_attention` with a boolean mask for the padding; the einsum / masked_fill
/ softmax / nan_to_num passes over materialised scores of the reference are gone. The
decode step of a small model is many small ops, so fewer of them is most of the gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentrt.kernels.reference.paged_decode_attention import gather_padded


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
    num_seqs, num_q_heads, d = q.shape
    num_kv_heads = block_tables.shape[1]
    g = num_q_heads // num_kv_heads
    ct = torch.promote_types(q.dtype, torch.float32)
    longest = int(cache_lens.max()) if cache_lens.numel() else 0
    if longest == 0:
        return torch.zeros_like(q)
    k, v, valid = gather_padded(kv_pool, block_tables, cache_lens, longest)
    qg = q.view(num_seqs, num_kv_heads, g, d).to(ct)
    mask = valid[:, :, None, :]
    out = F.scaled_dot_product_attention(qg, k.to(ct), v.to(ct), attn_mask=mask, scale=scale)
    if bool(torch.isnan(out).any()):
        # Padding slots may hold garbage (never-written pool memory can be NaN, and a masked
        # NaN still poisons the row) or a stream is empty: clear the padding and redo.
        k = k.to(ct).masked_fill(~valid[..., None], 0.0)
        v = v.to(ct).masked_fill(~valid[..., None], 0.0)
        out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=scale)
        out = torch.where((cache_lens > 0)[:, :, None, None], out, 0.0)  # empty streams: zeros
    return out.reshape(num_seqs, num_q_heads, d).to(q.dtype)
