"""Eviction decisions from logits: hard threshold at inference, Gumbel-sigmoid in training."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SoftDecisions:
    """Training-time decisions of one layer."""

    u: torch.Tensor  # [B, T, H_kv] (z + ε) / τ, feeds the soft mask log(1 − σ(u))
    hard: torch.Tensor  # [B, T, H_kv] straight-through 0/1 with σ(u)'s gradient


def hard_decisions(logits: torch.Tensor) -> torch.Tensor:
    """Inference decisions δ = 1[z > 0] (bool, same shape as logits)."""
    return logits > 0


def logistic_noise(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """ε = G1 − G2 with G1, G2 ~ Gumbel(0, 1), i.e. standard logistic noise (fp32)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32).clamp_(1e-6, 1 - 1e-6)
    return (torch.log(u) - torch.log1p(-u)).to(device)


def soft_decisions(
    logits: torch.Tensor, noise: torch.Tensor | None, tau: float, alpha_per: str = "head"
) -> SoftDecisions:
    """Gumbel-sigmoid gating with straight-through hard decisions (noise None = deterministic)."""
    z = logits if noise is None else logits + noise
    if alpha_per == "layer":
        z = z[..., :1].expand_as(z)  # head 0's logit and noise for every head
    u = z / tau
    p = torch.sigmoid(u)
    hard = (p > 0.5).to(p.dtype) - p.detach() + p
    return SoftDecisions(u=u, hard=hard)
