"""The held-out report: serve each held-out block through the paged cache and compare to the teacher."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from agentrt.dms.lora import lora_disabled
from agentrt.dms.model import DMSModel
from agentrt.dms.retrofit.loss import token_kl, valid_positions
from agentrt.dms.serving import StepItem

TeacherFn = Callable[[torch.Tensor], torch.Tensor]  # ids [1, T] → logits [1, T, V]
EVAL_BLOCK_SIZE = 16  # paged-cache block size used for the report


def expected_compression_ratio(seq_len: int, window: int, cr: float) -> float:
    """Served ratio of a seq_len-token prompt when exactly 1/cr of the older tokens survive.

    The w + 1 newest tokens are always held: kept = min(T, w + 1) + max(0, T − w − 1) / cr.
    """
    kept = min(seq_len, window + 1) + max(0, seq_len - window - 1) / cr
    return seq_len / kept


def serve_block(
    model: DMSModel, ids: torch.Tensor, block_size: int = EVAL_BLOCK_SIZE
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Prefill ids [T] into a fresh paged cache; returns (logits [T, V], cache.stats())."""
    spec = model.cache_spec(block_size)
    streams = spec.num_layers * spec.num_kv_heads
    pool = model.make_pool(
        num_blocks=streams * math.ceil(ids.numel() / block_size), block_size=block_size
    )
    cache = model.new_cache(pool)
    try:
        (logits,) = model.step([StepItem(cache, ids.to(model.device), all_logits=True)])
        return logits, cache.stats()
    finally:
        cache.free()


@torch.no_grad()
def evaluate_heldout(
    model: DMSModel,
    teacher_logits: TeacherFn,
    blocks: torch.Tensor,
    eos_id: int | None,
) -> dict[str, Any]:
    """Serve held-out blocks [M, T] one session each; compression ratio and KL to the teacher.

    compression_ratio = Σ tokens·streams / Σ slots held over all blocks (window included),
    kl_to_teacher = mean KL(served student ‖ dense teacher) over non-EOS input positions.
    """
    if blocks.shape[0] == 0:
        return {"blocks": 0, "tokens": 0, "compression_ratio": None, "kl_to_teacher": None}
    streams = model.arch.num_layers * model.arch.num_kv_heads
    token_streams = 0
    slots = 0
    layer_tokens = torch.zeros(model.arch.num_layers, dtype=torch.float64)
    layer_slots = torch.zeros(model.arch.num_layers, dtype=torch.float64)
    kl_sum = 0.0
    kl_count = 0
    per_block = []
    for ids in blocks:
        logits, stats = serve_block(model, ids)
        token_streams += stats["tokens"] * streams
        slots += stats["slots"]
        held = torch.tensor(stats["slots_per_layer_head"], dtype=torch.float64)  # [L, H_kv]
        layer_slots += held.sum(1)
        layer_tokens += stats["tokens"] * model.arch.num_kv_heads
        per_block.append(stats["compression_ratio"])
        reference = teacher_logits(ids[None].to(model.device))[0]  # [T, V]
        kl = token_kl(logits[None].float(), reference[None].float())[0]  # [T]
        valid = valid_positions(ids.to(kl.device), eos_id)
        kl_sum += float(kl[valid].sum())
        kl_count += int(valid.sum())
    return {
        "blocks": int(blocks.shape[0]),
        "tokens": int(blocks.numel()),
        "compression_ratio": token_streams / max(slots, 1),
        "compression_ratio_per_block": per_block,
        "compression_ratio_per_layer": (layer_tokens / layer_slots.clamp(min=1)).tolist(),
        "kl_to_teacher": kl_sum / max(kl_count, 1),
    }


def dense_teacher(model: DMSModel) -> TeacherFn:
    """Teacher logits from `model` itself with eviction (and any attached LoRA) off: the base."""

    def run(ids: torch.Tensor) -> torch.Tensor:
        """Dense logits [B, T, V] for ids [B, T]."""
        with lora_disabled(model.hf):
            return model.forward_train(ids, noise_seed=None, teacher=True).logits

    return run
