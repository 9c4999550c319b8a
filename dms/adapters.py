"""Adapter flavour weights: `dms_proj_alpha_norm` + `dms_proj_alpha` on each attention module."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ADAPTER_MARKER = "dms_proj_alpha"
LORA_MARKER = "dms_lora_"  # the optional LoRA delta (agentrt.dms.lora) travels with them


def is_trained_name(name: str) -> bool:
    """True for a tensor the adapter flavour trains: a DMS adapter or an attached LoRA."""
    return ADAPTER_MARKER in name or LORA_MARKER in name


def has_adapters(hf_model: nn.Module) -> bool:
    """True when every layer carries the adapter modules."""
    return all(hasattr(layer.self_attn, "dms_proj_alpha") for layer in hf_model.model.layers)


def attach_adapters(hf_model: nn.Module) -> None:
    """Add zero-initialised adapters (z = −b at start: nearly no eviction) to every layer."""
    cfg = hf_model.config
    num_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    bias = bool(getattr(cfg, "attention_bias", False))
    for layer in hf_model.model.layers:
        attn = layer.self_attn
        ref = attn.q_proj.weight
        norm_cls = type(layer.input_layernorm)
        norm = norm_cls(cfg.hidden_size, eps=cfg.rms_norm_eps).to(
            device=ref.device, dtype=ref.dtype
        )
        with torch.no_grad():
            norm.weight.fill_(1.0)
        proj = nn.Linear(cfg.hidden_size, num_kv, bias=bias).to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
        attn.dms_proj_alpha_norm = norm
        attn.dms_proj_alpha = proj


def adapter_state(hf_model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under their checkpoint names (`…self_attn.dms_proj_alpha*`, and
    `…self_attn.{q,k,v,o}_proj.dms_lora_{a,b}` when a LoRA is attached)."""
    return {k: v for k, v in hf_model.state_dict().items() if is_trained_name(k)}


def load_adapter_state(hf_model: nn.Module, tensors: dict[str, Any]) -> list[str]:
    """Copy adapter tensors into the model; returns the names that were expected but missing."""
    own = adapter_state(hf_model)
    missing = [name for name in own if name not in tensors]
    params = dict(hf_model.named_parameters())
    with torch.no_grad():
        for name in own:
            if name in tensors:
                params[name].copy_(tensors[name].to(params[name].dtype))
    return missing


def base_parameter_names(hf_model: nn.Module) -> list[str]:
    """Names of every parameter that is not an adapter (the frozen base in adapter training)."""
    return [n for n, _ in hf_model.named_parameters() if not is_trained_name(n)]
