"""Per-layer projections shared by every forward: q/k/v after RoPE and the DMS decision logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agentrt.dms.architecture import ArchSpec
from agentrt.dms.config import DMSConfig


@dataclass
class LayerQKV:
    """Projected attention inputs of one layer for a [B, T] block of tokens."""

    q: torch.Tensor  # [B, T, H_q, d] after RoPE (q-neuron channel zeroed)
    k: torch.Tensor  # [B, T, H_kv, d] after RoPE
    v: torch.Tensor  # [B, T, H_kv, d]
    logits: torch.Tensor | None  # [B, T, H_kv] decision logits z = s·r − b (None: no DMS)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension (HF's RoPE convention)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [B, T, H, d] with cos/sin [B, T, d]."""
    cos = cos.unsqueeze(2)
    sin = sin.unsqueeze(2)
    return x * cos + rotate_half(x) * sin


def qneuron_keep_mask(arch: ArchSpec, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[H_q, d] multiplier that zeroes channel d−1 of the first query head of each GQA group."""
    mask = torch.ones(arch.num_heads, arch.head_dim, device=device, dtype=dtype)
    mask[:: arch.group_size, arch.head_dim - 1] = 0
    return mask


def rope_tables(
    hf_model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, d] for absolute positions [B, T], from the HF model's rotary module."""
    return hf_model.model.rotary_emb(hidden, positions)


def project_layer(
    layer: nn.Module,
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    arch: ArchSpec,
    dms: DMSConfig | None,
) -> LayerQKV:
    """q/k/v after RoPE and decision logits for residual stream h [B, T, hidden] (pre-norm)."""
    bsz, seq = h.shape[:2]
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    q = attn.q_proj(x).view(bsz, seq, arch.num_heads, arch.head_dim)
    k = attn.k_proj(x).view(bsz, seq, arch.num_kv_heads, arch.head_dim)
    v = attn.v_proj(x).view(bsz, seq, arch.num_kv_heads, arch.head_dim)
    if arch.has_qk_norm:
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    logits = None
    keep = None
    if dms is not None:
        if dms.separate_alpha:
            raw = attn.dms_proj_alpha(attn.dms_proj_alpha_norm(h))  # [B, T, H_kv]
        else:
            raw = q[:, :, :: arch.group_size, arch.head_dim - 1]  # [B, T, H_kv]
            keep = qneuron_keep_mask(arch, q.device, q.dtype)
            q = q * keep  # zero before RoPE: the neuron must not leak into channel d/2−1
        logits = raw.float() * dms.alpha_scale - dms.initial_alpha_offset
        if dms.alpha_per == "layer":
            logits = logits[..., :1].expand_as(logits)
    q, k = apply_rope(torch.cat((q, k), dim=2), cos, sin).split(
        (arch.num_heads, arch.num_kv_heads), dim=2
    )  # one RoPE pass over q and k together: half the small ops of a decode step
    if keep is not None:
        q = q * keep  # zero after RoPE: drop what rotate-half moved into channel d−1
    return LayerQKV(q=q, k=k, v=v, logits=logits)


def finish_layer(layer: nn.Module, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Residual + o_proj + gated MLP; attn_out [B, T, H_q·d] → new residual [B, T, hidden]."""
    h = h + layer.self_attn.o_proj(attn_out)
    return h + layer.mlp(layer.post_attention_layernorm(h))


def lm_logits(hf_model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Final norm + LM head: [..., hidden] → [..., vocab]."""
    return hf_model.lm_head(hf_model.model.norm(h))
