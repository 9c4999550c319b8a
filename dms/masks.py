"""The DMS visibility rule as dense masks: the oracle for the cache and the kernels.

The decision computed at token t marks token t−1: key j carries flag e_j = δ_{j+1}
(the last key has no flag yet). A marked key j is visible to queries i ≤ j + w;
unmarked keys stay visible forever (dms-reference.md §3).
"""

from __future__ import annotations

import torch


def key_flags(decisions: torch.Tensor) -> torch.Tensor:
    """Per-key eviction flags e_j = δ_{j+1}: [B, T, H] → [B, T, H] (last key False/0)."""
    pad = torch.zeros_like(decisions[:, :1])
    return torch.cat([decisions[:, 1:], pad], dim=1)


def visibility_mask(decisions: torch.Tensor, window: int) -> torch.Tensor:
    """Hard DMS mask [B, H, T, T] (True = query i sees key j) from decisions δ [B, T, H] bool."""
    seq = decisions.shape[1]
    idx = torch.arange(seq, device=decisions.device)
    dist = idx[:, None] - idx[None, :]  # [T_q, T_k] = i − j
    causal = dist >= 0
    in_window = dist <= window
    flags = key_flags(decisions).transpose(1, 2)  # [B, H, T_k]
    return causal & (in_window | ~flags[:, :, None, :])


def training_bias(u: torch.Tensor, window: int) -> torch.Tensor:
    """Soft additive mask [B, H, T, T]: 0 in-window, log(1 − σ(u_{j+1})) outside, −inf above the diagonal."""
    seq = u.shape[1]
    idx = torch.arange(seq, device=u.device)
    dist = idx[:, None] - idx[None, :]
    shifted = key_flags(u).transpose(1, 2)  # [B, H, T_k]: u_{j+1}, last padded with 0
    outside = torch.nn.functional.logsigmoid(-shifted)[:, :, None, :]  # [B, H, 1, T_k]
    bias = torch.where(dist > window, outside, torch.zeros_like(outside))
    return bias.masked_fill(dist < 0, float("-inf"))


def expand_to_query_heads(mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B, H_kv, T, T] → [B, H_q, T, T] by repeating each KV head's mask over its query group."""
    return mask.repeat_interleave(group_size, dim=1)
