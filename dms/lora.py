"""LoRA on the attention projections: the small trainable delta beside the DMS adapters.

When adapters alone cannot keep a small model close to its dense self at a high compression
ratio, a low-rank delta ΔW = scale · B A on q/k/v/o lets the attention adapt to the tokens
DMS removes. In training the delta lives on each projection as two parameters
(`<proj>.dms_lora_a` [r, in], `<proj>.dms_lora_b` [out, r], B zero-initialised so training
starts from the base model) and a forward hook adds `scale · x Aᵀ Bᵀ`; `lora_disabled`
switches the hooks off for the dense teacher. For serving, `merge_lora` folds the delta into
the base weights once, so every serving path (CPU and Triton kernels alike) runs unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from agentrt.dms.adapters import LORA_MARKER

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_OFF = "_dms_lora_off"


def is_lora_name(name: str) -> bool:
    """True for a LoRA tensor name (`….{q,k,v,o}_proj.dms_lora_{a,b}`)."""
    return LORA_MARKER in name


def lora_info(hf_model: nn.Module) -> dict[str, Any] | None:
    """{"rank", "scale", "targets"} of the LoRA attached to the model, None when none is."""
    attn = hf_model.model.layers[0].self_attn
    proj = getattr(attn, TARGETS[0], None)
    if proj is None or not hasattr(proj, "dms_lora_a"):
        return None
    return {
        "rank": int(proj.dms_lora_a.shape[0]),
        "scale": float(proj._dms_lora_scale),
        "targets": list(TARGETS),
    }


def _hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
    """Forward hook: output + scale · x Aᵀ Bᵀ (skipped while the LoRA is switched off)."""
    if getattr(module, _OFF, False):
        return output
    x = inputs[0].to(module.dms_lora_a.dtype)
    delta = (x @ module.dms_lora_a.t()) @ module.dms_lora_b.t()
    return output + (module._dms_lora_scale * delta).to(output.dtype)


def attach_lora(hf_model: nn.Module, rank: int, scale: float, seed: int = 0) -> None:
    """Add trainable LoRA (A random, B zero: the model is unchanged at first) to q/k/v/o."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be ≥ 1, got {rank}")
    gen = torch.Generator().manual_seed(int(seed))
    for layer in hf_model.model.layers:
        for name in TARGETS:
            proj = getattr(layer.self_attn, name)
            if hasattr(proj, "dms_lora_a"):
                raise ValueError(f"LoRA is already attached to {name}")
            out_f, in_f = proj.weight.shape
            bound = 1.0 / math.sqrt(in_f)  # kaiming-uniform(a=√5), as nn.Linear and PEFT use
            a = (torch.rand(rank, in_f, generator=gen) * 2 - 1) * bound
            ref = proj.weight
            proj.dms_lora_a = nn.Parameter(a.to(device=ref.device, dtype=torch.float32))
            proj.dms_lora_b = nn.Parameter(
                torch.zeros(out_f, rank, device=ref.device, dtype=torch.float32)
            )
            proj._dms_lora_scale = float(scale)
            proj.register_forward_hook(_hook)


@contextlib.contextmanager
def lora_disabled(hf_model: nn.Module) -> Iterator[None]:
    """Within the block the attached LoRA adds nothing (the base model: the dense teacher)."""
    projs = [
        getattr(layer.self_attn, name)
        for layer in hf_model.model.layers
        for name in TARGETS
        if hasattr(getattr(layer.self_attn, name), "dms_lora_a")
    ]
    for proj in projs:
        setattr(proj, _OFF, True)
    try:
        yield
    finally:
        for proj in projs:
            setattr(proj, _OFF, False)


def split_lora(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(DMS adapter tensors, LoRA tensors) of an adapter file's mapping."""
    lora = {k: v for k, v in tensors.items() if is_lora_name(k)}
    return {k: v for k, v in tensors.items() if k not in lora}, lora


def lora_problems(hf_model: nn.Module, tensors: dict[str, torch.Tensor], rank: int) -> list[str]:
    """What keeps LoRA tensors from fitting the model: missing, unexpected or mis-shaped names."""
    expected: dict[str, tuple[int, int]] = {}
    for i, layer in enumerate(hf_model.model.layers):
        for name in TARGETS:
            out_f, in_f = getattr(layer.self_attn, name).weight.shape
            stem = f"model.layers.{i}.self_attn.{name}.{LORA_MARKER}"
            expected[stem + "a"] = (rank, in_f)
            expected[stem + "b"] = (out_f, rank)
    problems = [f"missing {k}" for k in expected if k not in tensors][:4]
    problems += [f"unexpected {k}" for k in tensors if k not in expected][:4]
    problems += [
        f"{k} {tuple(t.shape)} (expected {expected[k]})"
        for k, t in tensors.items()
        if k in expected and tuple(t.shape) != expected[k]
    ][:4]
    return problems


@torch.no_grad()
def merge_lora(hf_model: nn.Module, tensors: dict[str, torch.Tensor], scale: float) -> str:
    """Fold scale · B A into each projection's weight in place; returns the delta's SHA-256."""
    digest = hashlib.sha256(f"scale={scale!r}".encode())
    for i, layer in enumerate(hf_model.model.layers):
        for name in TARGETS:
            proj = getattr(layer.self_attn, name)
            stem = f"model.layers.{i}.self_attn.{name}.{LORA_MARKER}"
            a, b = tensors[stem + "a"].float(), tensors[stem + "b"].float()
            for t in (a, b):
                digest.update(t.contiguous().numpy().tobytes())
            delta = (b @ a) * scale
            proj.weight.add_(delta.to(device=proj.weight.device, dtype=proj.weight.dtype))
    return digest.hexdigest()
