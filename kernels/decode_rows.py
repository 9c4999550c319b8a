"""The CPU decode step's pool access with its addressing built once per step, not per layer.

A decode step knows every layer's new slots and block tables before its forward
(`agentrt.dms.serving.decode_metadata`). Off CUDA the per-layer work can then shrink to
two indexed copies for the new K/V rows and one gather + one SDPA call for attention;
the checks and index arithmetic of `write_kv_slots` / `paged_decode_attention` run once
per step instead of once per layer. Same values as those ops (the tests compare them).
"""

from __future__ import annotations

import torch

from agentrt.kernels._kv_slots_torch import kv_rows, write_kv_rows
from agentrt.kernels._paged_decode_sdpa import decode_attention_blocks, padding_mask
from agentrt.kernels.dispatch import backend_for, torch_path


def rows_path(kv_pool: torch.Tensor) -> bool:
    """True where these helpers serve the decode step: the torch SDPA path, contiguous pool."""
    head_dim = kv_pool.shape[3]
    return (
        backend_for(kv_pool, head_dim=head_dim) == "reference"
        and torch_path() == "sdpa"
        and kv_pool.is_contiguous()
    )


__all__ = ["decode_attention_blocks", "kv_rows", "padding_mask", "rows_path", "write_kv_rows"]
