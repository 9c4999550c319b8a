"""SlidingWindowPolicy: keep the last `budget` tokens of every stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from agentrt.dms.policies._base import int_problem, raise_problems

if TYPE_CHECKING:
    from agentrt.dms.serving import StepItem


@dataclass(frozen=True)
class SlidingWindowPolicy:
    """Window attention: the last `budget` tokens (the baseline of Xiao et al. 2023, arXiv 2309.17453).

    Written as DMS decisions: every token is marked and the window is w = budget − 1, so a
    query at position i sees exactly the keys i − budget + 1 … i, within a prefill chunk too,
    and every stream holds min(tokens, budget) slots after each step.

    budget: slots per stream (≥ 1).
    """

    budget: int
    name: str = field(default="window", init=False)
    window: int = field(default=0, init=False)  # w = budget − 1, set in __post_init__

    def __post_init__(self) -> None:
        raise_problems("window", [int_problem("budget", self.budget, 1)])
        object.__setattr__(self, "window", self.budget - 1)

    def decide(self, layer: int, positions: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """δ = 1 [N, H_kv]: every token is marked and leaves after w more queries."""
        return torch.ones_like(decisions)

    def after_layer(
        self, layer: int, items: list[StepItem], q: torch.Tensor, scale: float, cu: list[int]
    ) -> None:
        """Nothing to do after attention: the DMS rule already evicts."""
