"""Paged decode attention over per-stream DMS caches: checks, split choice, dispatch."""

from __future__ import annotations

import functools
import importlib

import torch

from agentrt.kernels import _validate as val
from agentrt.kernels.dispatch import backend_for, torch_path
from agentrt.kernels.reference.paged_decode_attention import (
    paged_decode_attention as _reference,
)

MAX_SPLITS = 64  # upper bound on split-K partitions per stream
MIN_SPLIT_LEN = 256  # a split walks at least this many slots (amortises the reduction)
WAVES = 4  # target programs per SM (several CTAs are resident per SM)


def choose_num_splits(max_len: int, num_streams: int, num_sms: int) -> int:
    """Split-K partitions for the longest stream so that streams x splits fill the GPU.

    One program per (stream, split); splits are added until about WAVES * num_sms programs
    exist, never below MIN_SPLIT_LEN slots per split, and never above MAX_SPLITS.
    """
    if max_len <= MIN_SPLIT_LEN or num_streams <= 0:
        return 1
    want = -(-(WAVES * num_sms) // num_streams)
    by_len = -(-max_len // MIN_SPLIT_LEN)
    return max(1, min(want, by_len, MAX_SPLITS))


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """SMs of the device; the choose_num_splits occupancy target (132 when not CUDA)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # interpreter runs: assume an H100 so the split logic is exercised


def paged_decode_attention(
    q: torch.Tensor,
    kv_pool: torch.Tensor,
    block_tables: torch.Tensor,
    cache_lens: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One decode query per sequence over its paged streams -> out [S, H_q, D] (q's dtype).

    q [S, H_q, D]; kv_pool [num_blocks, 2, block_size, D] (K = 0, V = 1, keys post-RoPE; its
    dtype is the KV storage dtype, which may differ from q's: K/V are upcast before the math);
    block_tables [S, H_kv, max_blocks] int32; cache_lens [S, H_kv] int32 (0 = empty stream,
    output zeros). Query head hq reads kv head hq // (H_q // H_kv). All held slots are visible.
    num_splits=None picks split-K from the longest stream (one host sync on cache_lens; pass
    it explicitly, e.g. under CUDA graphs, to avoid the sync).
    """
    val.check_ndim("q", q, 3, "[S, H_q, D]")
    val.check_dtype("q", q, val.FLOAT_DTYPES)
    val.check_pool(kv_pool, head_dim=q.shape[2])
    num_kv_heads = val.check_tables(block_tables, cache_lens, q.shape[0])
    val.check_gqa(q.shape[1], num_kv_heads)
    val.check_same_device(q=q, kv_pool=kv_pool, block_tables=block_tables, cache_lens=cache_lens)
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")

    if backend_for(q, head_dim=q.shape[2]) == "reference":
        if torch_path() == "sdpa":
            from agentrt.kernels._paged_decode_sdpa import paged_decode_attention_sdpa

            return paged_decode_attention_sdpa(q, kv_pool, block_tables, cache_lens, scale)
        return _reference(q, kv_pool, block_tables, cache_lens, scale, num_splits)
    val.check_triton_dtype("q", q)
    val.check_triton_dtype("kv_pool", kv_pool)
    if num_splits is None:
        max_len = int(cache_lens.max()) if cache_lens.numel() else 0
        num_splits = choose_num_splits(max_len, cache_lens.numel(), num_sms(q.device))
    impl = importlib.import_module("agentrt.kernels._paged_decode_triton")
    return impl.launch(q, kv_pool, block_tables, cache_lens, scale, num_splits)
