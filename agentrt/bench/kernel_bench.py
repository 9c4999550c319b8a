"""Kernel benchmark on CUDA: paged DMS decode / prefill vs dense attention at Llama-3.1-8B shapes.

Times are CUDA-event medians after warmup. Decode bandwidth is compared with the card's own
device-to-device copy bandwidth and matmul throughput, measured in the same run.
"""

from __future__ import annotations

import importlib.util
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from agentrt.kernels import (
    KEEP_FOREVER,
    choose_num_splits,
    dms_prefill_attention,
    paged_decode_attention,
)

DMS_WINDOW = 512  # w of the released DMS checkpoints: a marked key stays visible w more steps


@dataclass(frozen=True)
class AttentionShape:
    """Attention geometry of one layer."""

    num_q_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128


LLAMA_3_1_8B = AttentionShape()


def held_lengths(
    batch: int, context: int, cr: float, num_kv_heads: int, seed: int = 0
) -> list[list[int]]:
    """Slots held per (sequence, kv head) -> [batch][num_kv_heads] for a context compressed cr-fold.

    DMS gives every head its own length: mean context / cr, +-25% per head, within [1, context].
    cr <= 1 means a dense cache (every head holds the whole context).
    """
    if cr <= 1:
        return [[context] * num_kv_heads for _ in range(batch)]
    rng = random.Random(seed)
    mean = context / cr
    return [
        [max(1, min(context, round(mean * rng.uniform(0.75, 1.25)))) for _ in range(num_kv_heads)]
        for _ in range(batch)
    ]


def decode_bytes(total_slots: int, num_seqs: int, shape: AttentionShape, elem_size: int) -> int:
    """Bytes one decode call must move: K and V of every held slot, plus q and out."""
    kv = total_slots * 2 * shape.head_dim * elem_size
    return kv + 2 * num_seqs * shape.num_q_heads * shape.head_dim * elem_size


def random_paged_cache(
    lens: torch.Tensor, block_size: int, head_dim: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random pool holding streams of `lens` [S, H_kv] int32 in shuffled blocks.

    Returns kv_pool [num_blocks, 2, block_size, D], slot_expiry [num_blocks, block_size]
    (all KEEP_FOREVER) and block_tables [S, H_kv, max_blocks] int32, on lens.device.
    """
    device = lens.device
    gen = torch.Generator(device=device).manual_seed(seed)
    nblk = (lens.long() + block_size - 1) // block_size  # [S, H_kv]
    total = max(1, int(nblk.sum()))
    max_blocks = max(1, int(nblk.max()) if nblk.numel() else 1)
    perm = torch.randperm(total, generator=gen, device=device)
    first = nblk.flatten().cumsum(0).view_as(nblk) - nblk  # first table entry of each stream
    j = torch.arange(max_blocks, device=device)
    idx = (first[..., None] + j).clamp(max=total - 1)
    tables = torch.where(j < nblk[..., None], perm[idx], 0).to(torch.int32)
    pool = torch.randn((total, 2, block_size, head_dim), generator=gen, device=device, dtype=dtype)
    expiry = torch.full((total, block_size), KEEP_FOREVER, dtype=torch.int32, device=device)
    return pool, expiry, tables


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of fn() on the current CUDA stream, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure_copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted) of one large tensor."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3)


def measure_matmul_flops(
    device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16
) -> float:
    """Dense n x n x n matmul throughput in FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = cuda_time_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3)


def _flash_attn() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """flash_attn's (flash_attn_with_kvcache, flash_attn_func), or None when not installed."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_func, flash_attn_with_kvcache

    return flash_attn_with_kvcache, flash_attn_func


def _fits(nbytes: int, device: torch.device) -> bool:
    """Whether nbytes more fit in the device's free memory with a 15% margin."""
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < 0.85 * free


def bench_dense_decode(
    batch: int, context: int, shape: AttentionShape, dtype: torch.dtype, device: torch.device
) -> dict[str, float | None]:
    """SDPA (and flash_attn_with_kvcache if importable) over the full logical context."""
    elem = torch.finfo(dtype).bits // 8
    need = 2 * batch * context * shape.num_kv_heads * shape.head_dim * elem
    if not _fits(need, device):
        return {"sdpa_ms": None, "flash_ms": None}
    g = shape.num_q_heads // shape.num_kv_heads
    # [B, ctx, H_kv, D] is flash_attn's cache layout; SDPA reads the transposed view
    k = torch.randn(batch, context, shape.num_kv_heads, shape.head_dim, device=device, dtype=dtype)
    v = torch.randn_like(k)
    q = torch.randn(batch, shape.num_q_heads, shape.head_dim, device=device, dtype=dtype)
    # one decode query per head: the g heads of a group act as g query rows of that kv head
    q_rows = q.view(batch, shape.num_kv_heads, g, shape.head_dim)
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    result: dict[str, float | None] = {"sdpa_ms": cuda_time_ms(lambda: sdpa(q_rows, kt, vt))}
    fa = _flash_attn()
    result["flash_ms"] = None
    if fa is not None:
        seqlens = torch.full((batch,), context, dtype=torch.int32, device=device)
        q4 = q[:, None]  # [B, 1, H_q, D]
        result["flash_ms"] = cuda_time_ms(lambda: fa[0](q4, k, v, cache_seqlens=seqlens))
    return result


def bench_decode(
    lens: list[list[int]],
    shape: AttentionShape,
    dtype: torch.dtype,
    block_size: int,
    device: torch.device,
    num_sms: int,
) -> dict[str, Any]:
    """Time paged_decode_attention on streams of the given lengths; bytes and bandwidth."""
    lens_t = torch.tensor(lens, dtype=torch.int32, device=device)
    pool, _, tables = random_paged_cache(lens_t, block_size, shape.head_dim, dtype)
    q = torch.randn(len(lens), shape.num_q_heads, shape.head_dim, device=device, dtype=dtype)
    total = int(lens_t.sum())
    splits = choose_num_splits(int(lens_t.max()), lens_t.numel(), num_sms)
    scale = shape.head_dim**-0.5
    ms = cuda_time_ms(lambda: paged_decode_attention(q, pool, tables, lens_t, scale, splits))
    nbytes = decode_bytes(total, len(lens), shape, torch.finfo(dtype).bits // 8)
    return {"slots_held": total, "num_splits": splits, "kernel_ms": ms, "bytes": nbytes}


def bench_prefill(
    tokens: int,
    cached_context: int,
    cr: float,
    shape: AttentionShape,
    dtype: torch.dtype,
    block_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """One sequence: `tokens` new tokens over a DMS cache of `cached_context` tokens at cr."""
    gen = torch.Generator(device=device).manual_seed(1)
    hk, hq, d = shape.num_kv_heads, shape.num_q_heads, shape.head_dim
    lens = torch.tensor(held_lengths(1, cached_context, cr, hk), dtype=torch.int32, device=device)
    if cached_context == 0:
        lens.zero_()
    pool, expiry, tables = random_paged_cache(lens, block_size, d, dtype)
    positions = torch.arange(cached_context, cached_context + tokens, device=device)
    marked = torch.rand(tokens, hk, generator=gen, device=device) < (1.0 - 1.0 / max(cr, 1.0))
    k_expiry = torch.where(marked, positions[:, None] + DMS_WINDOW, KEEP_FOREVER).to(torch.int32)
    q = torch.randn(tokens, hq, d, generator=gen, device=device, dtype=dtype)
    k = torch.randn(tokens, hk, d, generator=gen, device=device, dtype=dtype)
    v = torch.randn_like(k)
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=device)
    args = (q, k, v, k_expiry, positions.to(torch.int32), cu, pool, expiry, tables, lens)
    ms = cuda_time_ms(lambda: dms_prefill_attention(*args, d**-0.5))
    return {"slots_held": int(lens.sum()), "kernel_ms": ms}


def bench_dense_prefill(
    tokens: int,
    cached_context: int,
    shape: AttentionShape,
    dtype: torch.dtype,
    device: torch.device,
) -> dict[str, float | None]:
    """SDPA (chunk causal + full cached context) and flash_attn_func causal, no compression."""
    g = shape.num_q_heads // shape.num_kv_heads
    q = torch.randn(1, shape.num_q_heads, tokens, shape.head_dim, device=device, dtype=dtype)
    kv_new = torch.randn(
        2, 1, shape.num_kv_heads, tokens, shape.head_dim, device=device, dtype=dtype
    )
    kv_old = torch.randn(2, 1, shape.num_kv_heads, cached_context, shape.head_dim, device=device, dtype=dtype)  # fmt: skip
    kn, vn = (t.repeat_interleave(g, dim=1) for t in kv_new)  # GQA expanded outside the timing
    ko, vo = (t.repeat_interleave(g, dim=1) for t in kv_old)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def dense() -> None:
        sdpa(q, kn, vn, is_causal=True)
        if cached_context:
            sdpa(q, ko, vo)  # the LSE merge of the two parts is not timed

    result: dict[str, float | None] = {"sdpa_ms": cuda_time_ms(dense), "flash_ms": None}
    fa = _flash_attn()
    if fa is not None:
        kf = torch.cat([kv_old, kv_new], dim=3).permute(0, 1, 3, 2, 4).contiguous()  # [2,1,L,H,D]
        qf = q.transpose(1, 2).contiguous()
        result["flash_ms"] = cuda_time_ms(lambda: fa[1](qf, kf[0], kf[1], causal=True))
    return result


def run_kernel_bench(
    batches: Sequence[int] = (1, 8, 32),
    contexts: Sequence[int] = (4096, 32768, 131072),
    crs: Sequence[float] = (1, 4, 8),
    dtype: torch.dtype = torch.bfloat16,
    block_size: int = 64,
    prefill_tokens: int = 8192,
    prefill_cached: Sequence[int] = (0, 32768),
    shape: AttentionShape = LLAMA_3_1_8B,
    device: str = "cuda",
) -> dict[str, Any]:
    """Benchmark decode over batches x contexts x compression ratios, and DMS prefill -> JSON dict."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "run_kernel_bench needs a CUDA device (torch.cuda.is_available() is False)"
        )
    dev = torch.device(device)
    props = torch.cuda.get_device_properties(dev)
    copy_bw = measure_copy_bandwidth(dev)
    result: dict[str, Any] = {
        "device": props.name,
        "dtype": str(dtype).removeprefix("torch."),
        "shape": asdict(shape),
        "block_size": block_size,
        "copy_bandwidth_gbps": copy_bw / 1e9,
        "matmul_tflops": measure_matmul_flops(dev, dtype=dtype) / 1e12,
        "flash_attn": _flash_attn() is not None,
        "decode": [],
        "prefill": [],
    }
    for batch in batches:
        for context in contexts:
            dense = bench_dense_decode(batch, context, shape, dtype, dev)
            torch.cuda.empty_cache()
            for cr in crs:
                lens = held_lengths(batch, context, cr, shape.num_kv_heads)
                row: dict[str, Any] = {"batch": batch, "context": context, "cr": cr, **dense}
                row.update(
                    bench_decode(lens, shape, dtype, block_size, dev, props.multi_processor_count)
                )
                row["achieved_gbps"] = row["bytes"] / (row["kernel_ms"] * 1e-3) / 1e9
                row["bandwidth_fraction"] = row["achieved_gbps"] * 1e9 / copy_bw
                for base in ("sdpa", "flash"):
                    t = row[f"{base}_ms"]
                    row[f"speedup_vs_{base}"] = t / row["kernel_ms"] if t else None
                result["decode"].append(row)
                torch.cuda.empty_cache()
    for cached in prefill_cached:
        dense = bench_dense_prefill(prefill_tokens, cached, shape, dtype, dev)
        for cr in crs:
            row = {"tokens": prefill_tokens, "cached_context": cached, "cr": cr, **dense}
            row.update(bench_prefill(prefill_tokens, cached, cr, shape, dtype, block_size, dev))
            for base in ("sdpa", "flash"):
                t = row[f"{base}_ms"]
                row[f"speedup_vs_{base}"] = t / row["kernel_ms"] if t else None
            result["prefill"].append(row)
        torch.cuda.empty_cache()
    return result


def _cell(value: Any, fmt: str) -> str:
    """Format a table cell; None (baseline not run) prints as '-'."""
    return "-" if value is None else format(value, fmt)


def format_table(result: dict[str, Any]) -> str:
    """Render a run_kernel_bench result as plain-text tables."""
    lines = [
        f"device {result['device']}  dtype {result['dtype']}  block {result['block_size']}  "
        f"copy {result['copy_bandwidth_gbps']:.0f} GB/s  matmul {result['matmul_tflops']:.0f} TFLOP/s",
        "",
        "decode   batch  context  cr  slots_held  splits  kernel_ms  GB/s  %copy  sdpa_ms  "
        "x_sdpa  flash_ms  x_flash",
    ]
    for r in result["decode"]:
        lines.append(
            f"         {r['batch']:5d} {r['context']:8d} {r['cr']:3g} {r['slots_held']:11d} "
            f"{r['num_splits']:7d} {r['kernel_ms']:10.3f} {r['achieved_gbps']:5.0f} "
            f"{100 * r['bandwidth_fraction']:6.1f} {_cell(r['sdpa_ms'], '8.3f'):>8} "
            f"{_cell(r['speedup_vs_sdpa'], '7.2f'):>7} {_cell(r['flash_ms'], '9.3f'):>9} "
            f"{_cell(r['speedup_vs_flash'], '8.2f'):>8}"
        )
    lines += [
        "",
        "prefill  tokens  cached  cr  slots_held  kernel_ms  sdpa_ms  x_sdpa  flash_ms  x_flash",
    ]
    for r in result["prefill"]:
        lines.append(
            f"         {r['tokens']:6d} {r['cached_context']:7d} {r['cr']:3g} {r['slots_held']:11d} "
            f"{r['kernel_ms']:10.3f} {_cell(r['sdpa_ms'], '8.3f'):>8} "
            f"{_cell(r['speedup_vs_sdpa'], '7.2f'):>7} {_cell(r['flash_ms'], '9.3f'):>9} "
            f"{_cell(r['speedup_vs_flash'], '8.2f'):>8}"
        )
    return "\n".join(lines)
