"""Shape, dtype and device checks shared by the kernel launchers (host-side, no device sync)."""

from __future__ import annotations

import torch

TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FLOAT_DTYPES = (*TRITON_DTYPES, torch.float64)  # float64: reference backend only (exact tests)
MIN_HEAD_DIM = 16
MAX_HEAD_DIM = 256
KEEP_FOREVER = 2**31 - 1  # slot/key expiry meaning "visible to every later query" (INT32_MAX)


def check_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    """Raise TypeError unless `t.dtype` is one of `allowed`."""
    if t.dtype not in allowed:
        names = ", ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def check_triton_dtype(name: str, t: torch.Tensor) -> None:
    """Raise TypeError for dtypes the Triton kernels do not implement (float64)."""
    if t.dtype not in TRITON_DTYPES:
        raise TypeError(
            f"{name} dtype {t.dtype} runs only on the reference backend "
            "(CPU tensors or AGENTRT_KERNELS=reference); the Triton kernels take bf16/fp16/fp32"
        )


def check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise ValueError unless `t` has `ndim` dims; `layout` names them for the message."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ValueError unless all tensors live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n}={d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")


def check_pool(kv_pool: torch.Tensor, head_dim: int | None = None) -> tuple[int, int, int]:
    """Validate `kv_pool` [num_blocks, 2, block_size, head_dim]; return (num_blocks, bs, D)."""
    check_ndim("kv_pool", kv_pool, 4, "[num_blocks, 2, block_size, head_dim]")
    check_dtype("kv_pool", kv_pool, FLOAT_DTYPES)
    num_blocks, two, block_size, d = kv_pool.shape
    if two != 2:
        raise ValueError(f"kv_pool dim 1 must be 2 (K, V), got shape {tuple(kv_pool.shape)}")
    if not kv_pool.is_contiguous():
        raise ValueError(f"kv_pool must be contiguous, got strides {kv_pool.stride()}")
    if head_dim is not None and d != head_dim:
        raise ValueError(f"kv_pool head_dim {d} != query/key head_dim {head_dim}")
    return num_blocks, block_size, d


def triton_head_dim_ok(head_dim: int) -> bool:
    """Whether the Triton kernels' tiles take this head_dim (the reference takes any)."""
    return MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM


def check_slot_expiry(slot_expiry: torch.Tensor, kv_pool: torch.Tensor) -> None:
    """Validate `slot_expiry` [num_blocks, block_size] int32 against the pool."""
    check_dtype("slot_expiry", slot_expiry, (torch.int32,))
    want = (kv_pool.shape[0], kv_pool.shape[2])
    if tuple(slot_expiry.shape) != want:
        raise ValueError(
            f"slot_expiry must be [num_blocks, block_size] = {list(want)}, "
            f"got {tuple(slot_expiry.shape)}"
        )
    if not slot_expiry.is_contiguous():
        raise ValueError(f"slot_expiry must be contiguous, got strides {slot_expiry.stride()}")


def check_tables(block_tables: torch.Tensor, cache_lens: torch.Tensor, num_seqs: int) -> int:
    """Validate block_tables [S, H_kv, max_blocks] and cache_lens [S, H_kv]; return H_kv."""
    check_ndim("block_tables", block_tables, 3, "[S, H_kv, max_blocks]")
    check_ndim("cache_lens", cache_lens, 2, "[S, H_kv]")
    check_dtype("block_tables", block_tables, (torch.int32,))
    check_dtype("cache_lens", cache_lens, (torch.int32,))
    if block_tables.shape[0] != num_seqs:
        raise ValueError(
            f"block_tables has {block_tables.shape[0]} sequences, expected {num_seqs} "
            f"(shape {tuple(block_tables.shape)})"
        )
    if tuple(cache_lens.shape) != tuple(block_tables.shape[:2]):
        raise ValueError(
            f"cache_lens shape {tuple(cache_lens.shape)} != block_tables[:2] "
            f"{tuple(block_tables.shape[:2])}"
        )
    return block_tables.shape[1]


def check_gqa(num_q_heads: int, num_kv_heads: int) -> int:
    """Return the GQA group size g = H_q // H_kv; raise ValueError if it is not whole."""
    if num_kv_heads <= 0 or num_q_heads % num_kv_heads != 0:
        raise ValueError(
            f"H_q ({num_q_heads}) must be a positive multiple of H_kv ({num_kv_heads})"
        )
    return num_q_heads // num_kv_heads


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
