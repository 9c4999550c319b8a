"""Activation recomputation for the training forward: a scoped swap of every layer's MLP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class RecomputedMLP(nn.Module):
    """Runs `inner` under non-reentrant activation checkpointing (recomputed in the backward)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """inner(x) for x [B, T, hidden], keeping only x for the backward."""
        return checkpoint(self.inner, x, use_reentrant=False)


@contextmanager
def recomputed_mlps(hf_model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside the block every decoder layer's MLP recomputes its activations; restored after.

    The MLPs hold most activation memory (intermediate size ≈ 3–4× hidden). Attention is
    not recomputed: its dense [B, H, T, T] mask is built inside the shared training forward.
    """
    if not enabled:
        yield
        return
    layers = list(hf_model.model.layers)
    originals = [layer.mlp for layer in layers]
    try:
        for layer, mlp in zip(layers, originals, strict=True):
            layer.mlp = RecomputedMLP(mlp)
        yield
    finally:
        for layer, mlp in zip(layers, originals, strict=True):
            layer.mlp = mlp
