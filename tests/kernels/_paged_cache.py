"""Random paged caches for the kernel tests, and dense oracles independent of the reference.

Unused pool slots are NaN and unused block-table entries -1, so a kernel that reads past a
stream's length, or a block it does not own, produces NaN and fails `assert_close`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KEEP_FOREVER = 2**31 - 1


@dataclass
class PagedCache:
    kv_pool: torch.Tensor  # [num_blocks, 2, block_size, D]
    slot_expiry: torch.Tensor  # [num_blocks, block_size] int32
    block_tables: torch.Tensor  # [S, H_kv, max_blocks] int32
    cache_lens: torch.Tensor  # [S, H_kv] int32

    def to(self, device: str | torch.device) -> PagedCache:
        return PagedCache(*(t.to(device) for t in vars(self).values()))


@dataclass
class PrefillBatch:
    q: torch.Tensor  # [T, H_q, D]
    k: torch.Tensor  # [T, H_kv, D]
    v: torch.Tensor  # [T, H_kv, D]
    k_expiry: torch.Tensor  # [T, H_kv] int32
    positions: torch.Tensor  # [T] int32
    cu_seqlens: torch.Tensor  # [S + 1] int32
    cache: PagedCache

    def to(self, device: str | torch.device) -> PrefillBatch:
        tensors = {k: t.to(device) for k, t in vars(self).items() if k != "cache"}
        return PrefillBatch(**tensors, cache=self.cache.to(device))

    def args(self) -> tuple[torch.Tensor, ...]:
        c = self.cache
        return (
            self.q, self.k, self.v, self.k_expiry, self.positions, self.cu_seqlens,
            c.kv_pool, c.slot_expiry, c.block_tables, c.cache_lens,
        )  # fmt: skip


def _maybe_keep(values: torch.Tensor, keep_prob: float, gen: torch.Generator) -> torch.Tensor:
    keep = torch.rand(values.shape, generator=gen) < keep_prob
    return torch.where(keep, KEEP_FOREVER, values).to(torch.int32)


def make_cache(
    lens: list[list[int]],
    block_size: int,
    head_dim: int,
    dtype: torch.dtype,
    gen: torch.Generator,
    expiry_bounds: list[tuple[int, int]] | None = None,
) -> PagedCache:
    """Streams of the given lengths [S][H_kv] in shuffled blocks of a NaN-poisoned pool.

    expiry_bounds[b] = (lo, hi): slot expiries of sequence b drawn in [lo, hi], 40% kept
    forever; None keeps every slot forever.
    """
    lens_t = torch.tensor(lens, dtype=torch.long)  # [S, H_kv]
    num_seqs, num_kv_heads = lens_t.shape
    need = (lens_t + block_size - 1) // block_size
    max_blocks = int(need.max()) + 1
    num_blocks = int(need.sum()) + 3  # spare blocks stay NaN
    perm = torch.randperm(num_blocks, generator=gen)
    first = need.flatten().cumsum(0).view_as(need) - need
    j = torch.arange(max_blocks)
    owned = perm[(first[..., None] + j).clamp(max=num_blocks - 1)]
    block_tables = torch.where(j < need[..., None], owned, -1).to(torch.int32)

    slots = torch.arange(max(1, int(lens_t.max())))
    valid = slots < lens_t[..., None]  # [S, H_kv, L]
    blocks = block_tables.long().gather(2, (slots // block_size).expand(*valid.shape))[valid]
    offsets = (slots % block_size).expand(*valid.shape)[valid]
    kv_pool = torch.full((num_blocks, 2, block_size, head_dim), float("nan"), dtype=dtype)
    kv_pool[blocks, :, offsets] = torch.randn(blocks.numel(), 2, head_dim, generator=gen).to(dtype)
    slot_expiry = torch.full((num_blocks, block_size), -7, dtype=torch.int32)
    if expiry_bounds is None:
        slot_expiry[blocks, offsets] = KEEP_FOREVER
    else:
        seq = torch.arange(num_seqs)[:, None, None].expand(*valid.shape)[valid]
        lo, hi = torch.tensor(expiry_bounds).T
        u = torch.rand(blocks.numel(), generator=gen)
        drawn = lo[seq] + (u * (hi[seq] - lo[seq] + 1)).long()
        slot_expiry[blocks, offsets] = _maybe_keep(drawn, 0.4, gen)
    return PagedCache(kv_pool, slot_expiry, block_tables, lens_t.to(torch.int32))


def make_prefill(
    seqs: list[tuple[int, list[int]]],
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    seed: int,
    window: int = 12,
) -> PrefillBatch:
    """A packed chunk: seqs[b] = (new tokens, cached slots per kv head) with random DMS expiries.

    New key j expires at positions[j] + randint(-1, window) (-1: invisible even to itself),
    40% are kept forever; cached slots expire around the chunk's positions.
    """
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads = len(seqs[0][1])
    starts, bounds, pos = [], [], []
    for n_new, lens in seqs:
        start = max(lens) + int(torch.randint(0, 6, (1,), generator=gen))
        starts.append(start)
        bounds.append((start - 4, start + n_new + 4))
        pos.append(torch.arange(start, start + n_new))
    cache = make_cache([lens for _, lens in seqs], block_size, head_dim, dtype, gen, bounds)
    positions = torch.cat(pos).to(torch.int32)
    total = positions.numel()
    seq_lens = torch.tensor([n for n, _ in seqs])
    cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu[1:] = seq_lens.cumsum(0)
    delay = torch.randint(-1, window + 1, (total, num_kv_heads), generator=gen)
    k_expiry = _maybe_keep(positions[:, None].long() + delay, 0.4, gen)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    q = rnd(total, num_kv_heads * group, head_dim)
    k, v = rnd(total, num_kv_heads, head_dim), rnd(total, num_kv_heads, head_dim)
    return PrefillBatch(q, k, v, k_expiry, positions, cu, cache)


def _dense_streams(cache: PagedCache) -> tuple[torch.Tensor, ...]:
    """All streams gathered densely: K, V [S, H_kv, L, D] f64 (0 past length), expiry, valid."""
    block_size = cache.kv_pool.shape[2]
    length = max(1, int(cache.cache_lens.max()) if cache.cache_lens.numel() else 1)
    slots = torch.arange(length, device=cache.kv_pool.device)
    tables = cache.block_tables.long()
    idx = (slots // block_size).expand(*tables.shape[:2], length)
    blocks = tables.gather(2, idx).clamp(min=0)  # [S, H_kv, L]
    offsets = (slots % block_size).expand_as(blocks)
    valid = slots < cache.cache_lens[..., None]  # [S, H_kv, L]
    kv = cache.kv_pool[blocks, :, offsets].double()  # [S, H_kv, L, 2, D]
    kv = torch.where(valid[..., None, None], kv, 0.0)
    expiry = cache.slot_expiry[blocks, offsets].long()
    return kv[..., 0, :], kv[..., 1, :], expiry, valid


def dense_decode(q: torch.Tensor, cache: PagedCache, scale: float) -> torch.Tensor:
    """Decode attention from dense padded K/V, a boolean mask and torch.softmax (float64)."""
    k, v, _, valid = _dense_streams(cache)
    num_seqs, num_q_heads, head_dim = q.shape
    qg = q.double().view(num_seqs, k.shape[1], -1, head_dim)  # [S, H_kv, g, D]
    scores = torch.einsum("shgd,shld->shgl", qg, k) * scale
    scores = scores.masked_fill(~valid[:, :, None, :], float("-inf"))
    probs = scores.softmax(-1).nan_to_num(0.0)
    return torch.einsum("shgl,shld->shgd", probs, v).reshape(num_seqs, num_q_heads, head_dim)


def dense_prefill(batch: PrefillBatch, scale: float) -> torch.Tensor:
    """Prefill attention with the DMS rule built as one dense [T, H_kv, keys] mask (float64)."""
    k_c, v_c, exp_c, valid_c = _dense_streams(batch.cache)
    num_tokens, num_q_heads, head_dim = batch.q.shape
    num_kv_heads = batch.k.shape[1]
    seq_lens = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).long()
    seq_of = torch.repeat_interleave(torch.arange(seq_lens.numel()), seq_lens)  # [T]
    p = batch.positions.long()
    qg = batch.q.double().view(num_tokens, num_kv_heads, -1, head_dim)  # [T, H_kv, g, D]
    vis_c = valid_c[seq_of] & (p[:, None, None] <= exp_c[seq_of])  # [T, H_kv, L]
    same = seq_of[:, None] == seq_of[None, :]
    causal = p[None, :] <= p[:, None]
    vis_n = (same & causal)[:, None, :] & (p[:, None, None] <= batch.k_expiry.long().T[None])
    s_c = torch.einsum("thgd,thld->thgl", qg, k_c[seq_of])
    s_n = torch.einsum("thgd,jhd->thgj", qg, batch.k.double())
    scores = torch.cat([s_c, s_n], -1) * scale
    visible = torch.cat([vis_c, vis_n], -1)[:, :, None, :]
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1).nan_to_num(0.0)
    n_c = k_c.shape[2]
    out = torch.einsum("thgl,thld->thgd", probs[..., :n_c], v_c[seq_of])
    out = out + torch.einsum("thgj,jhd->thgd", probs[..., n_c:], batch.v.double())
    return out.reshape(num_tokens, num_q_heads, head_dim)
