"""Builders and drivers shared by the serving-path tests (tiny random models, no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

from agentrt.dms import DMSConfig, DMSModel, add_adapters
from agentrt.dms.serving import StepItem


def tiny_model(
    *,
    flavour: str = "qneuron",
    window: int = 3,
    offset: float = 5.0,
    arch: str = "qwen3",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> DMSModel:
    """A 2-layer GQA model (head_dim 16) with DMS; `offset` steers the eviction rate."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=16384,
    )
    cfg = Qwen3Config(**common) if arch == "qwen3" else LlamaConfig(**common)
    hf = AutoModelForCausalLM.from_config(cfg).eval().to(dtype)
    dms = DMSConfig(
        window_size=window, initial_alpha_offset=offset, separate_alpha=flavour == "adapter"
    )
    if flavour == "adapter":
        add_adapters(hf)
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.self_attn.dms_proj_alpha.weight.normal_(0, 0.02)
    return DMSModel(hf, dms)


def poisoned_pool(model: DMSModel, *, num_blocks: int, block_size: int):
    """A pool whose unwritten K/V are NaN, so reading a slot that was never written shows up."""
    pool = model.make_pool(num_blocks=num_blocks, block_size=block_size)
    pool.kv.fill_(float("nan"))
    return pool


def run_chunks(model: DMSModel, cache, ids: torch.Tensor, sizes: list[int], **kw) -> torch.Tensor:
    """Feed ids [T] in chunks of the given sizes; returns logits [T, V] of every token."""
    out, i = [], 0
    for n in sizes:
        out.append(model.step([StepItem(cache, ids[i : i + n], all_logits=True)], **kw)[0])
        i += n
    assert i == ids.numel(), (i, ids.numel())
    return torch.cat(out)


def kept_plus_window(decisions: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Expected slots per stream [L, H]: tokens older than the window that are unmarked + min(n, w+1).

    decisions: [L, 1, T, H] bool δ from forward_reference over the first n tokens.
    """
    ring = window + 1
    flags = torch.zeros_like(decisions[:, 0, :n])  # [L, n, H]: e_j = δ_{j+1}
    flags[:, : n - 1] = decisions[:, 0, 1:n]
    old = max(0, n - ring)
    kept = (~flags[:, :old]).sum(dim=1)
    return kept + min(n, ring)
