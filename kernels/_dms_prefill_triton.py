"""Triton DMS prefill attention: one online softmax over cached blocks, then chunk-key tiles.

Imported lazily by `agentrt.kernels.dms_prefill_attention` (this module imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from agentrt.kernels._validate import next_pow2

LOG2E = 1.4426950408889634
INT32_MAX = tl.constexpr(2**31 - 1)


# Reductions use tl.reduce with triton's own combine functions instead of tl.max / tl.sum /
# tl.min (and tl.full instead of tl.zeros, arithmetic instead of tl.cdiv): those are @jit
# functions whose compiled-or-interpreted mode is fixed when triton.language is imported, so
# calling them would tie this module to the TRITON_INTERPRET value of that moment. tl.reduce is
# a builtin, and the interpreter recognises these combine functions and reduces with numpy.
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min
_SUM = tl.standard._sum_combine


@triton.jit
def _online_update(s, visible, v, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One online-softmax step; rows with nothing visible yet keep m = -inf, l = 0, acc = 0."""
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _dms_prefill_kernel(
    q_ptr,  # [T, H_q, D]
    k_ptr,  # [T, H_kv, D]
    v_ptr,  # [T, H_kv, D]
    kexp_ptr,  # [T, H_kv] int32 contiguous
    pos_ptr,  # [T] int32
    cu_ptr,  # [S + 1] int32
    kv_ptr,  # [num_blocks, 2, block_size, D] contiguous
    sexp_ptr,  # [num_blocks, block_size] int32 contiguous
    bt_ptr,  # [S, H_kv, max_blocks] int32 contiguous
    lens_ptr,  # [S, H_kv] int32 contiguous
    out_ptr,  # [T, H_q, D] contiguous
    tile_seq_ptr,  # [num_tiles] int32 (-1 = no work)
    tile_start_ptr,  # [num_tiles] int32 first token of the tile
    scale_log2,
    num_kv_heads,
    max_blocks,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    G: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per pool block
    G_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,  # BLOCK_Q * G_PAD
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,  # interpreter only: it cannot dot bf16 (triton#11584)
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    seq_raw = tl.load(tile_seq_ptr + tile)
    valid = seq_raw >= 0
    seq = tl.maximum(seq_raw, 0)
    seq_start = tl.load(cu_ptr + seq)
    seq_end = tl.where(valid, tl.load(cu_ptr + seq + 1), seq_start)
    q0 = tl.load(tile_start_ptr + tile)

    # rows: BLOCK_Q tokens x G_PAD heads of this kv head's group
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    tok = q0 + offs_m // G_PAD
    hsub = offs_m % G_PAD
    row_mask = (tok < seq_end) & (hsub < G)
    heads = kvh * G + hsub
    tok64 = tok.to(tl.int64)
    p_row = tl.load(pos_ptr + tok, mask=row_mask, other=-1)
    p_min = tl.reduce(tl.where(row_mask, p_row, INT32_MAX), 0, _MIN)
    q_off = tok64[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptr + q_off, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)

    # phase 1: cached slots of stream (seq, kvh); visible iff p <= slot_expiry
    stream = seq * num_kv_heads + kvh
    n_cached = tl.where(valid, tl.load(lens_ptr + stream), 0)
    bt_row = bt_ptr + stream.to(tl.int64) * max_blocks
    stride_blk = 2 * BLOCK_SIZE * HEAD_DIM
    stride_v = BLOCK_SIZE * HEAD_DIM
    for n0 in range(0, n_cached, BLOCK_N):
        slots = n0 + offs_n
        n_mask = slots < n_cached
        blk = tl.load(bt_row + slots // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        flat = blk * BLOCK_SIZE + (slots % BLOCK_SIZE).to(tl.int64)
        expiry = tl.load(sexp_ptr + flat, mask=n_mask, other=-1)
        if tl.reduce(expiry, 0, _MAX) >= p_min:  # skip tiles no query of this tile can see
            row = blk * stride_blk + (slots % BLOCK_SIZE).to(tl.int64) * HEAD_DIM
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(kv_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(kv_ptr + stride_v + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            k, v = k.to(q.dtype), v.to(q.dtype)  # storage dtype -> compute (fp32: DOT_F32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            visible = row_mask[:, None] & n_mask[None, :] & (p_row[:, None] <= expiry[None, :])
            m_i, l_i, acc = _online_update(s, visible, v, m_i, l_i, acc, PRECISION)

    # phase 2: the chunk's own keys, causal tiles only; visible iff pos_j <= p <= k_expiry_j
    kv_end = tl.minimum(seq_end, q0 + BLOCK_Q)
    for j0 in range(seq_start, kv_end, BLOCK_N):
        j = j0 + offs_n
        n_mask = j < kv_end
        j64 = j.to(tl.int64)
        kpos = tl.load(pos_ptr + j, mask=n_mask, other=INT32_MAX)
        kexp = tl.load(kexp_ptr + j64 * num_kv_heads + kvh, mask=n_mask, other=-1)
        if tl.reduce(kexp, 0, _MAX) >= p_min:  # skip tiles evicted for every query of this tile
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k_off = j64[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :]
            v_off = j64[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :]
            k = tl.load(k_ptr + k_off, mask=kv_mask, other=0.0)
            v = tl.load(v_ptr + v_off, mask=kv_mask, other=0.0)
            k, v = k.to(q.dtype), v.to(q.dtype)  # storage dtype -> compute (fp32: DOT_F32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            p_col = p_row[:, None]
            visible = (
                row_mask[:, None]
                & n_mask[None, :]
                & (kpos[None, :] <= p_col)
                & (p_col <= kexp[None, :])
            )
            m_i, l_i, acc = _online_update(s, visible, v, m_i, l_i, acc, PRECISION)

    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # nothing visible -> zeros
    num_q_heads = num_kv_heads * G
    o_off = (tok64[:, None] * num_q_heads + heads[:, None]) * HEAD_DIM + offs_d[None, :]
    o_mask = row_mask[:, None] & d_mask[None, :]
    tl.store(out_ptr + o_off, o.to(out_ptr.dtype.element_ty), mask=o_mask)


def tile_config(head_dim: int, group: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(G_PAD, BLOCK_Q, BLOCK_N, BLOCK_D): BLOCK_Q tokens x G_PAD heads form the M tile.

    Sized from ptxas resource usage on sm_90 with 4 warps (no spills); fp32 (IEEE dot, no
    tensor cores) and head_dim 256 need smaller tiles.
    """
    g_pad = next_pow2(group)
    block_d = max(16, next_pow2(head_dim))
    if dtype == torch.float32:
        block_m, block_n = max(16, g_pad), 16
    elif block_d >= 256:
        block_m, block_n = max(32, g_pad), 32
    else:
        block_m, block_n = max(64, g_pad), 64
    return g_pad, block_m // g_pad, block_n, block_d


def query_tiles(
    cu_seqlens: torch.Tensor, num_tokens: int, block_q: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map program ids to (sequence, first token) on device, without a host sync.

    cu_seqlens [S+1] int32 -> tile_seq, tile_start [T // block_q + S] int32; tile_seq = -1
    marks the surplus programs of the static upper bound.
    """
    num_seqs = cu_seqlens.numel() - 1
    cu = cu_seqlens.long()
    ntiles = (cu[1:] - cu[:-1] + block_q - 1) // block_q  # [S]
    cum = ntiles.cumsum(0)
    tid = torch.arange(num_tokens // block_q + num_seqs, device=cu.device)
    seq = torch.searchsorted(cum, tid, right=True)
    valid = seq < num_seqs
    seq_c = seq.clamp(max=num_seqs - 1)
    start = cu[seq_c] + (tid - (cum[seq_c] - ntiles[seq_c])) * block_q
    tile_seq = torch.where(valid, seq_c, -1).to(torch.int32)
    return tile_seq, torch.where(valid, start, 0).to(torch.int32)


def launch(
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
    """Run the prefill kernel -> out [T, H_q, D]."""
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads, max_blocks = block_tables.shape[1], block_tables.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens.numel() - 1
    if num_tokens == 0 or num_seqs == 0:
        return out
    g_pad, block_q, block_n, block_d = tile_config(head_dim, group, q.dtype)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    tile_seq, tile_start = query_tiles(cu_seqlens, num_tokens, block_q)
    dot_f32 = q.dtype == torch.bfloat16 and not q.is_cuda
    precision = "ieee" if q.dtype == torch.float32 or dot_f32 else "tf32"
    grid = (tile_seq.numel(), num_kv_heads)
    _dms_prefill_kernel[grid](
        q,
        k,
        v,
        k_expiry.contiguous(),
        positions.contiguous(),
        cu_seqlens.contiguous(),
        kv_pool,
        slot_expiry,
        block_tables.contiguous(),
        cache_lens.contiguous(),
        out,
        tile_seq,
        tile_start,
        float(scale) * LOG2E,
        num_kv_heads,
        max_blocks,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        G=group,
        BLOCK_SIZE=kv_pool.shape[2],
        G_PAD=g_pad,
        HEAD_DIM=head_dim,
        BLOCK_Q=block_q,
        BLOCK_M=block_q * g_pad,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        PRECISION=precision,
        DOT_F32=dot_f32,
        num_warps=4,
        num_stages=2,
    )
    return out
