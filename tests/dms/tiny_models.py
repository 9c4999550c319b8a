"""Tiny random-weight Llama-family models for the DMS model-core tests (no downloads).

Every builder is deterministic and leaves the global RNG alone: weights are drawn from a
local `torch.Generator`, so a test gets the same model whatever ran before it. Sizes are
small (hidden 64, 2 layers, head_dim 16 — the kernels elsewhere need d ≥ 16) so the whole
DMS model-core suite runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from agentrt.dms import DMSConfig, DMSModel, add_adapters

VOCAB = 97
HEAD_DIM = 16

_COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
)

# name -> (config class, overrides of _COMMON)
ARCHS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "llama-gqa": (LlamaConfig, {"head_dim": HEAD_DIM}),
    "llama-mha": (LlamaConfig, {"head_dim": HEAD_DIM, "num_key_value_heads": 4}),
    "llama-tied": (LlamaConfig, {"head_dim": HEAD_DIM, "tie_word_embeddings": True}),
    "llama3-rope": (
        LlamaConfig,
        {
            "head_dim": HEAD_DIM,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "mistral": (MistralConfig, {"head_dim": HEAD_DIM, "sliding_window": None}),
    "qwen2-bias": (Qwen2Config, {"use_sliding_window": False}),
    "qwen3-qknorm": (Qwen3Config, {"head_dim": HEAD_DIM}),
    "qwen3-mha": (Qwen3Config, {"head_dim": HEAD_DIM, "num_key_value_heads": 4}),
}

ALL_ARCHS = list(ARCHS)
# One arch per family/feature for tests that need not run on all of them.
GQA_ARCHS = ["llama-gqa", "mistral", "qwen2-bias", "qwen3-qknorm"]


def arch_params(names: list[str] | None = None) -> list[Any]:
    """pytest.param per arch name, with the name as id."""
    return [pytest.param(n, id=n) for n in (names or ALL_ARCHS)]


def tiny_config(name: str, **overrides: Any) -> PretrainedConfig:
    """The HF config of a tiny model of arch `name` (see ARCHS)."""
    cls, extra = ARCHS[name]
    return cls(**{**_COMMON, **extra, **overrides})


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    """Redraw every parameter from a local generator: weights N(0, std²), biases N(0, 0.1²),
    norm weights 1 + N(0, 0.1²) (so norms are not identities and bugs in them show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                value = 1.0 + 0.1 * noise
            elif name.endswith(".bias"):
                value = 0.1 * noise
            else:
                value = std * noise
            param.copy_(value.to(param.dtype))
    return model


def tiny_hf(
    name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> torch.nn.Module:
    """A tiny random-weight HF causal LM of arch `name`, in eval mode."""
    cfg = tiny_config(name, **overrides)
    with torch.random.fork_rng(devices=[]):  # HF's own init draws from the global RNG
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return randomize_(model, seed).eval()


def clone(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy (weights included) to perturb without touching the original."""
    return copy.deepcopy(model)


def random_ids(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Token ids [batch, seq] in [1, VOCAB) from a local generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, seq), generator=gen)


def adapter_model(
    name: str = "qwen3-qknorm",
    *,
    dms: DMSConfig | None = None,
    seed: int = 0,
    adapter_std: float | None = 0.1,
    **overrides: Any,
) -> DMSModel:
    """An adapter-flavour DMSModel; adapter_std None keeps the zero init of add_adapters."""
    hf = tiny_hf(name, seed=seed, **overrides)
    model = DMSModel(hf)
    add_adapters(model, dms or DMSConfig(window_size=2, initial_alpha_offset=0.0))
    if adapter_std is not None:
        gen = torch.Generator().manual_seed(seed + 1000)
        with torch.no_grad():
            for layer in hf.model.layers:
                weight = layer.self_attn.dms_proj_alpha.weight
                weight.copy_(adapter_std * torch.randn(weight.shape, generator=gen))
    return model


def decision_rows(model: torch.nn.Module) -> list[int]:
    """Rows of q_proj.weight that hold the q-neuron: head·d + d−1 for heads 0, g, 2g, …"""
    cfg = model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    g = cfg.num_attention_heads // cfg.num_key_value_heads
    return [h * d + d - 1 for h in range(0, cfg.num_attention_heads, g)]


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, atol: float, rtol: float = 0.0):
    """allclose with NaN checks and a message giving max-abs and max-relative error."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(ref).any(), f"{name}: NaN in reference"
    assert not torch.isnan(out).any(), f"{name}: NaN in output"
    err = (ref.double() - out.double()).abs()
    rel = err / ref.double().abs().clamp(min=1e-12)
    assert torch.allclose(out.double(), ref.double(), atol=atol, rtol=rtol), (
        f"{name}: max abs err {err.max().item():.3e}, max rel err {rel.max().item():.3e} "
        f"(atol {atol}, rtol {rtol})"
    )
