"""DMS training attention in query tiles: the soft mask is built per tile, never as [T, T].

The student's attention adds `log(1 − σ(u_{j+1}))` to the score of key j for every query
more than w tokens after it (dms-reference.md §3.3). `dms_tile_attention` computes exactly
that, one tile of queries at a time over the causal key prefix, with a hand-written
backward that recomputes each tile's probabilities from the saved log-sum-exp (as flash
attention does). Memory is O(T): q, k, v, the output, one LSE per query and one tile of
scores whose size is capped (`TILE_ELEMENTS`), so the tile height shrinks as T grows.
"""

from __future__ import annotations

import math

import torch

TILE_ELEMENTS = 1 << 21  # scores per tile (query heads × rows × keys): 8 MiB in fp32
MIN_TILE_ROWS = 16


def tile_rows(num_heads: int, seq: int, elements: int = TILE_ELEMENTS) -> int:
    """Query rows per tile so that heads × rows × seq ≤ elements (at least MIN_TILE_ROWS)."""
    return max(MIN_TILE_ROWS, min(seq, elements // max(1, num_heads * seq)))


def _tile_bias(
    log_keep: torch.Tensor, start: int, stop: int, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(additive bias [B, H_kv, 1, R, K], outside-window mask [R, K]) of query rows start:stop.

    K = stop (the causal key prefix). Keys above the diagonal get −inf, keys more than
    `window` behind the query get log_keep[key], the rest 0.
    """
    rows = torch.arange(start, stop, device=log_keep.device)
    cols = torch.arange(stop, device=log_keep.device)
    dist = rows[:, None] - cols[None, :]  # [R, K]
    outside = dist > window
    keys = log_keep[:, :, None, None, :stop]  # [B, H_kv, 1, 1, K]
    bias = torch.where(outside, keys, torch.zeros((), dtype=keys.dtype, device=keys.device))
    bias = bias.masked_fill(dist < 0, float("-inf"))
    return bias, outside


class _TileAttention(torch.autograd.Function):
    """Forward and recomputing backward of the tiled DMS training attention."""

    @staticmethod
    def forward(ctx, q, k, v, log_keep, window, scale, rows):  # noqa: D102
        bsz, h_kv, group, seq, dim = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(bsz, h_kv, group, seq, dtype=q.dtype, device=q.device)
        for start in range(0, seq, rows):
            stop = min(seq, start + rows)
            bias, _ = _tile_bias(log_keep, start, stop, window)
            scores = torch.matmul(q[:, :, :, start:stop], k[:, :, None, :stop].transpose(-1, -2))
            scores.mul_(scale).add_(bias)  # [B, H_kv, g, R, K]
            peak = scores.amax(dim=-1, keepdim=True)  # finite: every query sees itself
            probs = scores.sub_(peak).exp_()
            total = probs.sum(-1, keepdim=True)
            out[:, :, :, start:stop] = torch.matmul(probs, v[:, :, None, :stop]).div_(total)
            lse[:, :, :, start:stop] = (peak + total.log()).squeeze(-1)
        ctx.save_for_backward(q, k, v, log_keep, out, lse)
        ctx.window, ctx.scale, ctx.rows = window, scale, rows
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, log_keep, out, lse = ctx.saved_tensors
        window, scale, rows = ctx.window, ctx.scale, ctx.rows
        seq = q.shape[3]
        grad_out = grad_out.contiguous()
        dq = torch.zeros_like(q)
        dk = torch.zeros_like(k)
        dv = torch.zeros_like(v)
        dlog = torch.zeros_like(log_keep)
        delta = (grad_out * out).sum(-1)  # [B, H_kv, g, T]
        for start in range(0, seq, rows):
            stop = min(seq, start + rows)
            bias, outside = _tile_bias(log_keep, start, stop, window)
            q_t, do_t = q[:, :, :, start:stop], grad_out[:, :, :, start:stop]
            scores = torch.matmul(q_t, k[:, :, None, :stop].transpose(-1, -2))
            scores.mul_(scale).add_(bias)
            probs = scores.sub_(lse[:, :, :, start:stop, None]).exp_()  # [B, H_kv, g, R, K]
            dv[:, :, :stop] += torch.matmul(probs.transpose(-1, -2), do_t).sum(2)
            dp = torch.matmul(do_t, v[:, :, None, :stop].transpose(-1, -2))
            ds = dp.sub_(delta[:, :, :, start:stop, None]).mul_(probs)  # d score (after bias)
            if ctx.needs_input_grad[3] and bool(outside.any()):
                heads = ds.sum(2)  # [B, H_kv, R, K]: the bias is shared by the query group
                dlog[:, :, :stop] += torch.where(outside, heads, 0).sum(2)
            ds.mul_(scale)
            dq[:, :, :, start:stop] = torch.matmul(ds, k[:, :, None, :stop])
            dk[:, :, :stop] += torch.matmul(ds.transpose(-1, -2), q_t).sum(2)
        return dq, dk, dv, dlog, None, None, None


def dms_tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    log_keep: torch.Tensor,
    window: int,
    scale: float | None = None,
    rows: int | None = None,
) -> torch.Tensor:
    """Causal attention with the DMS soft mask, tiled over queries; differentiable.

    q [B, H_q, T, d], k/v [B, H_kv, T, d] (GQA: H_q a multiple of H_kv), log_keep [B, H_kv, T]
    = log(1 − σ(u_{j+1})) per key, added to the scores of queries i > j + window.
    Returns [B, H_q, T, d] = softmax(q·kᵀ·scale + training_bias(u, window)) · v.
    """
    bsz, h_q, seq, dim = q.shape
    h_kv = k.shape[1]
    group = h_q // h_kv
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    rows = rows or tile_rows(h_q, seq)
    grouped = q.reshape(bsz, h_kv, group, seq, dim)
    dtype = q.dtype
    out = _TileAttention.apply(
        grouped.float(),
        k.float(),
        v.float(),
        log_keep.float(),
        int(window),
        scale,
        int(rows),
    )
    return out.reshape(bsz, h_q, seq, dim).to(dtype)
