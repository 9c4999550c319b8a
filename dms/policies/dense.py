"""DensePolicy: keep every token (the uncompressed baseline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from agentrt.dms.serving import StepItem


@dataclass(frozen=True)
class DensePolicy:
    """No eviction: δ = 0 everywhere, so every stream keeps all n tokens (full attention).

    The reference point of every comparison (slots = tokens, compression ratio 1).
    """

    name: str = field(default="dense", init=False)
    window: int = field(default=0, init=False)  # irrelevant: nothing is ever marked

    def decide(self, layer: int, positions: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """δ = 0 [N, H_kv]: no token is marked."""
        return torch.zeros_like(decisions)

    def after_layer(
        self, layer: int, items: list[StepItem], q: torch.Tensor, scale: float, cu: list[int]
    ) -> None:
        """Nothing to do after attention."""
