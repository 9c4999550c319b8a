"""Layer-local distillation: each layer's adapter against that layer's dense attention output.

One dense forward (no grad) caches every layer's input residual h_l and its attention
output o_l = o_proj(attention(h_l)). Then, layer by layer, the student attention of the
same h_l (Gumbel decisions from the adapter, soft mask, tiled; an attached LoRA acting on
q/k/v/o, switched off for the dense pass) is compared with o_l:
`mse_l = mean_t ‖ô_l,t − o_l,t‖² / mean_t ‖o_l,t‖²` (normalised, so every layer weighs
alike), and the loss is `mean_l mse_l + max(0, target − evicted)` with the same hinge as
the KL objective. Each layer's graph is back-propagated and freed before the next one:
no backward through the MLPs, the LM head or the other layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agentrt.dms.block_attention import dms_tile_attention
from agentrt.dms.dense_forward import default_positions
from agentrt.dms.gating import logistic_noise, soft_decisions
from agentrt.dms.lora import lora_disabled
from agentrt.dms.masks import key_flags
from agentrt.dms.model import DMSModel
from agentrt.dms.projections import finish_layer, project_layer, rope_tables


@dataclass
class LayerCache:
    """Dense activations of one block, per layer."""

    inputs: list[torch.Tensor]  # h_l [B, T, hidden], the residual entering layer l
    targets: list[torch.Tensor]  # o_l [B, T, hidden], o_proj of the dense attention
    cos: torch.Tensor
    sin: torch.Tensor


@torch.no_grad()
def dense_layer_cache(model: DMSModel, ids: torch.Tensor) -> LayerCache:
    """Run the dense model on ids [B, T] and keep every layer's input and attention output."""
    with lora_disabled(model.hf):  # the targets are the base model's, without the LoRA
        return _dense_layer_cache(model, ids)


def _dense_layer_cache(model: DMSModel, ids: torch.Tensor) -> LayerCache:
    """`dense_layer_cache` with whatever weights the model has now."""
    hf, arch = model.hf, model.arch
    bsz, seq = ids.shape
    h = hf.model.embed_tokens(ids)
    cos, sin = rope_tables(hf, h, default_positions(None, bsz, seq, ids.device))
    inputs, targets = [], []
    for layer in hf.model.layers:
        qkv = project_layer(layer, h, cos, sin, arch, None)
        q = qkv.q.transpose(1, 2)
        k = qkv.k.transpose(1, 2).repeat_interleave(arch.group_size, dim=1)
        v = qkv.v.transpose(1, 2).repeat_interleave(arch.group_size, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=layer.self_attn.scaling)
        attn = layer.self_attn.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))
        inputs.append(h)
        targets.append(attn)
        h = finish_layer(layer, h, out.transpose(1, 2).reshape(bsz, seq, -1))
    return LayerCache(inputs, targets, cos, sin)


def layer_local_step(
    model: DMSModel,
    cache: LayerCache,
    noise_seed: int | None,
    target_fraction: float,
    scale: float = 1.0,
) -> dict[str, float]:
    """Back-propagate `scale` × (mean_l mse_l + hinge) into the adapters; returns the numbers.

    The hinge max(0, target − evicted_b) is linear in every layer's hard decisions once its
    active set is known, so it is split over the layers exactly: a first, cheap pass (the
    adapters only) fixes the active set, then each layer back-propagates its share.
    """
    dms, arch = model.dms, model.arch
    layers = list(model.hf.model.layers)
    n_layers = len(layers)
    gen = torch.Generator().manual_seed(int(noise_seed)) if noise_seed is not None else None
    noise = []
    with torch.no_grad():
        fractions = []
        for layer, h in zip(layers, cache.inputs, strict=True):
            logits = _decision_logits(layer, h, dms)
            eps = None if gen is None else logistic_noise(tuple(logits.shape), gen, logits.device)
            noise.append(eps)
            hard = soft_decisions(logits, eps, dms.tau, dms.alpha_per).hard
            fractions.append(hard.mean(dim=(1, 2)))  # [B]
        evicted = torch.stack(fractions).mean(0)  # [B]
        active = (evicted < target_fraction).to(evicted.dtype)  # hinge gradient −1 where active
    bsz = evicted.shape[0]
    mse_total = 0.0
    for layer, h, target, eps in zip(layers, cache.inputs, cache.targets, noise, strict=True):
        qkv = project_layer(layer, h, cache.cos, cache.sin, arch, dms)
        soft = soft_decisions(qkv.logits, eps, dms.tau, dms.alpha_per)
        log_keep = F.logsigmoid(-key_flags(soft.u)).transpose(1, 2)
        out = dms_tile_attention(
            qkv.q.transpose(1, 2),
            qkv.k.transpose(1, 2),
            qkv.v.transpose(1, 2),
            log_keep,
            dms.window_size,
            scale=layer.self_attn.scaling,
        )
        seq = h.shape[1]
        student = layer.self_attn.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))
        mse = (student - target).square().sum(-1).mean() / target.square().sum(-1).mean()
        share = -(active * soft.hard.mean(dim=(1, 2))).sum() / bsz  # this layer's hinge slope
        ((mse + share) * (scale / n_layers)).backward()
        mse_total += float(mse.detach())
    hinge = torch.clamp(target_fraction - evicted, min=0).mean()
    return {
        "layer_mse": mse_total / n_layers,
        "compression_loss": float(hinge),
        "eviction_fraction": float(evicted.mean()),
    }


def _decision_logits(layer: torch.nn.Module, h: torch.Tensor, dms) -> torch.Tensor:
    """Adapter decision logits z = s·r − b [B, T, H_kv] of residual h (adapter flavour)."""
    attn = layer.self_attn
    raw = attn.dms_proj_alpha(attn.dms_proj_alpha_norm(h))
    logits = raw.float() * dms.alpha_scale - dms.initial_alpha_offset
    if dms.alpha_per == "layer":
        logits = logits[..., :1].expand_as(logits)
    return logits
