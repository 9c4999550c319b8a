"""TOVAPolicy: evict the slots the newest query attends to least."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentrt.dms.policies._base import ScorePolicy, int_problem, raise_problems
from agentrt.dms.policies._stream import Stream, group_attention, lowest_slots
from agentrt.dms.session_cache import SessionCache


@dataclass(frozen=True)
class TOVAPolicy(ScorePolicy):
    """TOVA (Oren et al. 2024, arXiv 2401.06104): keep the `budget` slots with the highest
    attention weight from the step's last query.

    Every token is written (δ = 0); after each layer, a stream holding n > budget slots
    drops its n − budget lowest slots, scored by the softmax weights of the step's last
    query averaged over the KV head's query group (ties: the older token goes). The paper
    averages over all heads of a layer; per KV head suits per-stream caches. The newest
    token is not protected, as in the paper.

    Prefill chunks: one eviction per chunk with the chunk's last query. Inside the chunk,
    queries attend to the kept slots ∪ the causal chunk (up to budget + T − 1 keys); token
    by token (chunks of 1) this is exactly TOVA's per-step rule.

    Cost per layer and step: O(H_q · n · d) for the scores + O(n log n) per stream.

    budget: slots per stream (≥ 1).
    """

    name: str = field(default="tova", init=False)
    window: int = field(default=0, init=False)  # nothing is marked; the ring stays trivial

    def __post_init__(self) -> None:
        raise_problems("tova", [int_problem("budget", self.budget, 1)])

    def drop(
        self,
        cache: SessionCache,
        layer: int,
        head: int,
        stream: Stream,
        q: torch.Tensor,
        scale: float,
    ) -> list[int]:
        """The n − budget slots least attended by the last query q[-1] [G, d] (none if n ≤ budget)."""
        excess = stream.positions.numel() - self.budget
        if excess <= 0:
            return []
        last = stream.positions.max()[None]  # the step's last token is always written
        weights = group_attention(q[-1:], stream.keys, stream.positions, last, scale)[0]  # [n]
        return lowest_slots(weights, stream.positions, excess)
