"""StreamingLLMPolicy: attention sinks + a sliding window."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from agentrt.dms.policies._base import int_problem, raise_problems

if TYPE_CHECKING:
    from agentrt.dms.serving import StepItem


@dataclass(frozen=True)
class StreamingLLMPolicy:
    """StreamingLLM (Xiao et al. 2023, arXiv 2309.17453): the first `sinks` tokens forever + a window.

    Written as DMS decisions: δ_t = 0 for t ≤ sinks (tokens 0 … sinks − 1 are never marked)
    and 1 after, with window w = budget − sinks − 1. A query at position i sees the sinks
    and the keys i − (budget − sinks) + 1 … i; every stream holds min(tokens, budget) slots.
    Positions are absolute (keys are cached after RoPE), unlike the paper's in-cache
    re-positioning; this matches how DMS serves.

    budget: slots per stream (> sinks). sinks: attention-sink tokens kept forever (≥ 0).
    """

    budget: int
    sinks: int = 4
    name: str = field(default="streaming", init=False)
    window: int = field(default=0, init=False)  # w = budget − sinks − 1, set in __post_init__

    def __post_init__(self) -> None:
        problems = [int_problem("budget", self.budget, 1), int_problem("sinks", self.sinks, 0)]
        if not any(problems) and self.sinks >= self.budget:
            problems.append(
                f"sinks={self.sinks} must be < budget={self.budget} (the window needs a slot)"
            )
        raise_problems("streaming", problems)
        object.__setattr__(self, "window", self.budget - self.sinks - 1)

    def decide(self, layer: int, positions: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """δ_t = (t > sinks) [N, H_kv] for new tokens at positions t [N]: sinks are never marked."""
        marks = (positions > self.sinks)[:, None].to(decisions.device)
        return marks.expand_as(decisions).contiguous()

    def after_layer(
        self, layer: int, items: list[StepItem], q: torch.Tensor, scale: float, cu: list[int]
    ) -> None:
        """Nothing to do after attention: the DMS rule already evicts."""
