"""Dense [B, T] forwards: training (soft mask, Gumbel decisions) and the hard reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentrt.dms.architecture import ArchSpec
from agentrt.dms.block_attention import dms_tile_attention
from agentrt.dms.config import DMSConfig
from agentrt.dms.gating import hard_decisions, logistic_noise, soft_decisions
from agentrt.dms.masks import (
    expand_to_query_heads,
    key_flags,
    training_bias,
    visibility_mask,
)
from agentrt.dms.projections import finish_layer, lm_logits, project_layer, rope_tables


@dataclass
class TrainOutput:
    """Result of `DMSModel.forward_train`."""

    logits: torch.Tensor  # [B, T, V]
    decisions: torch.Tensor | None  # [L, B, T, H_kv] straight-through 0/1 (None in teacher mode)
    eviction_fraction: torch.Tensor | None  # [L, H_kv] mean of `decisions` over valid tokens


@dataclass
class ReferenceOutput:
    """Result of `DMSModel.forward_reference`."""

    logits: torch.Tensor  # [B, T, V]
    decisions: torch.Tensor | None  # [L, B, T, H_kv] bool δ (None when eviction is off)


@dataclass
class SoftKeyMask:
    """The DMS training mask in factored form: one log(1 − σ(u_{j+1})) per key, plus w.

    `dense_forward` runs it tiled (`dms_tile_attention`), so no [T, T] tensor exists.
    """

    log_keep: torch.Tensor  # [B, H_kv, T]
    window: int

    def dense(self, group_size: int) -> torch.Tensor:
        """The equivalent additive mask [B, H_q, T, T] (for padded batches)."""
        seq = self.log_keep.shape[-1]
        idx = torch.arange(seq, device=self.log_keep.device)
        dist = idx[:, None] - idx[None, :]
        outside = self.log_keep[:, :, None, :]
        bias = torch.where(dist > self.window, outside, torch.zeros_like(outside))
        bias = bias.masked_fill(dist < 0, float("-inf"))
        return expand_to_query_heads(bias, group_size)


# A mask builder gets (decision logits [B, T, H_kv] or None, T, device) and returns an
# SDPA attn_mask broadcastable to [B, H_q, T, T] (bool: True = attend; float: additive;
# None = plain causal, run on the fused SDPA path) or a `SoftKeyMask` (run tiled),
# plus the layer's decisions to report.
MaskFn = Callable[
    [torch.Tensor | None, int, torch.device],
    tuple[torch.Tensor | SoftKeyMask | None, torch.Tensor | None],
]


def default_positions(
    attention_mask: torch.Tensor | None, bsz: int, seq: int, device
) -> torch.Tensor:
    """Absolute positions [B, T]: arange, or cumsum of the mask for left-padded batches."""
    if attention_mask is None:
        return torch.arange(seq, device=device).expand(bsz, seq)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def dense_forward(
    hf_model: nn.Module,
    arch: ArchSpec,
    dms: DMSConfig | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    mask_fn: MaskFn,
    head: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Run every layer densely with masks from mask_fn; returns logits [B, T, V] and decisions.

    head=False returns the last residual stream [B, T, hidden] instead (before the final norm).
    """
    bsz, seq = input_ids.shape
    h = hf_model.model.embed_tokens(input_ids)
    positions = default_positions(attention_mask, bsz, seq, input_ids.device)
    cos, sin = rope_tables(hf_model, h, positions)
    pad = None
    if attention_mask is not None:
        keep = attention_mask.bool()
        eye = torch.eye(seq, dtype=torch.bool, device=h.device)
        pad = keep[:, None, None, :] | eye  # [B, 1, T, T]: a padded query still sees itself
    decisions: list[torch.Tensor | None] = []
    for layer in hf_model.model.layers:
        qkv = project_layer(layer, h, cos, sin, arch, dms)
        mask, dec = mask_fn(qkv.logits, seq, h.device)
        decisions.append(dec)
        if isinstance(mask, SoftKeyMask) and pad is None:
            out = dms_tile_attention(
                qkv.q.transpose(1, 2),
                qkv.k.transpose(1, 2),
                qkv.v.transpose(1, 2),
                mask.log_keep,
                mask.window,
                scale=layer.self_attn.scaling,
            )
            h = finish_layer(layer, h, out.transpose(1, 2).reshape(bsz, seq, -1))
            continue
        if isinstance(mask, SoftKeyMask):
            mask = mask.dense(arch.group_size)
        if mask is None and pad is not None:
            mask = causal_mask(seq, h.device)
        if pad is not None:
            mask = mask & pad if mask.dtype == torch.bool else mask.masked_fill(~pad, float("-inf"))
        q = qkv.q.transpose(1, 2)  # [B, H_q, T, d]
        k = qkv.k.transpose(1, 2).repeat_interleave(arch.group_size, dim=1)
        v = qkv.v.transpose(1, 2).repeat_interleave(arch.group_size, dim=1)
        if mask is None:  # plain causal: the fused (flash) SDPA path, no [T, T] mask in memory
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=layer.self_attn.scaling
            )
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask.to(q.dtype) if mask.dtype != torch.bool else mask,
                scale=layer.self_attn.scaling,
            )
        h = finish_layer(layer, h, out.transpose(1, 2).reshape(bsz, seq, -1))
    return (lm_logits(hf_model, h) if head else h), decisions


def causal_mask(seq: int, device: torch.device) -> torch.Tensor:
    """Plain causal bool mask [1, 1, T, T]."""
    return torch.ones(seq, seq, dtype=torch.bool, device=device).tril()[None, None]


def reference_mask_fn(arch: ArchSpec, dms: DMSConfig | None) -> MaskFn:
    """Hard DMS masks (δ = 1[z > 0]) or causal when eviction is off."""

    def build(logits: torch.Tensor | None, seq: int, device: torch.device):
        if logits is None or dms is None or dms.disable_eviction:
            return None, None  # plain causal
        dec = hard_decisions(logits)  # [B, T, H_kv]
        mask = visibility_mask(dec, dms.window_size)
        return expand_to_query_heads(mask, arch.group_size), dec

    return build


def train_mask_fn(
    arch: ArchSpec,
    dms: DMSConfig | None,
    generator: torch.Generator | None,
    teacher: bool,
    tiled: bool = True,
) -> MaskFn:
    """Soft Gumbel-sigmoid masks for training (tiled, or dense [T, T]), or causal for the teacher."""

    def build(logits: torch.Tensor | None, seq: int, device: torch.device):
        if teacher or logits is None or dms is None or dms.disable_eviction:
            return None, None  # plain causal
        noise = None
        if generator is not None:
            noise = logistic_noise(tuple(logits.shape), generator, logits.device)
        soft = soft_decisions(logits, noise, dms.tau, dms.alpha_per)
        if tiled:
            log_keep = F.logsigmoid(-key_flags(soft.u)).transpose(1, 2)  # [B, H_kv, T]
            return SoftKeyMask(log_keep, dms.window_size), soft.hard
        bias = training_bias(soft.u, dms.window_size)
        return expand_to_query_heads(bias, arch.group_size), soft.hard

    return build
