"""Copy K/V and expiry between pool slots (compaction, copy-on-write): checks and dispatch."""

from __future__ import annotations

import importlib

import torch

from agentrt.kernels import _validate as val
from agentrt.kernels.dispatch import backend_for
from agentrt.kernels.reference.copy_kv_slots import copy_kv_slots as _reference


def copy_kv_slots(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> None:
    """Copy K, V and expiry of flat slot src[i] to flat slot dst[i], in place.

    kv_pool [num_blocks, 2, block_size, D]; slot_expiry [num_blocks, block_size] int32;
    src, dst [N] int64 flat slots (block * block_size + offset); dst must be unique. Every
    source is read before any destination is written, so src and dst may overlap.
    """
    val.check_pool(kv_pool)
    val.check_slot_expiry(slot_expiry, kv_pool)
    val.check_ndim("src", src, 1, "[N]")
    val.check_ndim("dst", dst, 1, "[N]")
    val.check_dtype("src", src, (torch.int64,))
    val.check_dtype("dst", dst, (torch.int64,))
    if src.shape != dst.shape:
        raise ValueError(f"src and dst must have one length, got {src.shape[0]} and {dst.shape[0]}")
    val.check_same_device(kv_pool=kv_pool, slot_expiry=slot_expiry, src=src, dst=dst)
    if backend_for(kv_pool, head_dim=kv_pool.shape[3]) == "reference":
        _reference(kv_pool, slot_expiry, src, dst)
        return
    val.check_triton_dtype("kv_pool", kv_pool)
    impl = importlib.import_module("agentrt.kernels._kv_slots_triton")
    impl.launch_copy(kv_pool, slot_expiry, src, dst)
