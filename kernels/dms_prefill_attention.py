"""DMS prefill attention over (paged cached slots U new chunk keys): checks and dispatch."""

from __future__ import annotations

import importlib

import torch

from agentrt.kernels import _validate as val
from agentrt.kernels.dispatch import backend_for, torch_path
from agentrt.kernels.reference.dms_prefill_attention import (
    dms_prefill_attention as _reference,
)


def _check(
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
) -> None:
    """Host-side shape/dtype/device checks of dms_prefill_attention's arguments."""
    val.check_ndim("q", q, 3, "[T, H_q, D]")
    val.check_ndim("k", k, 3, "[T, H_kv, D]")
    val.check_ndim("v", v, 3, "[T, H_kv, D]")
    val.check_ndim("k_expiry", k_expiry, 2, "[T, H_kv]")
    val.check_ndim("positions", positions, 1, "[T]")
    val.check_ndim("cu_seqlens", cu_seqlens, 1, "[S+1]")
    val.check_dtype("q", q, val.FLOAT_DTYPES)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} dtype {t.dtype} != q dtype {q.dtype}")
    for name, t in (("k_expiry", k_expiry), ("positions", positions), ("cu_seqlens", cu_seqlens)):
        val.check_dtype(name, t, (torch.int32,))
    num_tokens, num_q_heads, head_dim = q.shape
    if tuple(k.shape) != tuple(v.shape) or k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(
            f"k and v must be [T={num_tokens}, H_kv, D={head_dim}], "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if tuple(k_expiry.shape) != tuple(k.shape[:2]):
        raise ValueError(f"k_expiry must be {list(k.shape[:2])}, got {tuple(k_expiry.shape)}")
    if positions.shape[0] != num_tokens:
        raise ValueError(f"positions must be [T={num_tokens}], got {tuple(positions.shape)}")
    if cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens must be [S+1] with S >= 0, got {tuple(cu_seqlens.shape)}")
    val.check_pool(kv_pool, head_dim=head_dim)
    val.check_slot_expiry(slot_expiry, kv_pool)
    num_kv_heads = val.check_tables(block_tables, cache_lens, cu_seqlens.shape[0] - 1)
    if k.shape[1] != num_kv_heads:
        raise ValueError(f"k has {k.shape[1]} kv heads, block_tables has {num_kv_heads}")
    val.check_gqa(num_q_heads, num_kv_heads)
    val.check_same_device(
        q=q,
        k=k,
        v=v,
        k_expiry=k_expiry,
        positions=positions,
        cu_seqlens=cu_seqlens,
        kv_pool=kv_pool,
        slot_expiry=slot_expiry,
        block_tables=block_tables,
        cache_lens=cache_lens,
    )


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

    q [T, H_q, D]; k, v [T, H_kv, D] post-RoPE; k_expiry [T, H_kv] int32; positions [T] int32
    (consecutive within a sequence); cu_seqlens [S+1] int32; kv_pool [num_blocks, 2,
    block_size, D] in the KV storage dtype (may differ from q's; upcast before the math); slot_expiry [num_blocks, block_size] int32; block_tables [S, H_kv,
    max_blocks] int32; cache_lens [S, H_kv] int32 (cached slots precede the chunk). A query at
    position p sees cached slot s iff p <= slot_expiry[s], and new key j of its own sequence iff
    positions[j] <= p <= k_expiry[j, h]. A query that sees nothing gets zeros. The chunk is not
    written to the cache (use write_kv_slots for the survivors).
    """
    _check(q, k, v, k_expiry, positions, cu_seqlens, kv_pool, slot_expiry, block_tables, cache_lens)
    args = (q, k, v, k_expiry, positions, cu_seqlens, kv_pool, slot_expiry, block_tables)
    if backend_for(q, head_dim=q.shape[-1]) == "reference":
        if torch_path() == "sdpa":
            from agentrt.kernels._dms_prefill_sdpa import dms_prefill_attention_sdpa

            return dms_prefill_attention_sdpa(*args, cache_lens, scale)
        return _reference(*args, cache_lens, scale)
    val.check_triton_dtype("q", q)
    val.check_triton_dtype("kv_pool", kv_pool)
    impl = importlib.import_module("agentrt.kernels._dms_prefill_triton")
    return impl.launch(*args, cache_lens, scale)
