"""The retrofit loss: KL(student ‖ teacher) per token at T = 1 plus a one-sided compression hinge.

Follows NVIDIA's recipe (dms-reference.md §4.2): the distillation term is
Σ_v p_s(v)·(log p_s(v) − log p_t(v)) in fp32, averaged over positions whose *input* token is
not EOS (no label shift: both models are compared at the same position); the compression
term is mean_b max(0, target − fraction evicted in sequence b), where the fraction is the
mean of the straight-through hard decisions over layers, KV heads and all positions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

KL_CHUNK_ROWS = 2048  # positions per fp32 log-softmax chunk (bounds the loss's peak memory)


def noise_seed(seed: int, step: int, micro: int) -> int:
    """Gumbel-noise seed of one micro-batch: a hash of (seed, step, micro), so resumes replay it."""
    digest = hashlib.sha256(f"{seed}_{step}_{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**32 - 1)


def valid_positions(input_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """Positions that count in the distillation loss [B, T] bool: every input but EOS."""
    if eos_id is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return input_ids != eos_id


def _kl_rows(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(student ‖ teacher) per row of logits [N, V] → [N], in fp32."""
    log_s = F.log_softmax(student.float(), dim=-1)
    log_t = F.log_softmax(teacher.float(), dim=-1)
    return (log_s.exp() * (log_s - log_t)).sum(-1)


def token_kl(
    student: torch.Tensor, teacher: torch.Tensor, chunk_rows: int = KL_CHUNK_ROWS
) -> torch.Tensor:
    """Per-token KL(student ‖ teacher) at temperature 1: logits [B, T, V] → [B, T] fp32.

    Rows are processed in chunks; with gradients on, each chunk is recomputed in the
    backward instead of keeping its fp32 softmax tensors alive.
    """
    shape = student.shape[:-1]
    s = student.reshape(-1, student.shape[-1])
    t = teacher.reshape(-1, teacher.shape[-1]).detach()
    if s.shape[0] <= chunk_rows:
        return _kl_rows(s, t).view(shape)
    parts = []
    for i in range(0, s.shape[0], chunk_rows):
        if s.requires_grad:
            parts.append(
                checkpoint(
                    _kl_rows, s[i : i + chunk_rows], t[i : i + chunk_rows], use_reentrant=False
                )
            )
        else:
            parts.append(_kl_rows(s[i : i + chunk_rows], t[i : i + chunk_rows]))
    return torch.cat(parts).view(shape)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Mean KL(student ‖ teacher) over valid positions: logits [B, T, V], valid [B, T] → scalar."""
    kl = token_kl(student, teacher)
    weight = valid.to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp(min=1)


def hidden_kl(
    student_head: Callable[[torch.Tensor], torch.Tensor],
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    student: torch.Tensor,
    teacher: torch.Tensor,
    valid: torch.Tensor,
    chunk_rows: int = KL_CHUNK_ROWS // 2,
) -> torch.Tensor:
    """`distillation_loss` from last hidden states [B, T, hidden]: heads → logits chunk by chunk.

    Neither model's [B, T, V] logits ever exist: each chunk of rows is projected by its
    model's head (final norm + LM head), compared and dropped; with gradients on, the
    student's chunk is recomputed in the backward.
    """
    s = student.reshape(-1, student.shape[-1])
    t = teacher.reshape(-1, teacher.shape[-1]).detach()
    w = valid.reshape(-1).to(torch.float32)

    def rows(s_rows: torch.Tensor, t_rows: torch.Tensor, w_rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher_head(t_rows)
        return (_kl_rows(student_head(s_rows), t_logits) * w_rows).sum()

    total = student.new_zeros((), dtype=torch.float32)
    for i in range(0, s.shape[0], chunk_rows):
        part = (s[i : i + chunk_rows], t[i : i + chunk_rows], w[i : i + chunk_rows])
        if s.requires_grad:
            total = total + checkpoint(rows, *part, use_reentrant=False)
        else:
            total = total + rows(*part)
    return total / w.sum().clamp(min=1)


def eviction_fractions(decisions: torch.Tensor) -> torch.Tensor:
    """Fraction evicted per sequence: straight-through decisions [L, B, T, H_kv] → [B]."""
    return decisions.float().mean(dim=(0, 2, 3))


def compression_loss(decisions: torch.Tensor, target: float) -> torch.Tensor:
    """One-sided hinge mean_b max(0, target − fraction_b); decisions [L, B, T, H_kv] → scalar."""
    return torch.clamp(target - eviction_fractions(decisions), min=0).mean()
