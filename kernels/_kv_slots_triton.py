"""Triton slot writers: scatter K/V rows into pool slots, and gather them (for slot copies).

Imported lazily by `agentrt.kernels.write_kv_slots` / `copy_kv_slots` (imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from agentrt.kernels._validate import next_pow2

ROWS = 16  # slots per program


@triton.jit
def _write_kv_slots_kernel(
    kv_ptr,  # [num_blocks, 2, block_size, D] contiguous
    sexp_ptr,  # [num_blocks, block_size] int32 contiguous
    slot_ptr,  # [N] int64
    k_ptr,  # [N, D] pool dtype
    v_ptr,  # [N, D] pool dtype
    exp_ptr,  # [N] int32
    n_rows,
    block_size,
    stride_k,
    stride_v,
    HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    r_mask = rows < n_rows
    slot = tl.load(slot_ptr + rows, mask=r_mask, other=-1)
    r_mask = r_mask & (slot >= 0)
    blk = slot // block_size
    dst = blk * (2 * block_size * HEAD_DIM) + (slot % block_size) * HEAD_DIM
    mask = r_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    rows64 = rows.to(tl.int64)
    k = tl.load(k_ptr + rows64[:, None] * stride_k + offs_d[None, :], mask=mask)
    v = tl.load(v_ptr + rows64[:, None] * stride_v + offs_d[None, :], mask=mask)
    tl.store(kv_ptr + dst[:, None] + offs_d[None, :], k, mask=mask)
    tl.store(kv_ptr + block_size * HEAD_DIM + dst[:, None] + offs_d[None, :], v, mask=mask)
    tl.store(sexp_ptr + slot, tl.load(exp_ptr + rows, mask=r_mask), mask=r_mask)


@triton.jit
def _gather_kv_slots_kernel(
    kv_ptr,  # [num_blocks, 2, block_size, D] contiguous
    sexp_ptr,  # [num_blocks, block_size] int32 contiguous
    src_ptr,  # [N] int64
    k_out_ptr,  # [N, D] contiguous
    v_out_ptr,  # [N, D] contiguous
    exp_out_ptr,  # [N] int32
    n_rows,
    block_size,
    HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    r_mask = rows < n_rows
    src = tl.load(src_ptr + rows, mask=r_mask, other=0)
    src_row = (src // block_size) * (2 * block_size * HEAD_DIM) + (src % block_size) * HEAD_DIM
    mask = r_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(kv_ptr + src_row[:, None] + offs_d[None, :], mask=mask)
    v = tl.load(kv_ptr + block_size * HEAD_DIM + src_row[:, None] + offs_d[None, :], mask=mask)
    out = rows.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(k_out_ptr + out, k, mask=mask)
    tl.store(v_out_ptr + out, v, mask=mask)
    tl.store(exp_out_ptr + rows, tl.load(sexp_ptr + src, mask=r_mask), mask=r_mask)


def launch_write(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    expiry: torch.Tensor,
) -> None:
    """Scatter rows of k, v [N, D] and expiry [N] into flat slots slot_mapping [N], in place."""
    n_rows, head_dim = k.shape
    if n_rows == 0:
        return
    # cast on the host: torch rounds to nearest even (the interpreter would truncate to bf16)
    k, v = (t.to(kv_pool.dtype) if t.dtype != kv_pool.dtype else t for t in (k, v))
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    _write_kv_slots_kernel[(triton.cdiv(n_rows, ROWS),)](
        kv_pool,
        slot_expiry,
        slot_mapping.contiguous(),
        k,
        v,
        expiry.contiguous(),
        n_rows,
        kv_pool.shape[2],
        k.stride(0),
        v.stride(0),
        HEAD_DIM=head_dim,
        ROWS=ROWS,
        BLOCK_D=next_pow2(head_dim),
        num_warps=4,
    )


def launch_copy(
    kv_pool: torch.Tensor, slot_expiry: torch.Tensor, src: torch.Tensor, dst: torch.Tensor
) -> None:
    """Copy K/V and expiry of flat slots src [N] to dst [N], in place, as gather-then-scatter.

    The rows go through a dense [N, D] buffer, so overlapping src/dst sets (a slot both read and
    written) behave like the reference: every source is read before any destination is written.
    """
    n_rows = src.numel()
    if n_rows == 0:
        return
    head_dim = kv_pool.shape[3]
    k = torch.empty((n_rows, head_dim), dtype=kv_pool.dtype, device=kv_pool.device)
    v = torch.empty_like(k)
    expiry = torch.empty((n_rows,), dtype=torch.int32, device=kv_pool.device)
    _gather_kv_slots_kernel[(triton.cdiv(n_rows, ROWS),)](
        kv_pool,
        slot_expiry,
        src.contiguous(),
        k,
        v,
        expiry,
        n_rows,
        kv_pool.shape[2],
        HEAD_DIM=head_dim,
        ROWS=ROWS,
        BLOCK_D=next_pow2(head_dim),
        num_warps=4,
    )
    launch_write(kv_pool, slot_expiry, dst, k, v, expiry)
