"""Which Hugging Face decoders DMS can serve, and the shape facts the forward needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrt.errors import ModelLoadError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class ArchSpec:
    """Shape facts of a Llama-family decoder, read once from the HF config and modules."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    has_qk_norm: bool
    max_positions: int

    @property
    def group_size(self) -> int:
        """g = H_q / H_kv, query heads per KV head."""
        return self.num_heads // self.num_kv_heads


def check_supported(hf_config: Any) -> list[str]:
    """Every reason this config cannot be served (empty when it can)."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return [
            f"architecture {model_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        ]
    problems = []
    layer_types = getattr(hf_config, "layer_types", None) or []
    sliding = [i for i, t in enumerate(layer_types) if t != "full_attention"]
    if sliding:
        problems.append(
            f"{model_type}: layers {sliding[:8]} use {layer_types[sliding[0]]!r}; "
            "sliding-window layers are not supported"
        )
    window = getattr(hf_config, "sliding_window", None)
    use_window = getattr(hf_config, "use_sliding_window", model_type == "mistral")
    max_pos = getattr(hf_config, "max_position_embeddings", None) or 0
    if use_window and window is not None and window < max_pos and not sliding:
        problems.append(
            f"{model_type}: sliding_window={window} < max_position_embeddings={max_pos}; "
            "sliding-window attention is not supported (set sliding_window to null)"
        )
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "kv_lora_rank"):
        if getattr(hf_config, key, None):
            problems.append(
                f"{model_type}: {key}={getattr(hf_config, key)} (MoE/MLA) is not supported"
            )
    return problems


def arch_spec(hf_model: Any) -> ArchSpec:
    """Validate an HF causal LM and read its shapes; ModelLoadError names what is unsupported."""
    cfg = hf_model.config
    problems = check_supported(cfg)
    if problems:
        raise ModelLoadError(
            "; ".join(problems), hint="agentrt serves Llama, Mistral, Qwen2 and Qwen3 decoders"
        )
    attn = hf_model.model.layers[0].self_attn
    head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    num_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    return ArchSpec(
        model_type=cfg.model_type,
        num_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        num_heads=cfg.num_attention_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        vocab_size=cfg.vocab_size,
        has_qk_norm=hasattr(attn, "q_norm"),
        max_positions=getattr(cfg, "max_position_embeddings", 0) or 0,
    )
