"""Triton paged decode attention: GQA-grouped tiles, online softmax, split-K + LSE reduction.

Imported lazily by `agentrt.kernels.paged_decode_attention` (this module imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from agentrt.kernels._validate import next_pow2

LOG2E = 1.4426950408889634


# Reductions use tl.reduce with triton's own combine functions instead of tl.max / tl.sum /
# tl.min (and tl.full instead of tl.zeros, arithmetic instead of tl.cdiv): those are @jit
# functions whose compiled-or-interpreted mode is fixed when triton.language is imported, so
# calling them would tie this module to the TRITON_INTERPRET value of that moment. tl.reduce is
# a builtin, and the interpreter recognises these combine functions and reduces with numpy.
_MAX = tl.standard._elementwise_max
_SUM = tl.standard._sum_combine


@triton.jit
def _paged_decode_kernel(
    q_ptr,  # [S, H_q, D]
    kv_ptr,  # [num_blocks, 2, block_size, D] contiguous
    bt_ptr,  # [S, H_kv, max_blocks] int32 contiguous
    lens_ptr,  # [S, H_kv] int32 contiguous
    out_ptr,  # [S, H_q, D] (written when not SPLIT)
    part_out_ptr,  # [S, H_q, num_splits, D] fp32 (written when SPLIT)
    part_lse_ptr,  # [S, H_q, num_splits] fp32, log2 domain
    scale_log2,
    num_kv_heads,
    num_splits,
    max_blocks,
    stride_qs,
    stride_qh,
    stride_os,
    stride_oh,
    G: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per pool block
    HEAD_DIM: tl.constexpr,
    SPLIT: tl.constexpr,  # num_splits > 1: write partials for _split_reduce_kernel
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,  # interpreter only: it cannot dot bf16 (triton#11584)
):
    stream = tl.program_id(0)  # seq * H_kv + kv head
    split = tl.program_id(1)
    seq = stream // num_kv_heads
    kvh = stream % num_kv_heads

    length = tl.load(lens_ptr + stream)
    per_split = (length + num_splits - 1) // num_splits
    chunk = (per_split + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, length)

    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < G
    d_mask = offs_d < HEAD_DIM
    heads = kvh * G + offs_m

    q_ptrs = q_ptr + seq.to(tl.int64) * stride_qs + heads[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)

    stride_blk = 2 * BLOCK_SIZE * HEAD_DIM
    stride_v = BLOCK_SIZE * HEAD_DIM
    bt_row = bt_ptr + stream.to(tl.int64) * max_blocks
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        slots = n0 + offs_n
        n_mask = slots < end
        blk = tl.load(bt_row + slots // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        row = blk * stride_blk + (slots % BLOCK_SIZE).to(tl.int64) * HEAD_DIM
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(kv_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(kv_ptr + stride_v + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        k, v = k.to(q.dtype), v.to(q.dtype)  # storage dtype -> compute (fp32 under DOT_F32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, _MAX))  # finite: every tile has a valid slot
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)  # empty split/stream -> zeros, lse -inf
    o = acc / l_safe[:, None]
    if not SPLIT:
        o_ptrs = out_ptr + seq.to(tl.int64) * stride_os + heads[:, None] * stride_oh
        o_mask = m_mask[:, None] & d_mask[None, :]
        tl.store(o_ptrs + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=o_mask)
    else:
        row_id = (seq * (num_kv_heads * G) + heads).to(tl.int64) * num_splits + split
        po_ptrs = part_out_ptr + row_id[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(po_ptrs, o, mask=m_mask[:, None] & d_mask[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))
        tl.store(part_lse_ptr + row_id, lse, mask=m_mask)


@triton.jit
def _split_reduce_kernel(
    part_out_ptr,  # [S, H_q, num_splits, D] fp32
    part_lse_ptr,  # [S, H_q, num_splits] fp32, log2 domain
    out_ptr,  # [S, H_q, D]
    num_q_heads,
    num_splits,
    stride_os,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0)  # seq * H_q + q head
    seq = row // num_q_heads
    head = row % num_q_heads
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    d_mask = offs_d < HEAD_DIM
    base = row.to(tl.int64) * num_splits
    lse = tl.load(part_lse_ptr + base + offs_s, mask=s_mask, other=float("-inf"))
    m = tl.reduce(lse, 0, _MAX)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)  # [BLOCK_S]
    total = tl.reduce(w, 0, _SUM)
    po = tl.load(
        part_out_ptr + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    o = tl.reduce(po * w[:, None], 0, _SUM) / tl.where(total == 0.0, 1.0, total)
    o_ptrs = out_ptr + seq.to(tl.int64) * stride_os + head * stride_oh + offs_d
    tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=d_mask)


def tile_config(head_dim: int, group: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D) for a head dim, GQA group size and storage dtype.

    Sized from ptxas resource usage on sm_90 (no spills): fp32 tiles are small because an
    IEEE fp32 dot runs without tensor cores and needs far more registers.
    """
    block_d = max(16, next_pow2(head_dim))
    block_m = max(16, next_pow2(group))
    if dtype == torch.float32:
        block_n = 16
    else:
        block_n = 32 if block_d >= 256 or block_m >= 64 else 64
    return block_m, block_n, block_d


def launch(
    q: torch.Tensor,
    kv_pool: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
    num_splits: int,
) -> torch.Tensor:
    """Run the decode kernel (and the split reduction when num_splits > 1) -> out [S, H_q, D]."""
    num_seqs, num_q_heads, head_dim = q.shape
    num_kv_heads, max_blocks = block_tables.shape[1], block_tables.shape[2]
    group = num_q_heads // num_kv_heads
    block_m, block_n, block_d = tile_config(head_dim, group, q.dtype)
    q = q if q.stride(-1) == 1 else q.contiguous()
    block_tables = block_tables.contiguous()
    cache_lens = cache_lens.contiguous()
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    if num_splits > 1:
        part_out = torch.empty(
            (num_seqs, num_q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
        )
        part_lse = torch.empty(
            (num_seqs, num_q_heads, num_splits), dtype=torch.float32, device=q.device
        )
    else:
        part_out = part_lse = out  # unused placeholders
    dot_f32 = q.dtype == torch.bfloat16 and not q.is_cuda
    precision = "ieee" if q.dtype == torch.float32 or dot_f32 else "tf32"
    grid = (num_seqs * num_kv_heads, num_splits)
    _paged_decode_kernel[grid](
        q,
        kv_pool,
        block_tables,
        cache_lens,
        out,
        part_out,
        part_lse,
        float(scale) * LOG2E,
        num_kv_heads,
        num_splits,
        max_blocks,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        G=group,
        BLOCK_SIZE=kv_pool.shape[2],
        HEAD_DIM=head_dim,
        SPLIT=num_splits > 1,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        PRECISION=precision,
        DOT_F32=dot_f32,
        num_warps=4,
        num_stages=2,
    )
    if num_splits > 1:
        _split_reduce_kernel[(num_seqs * num_q_heads,)](
            part_out,
            part_lse,
            out,
            num_q_heads,
            num_splits,
            out.stride(0),
            out.stride(1),
            HEAD_DIM=head_dim,
            BLOCK_S=max(2, next_pow2(num_splits)),
            BLOCK_D=block_d,
            num_warps=4,
        )
    return out
