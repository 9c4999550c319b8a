"""Scatter new K/V rows and their expiry into pool slots: checks and dispatch."""

from __future__ import annotations

import importlib

import torch

from agentrt.kernels import _validate as val
from agentrt.kernels.dispatch import backend_for, torch_path
from agentrt.kernels.reference.write_kv_slots import write_kv_slots as _reference


def write_kv_slots(
    kv_pool: torch.Tensor,
    slot_expiry: torch.Tensor,
    slot_mapping: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    expiry: torch.Tensor,
) -> None:
    """Write row i of k, v, expiry into flat slot slot_mapping[i], in place; slots < 0 are skipped.

    kv_pool [num_blocks, 2, block_size, D]; slot_expiry [num_blocks, block_size] int32;
    slot_mapping [N] int64 (block * block_size + offset; unique, < num_blocks * block_size);
    k, v [N, D] (cast to the pool dtype); expiry [N] int32 (KEEP_FOREVER = kept).
    """
    _, _, head_dim = val.check_pool(kv_pool)
    val.check_slot_expiry(slot_expiry, kv_pool)
    val.check_ndim("slot_mapping", slot_mapping, 1, "[N]")
    val.check_dtype("slot_mapping", slot_mapping, (torch.int64,))
    val.check_dtype("expiry", expiry, (torch.int32,))
    val.check_dtype("k", k, val.FLOAT_DTYPES)
    val.check_dtype("v", v, val.FLOAT_DTYPES)
    n = slot_mapping.shape[0]
    if tuple(k.shape) != (n, head_dim) or tuple(v.shape) != (n, head_dim):
        raise ValueError(
            f"k and v must be [N={n}, D={head_dim}], got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if tuple(expiry.shape) != (n,):
        raise ValueError(f"expiry must be [N={n}], got {tuple(expiry.shape)}")
    val.check_same_device(
        kv_pool=kv_pool, slot_expiry=slot_expiry, slot_mapping=slot_mapping, k=k, v=v, expiry=expiry
    )
    k, v = k.to(kv_pool.dtype), v.to(kv_pool.dtype)  # the storage dtype (no-op when equal)
    if backend_for(kv_pool, head_dim=head_dim) == "reference":
        if torch_path() == "sdpa":  # off CUDA: indexed copies on flat views
            from agentrt.kernels._kv_slots_torch import write_kv_slots_flat

            write_kv_slots_flat(kv_pool, slot_expiry, slot_mapping, k, v, expiry)
            return
        _reference(kv_pool, slot_expiry, slot_mapping, k, v, expiry)
        return
    val.check_triton_dtype("kv_pool", kv_pool)
    impl = importlib.import_module("agentrt.kernels._kv_slots_triton")
    impl.launch_write(kv_pool, slot_expiry, slot_mapping, k, v, expiry)
