"""A Llama whose head_dim (8) is below the Triton tiles is served on the torch reference path."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from agentrt import Engine
from agentrt.dms import DMSConfig, DMSModel, add_adapters


def _head_dim_8_config() -> LlamaConfig:
    """Hidden 64 over 8 heads: head_dim 8, below the Triton tiles' 16 (seeds torch's RNG)."""
    torch.manual_seed(0)
    return LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=256,
    )


def test_head_dim_8_prefills_generates_and_matches_hf() -> None:
    cfg = _head_dim_8_config()
    assert cfg.hidden_size // cfg.num_attention_heads == 8
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    model = DMSModel(hf)  # plain model: eviction off, the reference path must equal HF
    ids = torch.randint(0, 97, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    eng = Engine(model, num_blocks=200, block_size=4)
    try:
        s = eng.new_session()
        logits = s.prefill(ids)
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(logits.reshape(-1)[-want.numel() :], want, atol=1e-4, rtol=1e-4)
        out = list(s.generate(6, temperature=0.0))
        assert len(out) == 6
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)[
            0, len(ids) :
        ].tolist()
        assert out == ref
    finally:
        eng.close()


def test_head_dim_8_serves_with_eviction() -> None:
    cfg = _head_dim_8_config()
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    add_adapters(hf)
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.self_attn.dms_proj_alpha.weight.normal_(0, 0.5)
    model = DMSModel(hf, DMSConfig(window_size=4, initial_alpha_offset=0.0, separate_alpha=True))
    eng = Engine(model, num_blocks=200, block_size=4)
    try:
        s = eng.new_session()
        s.prefill(torch.randint(0, 97, (60,), generator=torch.Generator().manual_seed(2)).tolist())
        assert len(list(s.generate(5))) == 5
        stats = s.stats()
        assert stats["compression_ratio"] > 1.0, stats
    finally:
        eng.close()
