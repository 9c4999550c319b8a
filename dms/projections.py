"""Per-layer projections shared by every forward: q/k/v after RoPE and the DMS decision logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agentrt.dms.architecture import ArchSpec
from agentrt.dms.config import DMSConfig
from agentrt.dms.cpu_layout import cpu_path
from agentrt.kernels.cpu_linear import cpu_linear


@dataclass
class LayerQKV:
    """Projected attention inputs of one layer for a [B, T] block of tokens."""

    q: torch.Tensor  # [B, T, H_q, d] after RoPE (q-neuron channel zeroed)
    k: torch.Tensor  # [B, T, H_kv, d] after RoPE
    v: torch.Tensor  # [B, T, H_kv, d]
    logits: torch.Tensor | None  # [B, T, H_kv] decision logits z = s·r − b (None: no DMS)


# HF RMSNorm classes whose forward is w · (x · rsqrt(mean(x²) + eps)) computed in fp32
STANDARD_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


# HF MLP classes whose forward is down(act(gate(x)) · up(x))
STANDARD_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


def _plain(module: nn.Module) -> bool:
    """No hooks on the module: calling its math directly is what calling it would do."""
    return not (module._forward_hooks or module._forward_pre_hooks)


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(x)` for an HF RMSNorm; in fp32 without autograd through torch's fused
    `rms_norm` (the same result, a third of the small ops), else the module itself."""
    w = getattr(norm, "weight", None)
    if (
        x.dtype == torch.float32
        and w is not None
        and w.dtype == torch.float32
        and not torch.is_grad_enabled()
        and type(norm).__name__ in STANDARD_RMS_NORMS
        and _plain(norm)
    ):
        return F.rms_norm(x, (x.shape[-1],), w, norm.variance_epsilon)
    return norm(x)


def linear(proj: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`proj(x)`; a plain `nn.Linear` outside autograd is applied without the module call
    (a decode step makes ~8 of these per layer; a LoRA-wrapped projection stays a call),
    through the CPU routine `agentrt.dms.cpu_layout` marked it with, if any."""
    if type(proj) is nn.Linear and not torch.is_grad_enabled() and _plain(proj):
        path = cpu_path(proj)
        if path is not None:
            return cpu_linear(x, proj.weight, proj.bias, path)
        return F.linear(x, proj.weight, proj.bias)
    return proj(x)


def mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`block(x)` for an HF gated MLP, its three projections through `linear`."""
    if type(block).__name__ in STANDARD_MLPS and not torch.is_grad_enabled() and _plain(block):
        gate = linear(block.gate_proj, x)
        return linear(block.down_proj, block.act_fn(gate) * linear(block.up_proj, x))
    return block(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension (HF's RoPE convention)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [B, T, H, d] with cos/sin [B, T, d]."""
    cos = cos.unsqueeze(2)
    sin = sin.unsqueeze(2)
    return x * cos + rotate_half(x) * sin


def signed_rope(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, T, d] → the factors of `apply_signed_rope`, [B, T, 1, d] each (built once
    per forward instead of once per layer)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(2), signed.unsqueeze(2)


def apply_signed_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` with factors from `signed_rope`: x·cos + roll(x)·(±sin) is the same
    arithmetic as x·cos + rotate_half(x)·sin (the sign moves from x to sin), in 4 ops not 8."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


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
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    arch: ArchSpec,
    dms: DMSConfig | None,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LayerQKV:
    """q/k/v after RoPE and decision logits for residual stream h [B, T, hidden] (pre-norm).

    `rope`: `signed_rope(cos, sin)` built once for all layers (then cos, sin are unused).
    """
    bsz, seq = h.shape[:2]
    attn = layer.self_attn
    x = rms_norm(layer.input_layernorm, h)
    q = linear(attn.q_proj, x).view(bsz, seq, arch.num_heads, arch.head_dim)
    k = linear(attn.k_proj, x).view(bsz, seq, arch.num_kv_heads, arch.head_dim)
    v = linear(attn.v_proj, x).view(bsz, seq, arch.num_kv_heads, arch.head_dim)
    if arch.has_qk_norm:
        q = rms_norm(attn.q_norm, q)
        k = rms_norm(attn.k_norm, k)
    logits = None
    keep = None
    if dms is not None:
        if dms.separate_alpha:
            raw = linear(attn.dms_proj_alpha, rms_norm(attn.dms_proj_alpha_norm, h))  # [B, T, H_kv]
        else:
            raw = q[:, :, :: arch.group_size, arch.head_dim - 1]  # [B, T, H_kv]
            keep = qneuron_keep_mask(arch, q.device, q.dtype)
            q = q * keep  # zero before RoPE: the neuron must not leak into channel d/2−1
        logits = raw.float() * dms.alpha_scale - dms.initial_alpha_offset
        if dms.alpha_per == "layer":
            logits = logits[..., :1].expand_as(logits)
    qk = torch.cat((q, k), dim=2)  # one RoPE pass over q and k together
    qk = apply_rope(qk, cos, sin) if rope is None else apply_signed_rope(qk, *rope)
    q, k = qk.split((arch.num_heads, arch.num_kv_heads), dim=2)
    if keep is not None:
        q = q * keep  # zero after RoPE: drop what rotate-half moved into channel d−1
    return LayerQKV(q=q, k=k, v=v, logits=logits)


def finish_layer(layer: nn.Module, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Residual + o_proj + gated MLP; attn_out [B, T, H_q·d] → new residual [B, T, hidden]."""
    h = h + linear(layer.self_attn.o_proj, attn_out)
    return h + mlp(layer.mlp, rms_norm(layer.post_attention_layernorm, h))


def lm_logits(hf_model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Final norm + LM head: [..., hidden] → [..., vocab]."""
    return linear(hf_model.lm_head, rms_norm(hf_model.model.norm, h))
