"""H2OPolicy: heavy hitters (accumulated attention) + the most recent tokens."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from agentrt.dms.policies._base import ScorePolicy, int_problem, raise_problems
from agentrt.dms.policies._stream import Stream, group_attention, lowest_slots
from agentrt.dms.session_cache import SessionCache

Scores = tuple[torch.Tensor, torch.Tensor]  # (positions [n] int64 sorted, accumulated [n] float)


@dataclass(frozen=True)
class H2OPolicy(ScorePolicy):
    """H2O (Zhang et al. 2023, arXiv 2306.14048): keep the heavy hitters + the `recent` newest tokens.

    Every slot accumulates the attention mass it received from every query since its token
    arrived (softmax weights averaged over the KV head's query group, its own query
    included). Every token is written (δ = 0); after each layer, a stream holding
    n > budget slots drops the n − budget lowest accumulated scores among the slots
    outside the `recent` newest positions (ties: the older token goes).

    Prefill chunks: every query of the chunk attends to the kept slots ∪ the causal chunk
    and adds its weights; one eviction at the end of the chunk. A whole prompt in one chunk
    is H2O's own prompt rule; chunks of 1 are its per-step decode rule.

    State: per (session, layer, KV head), scores keyed by absolute position (so they follow
    slots through compaction moves), in a WeakKeyDictionary on the policy: entries vanish
    with their SessionCache and are pruned once it is freed. A fork starts with no history
    (its inherited slots score 0). Cost per layer and step: O(T · H_q · n · d) flops and a
    [T, G, n] intermediate per stream, + O(n log n).

    budget: slots per stream (≥ 1). recent: newest tokens always kept (0 ≤ recent ≤ budget).
    """

    recent: int
    name: str = field(default="h2o", init=False)
    window: int = field(default=0, init=False)  # nothing is marked; the ring stays trivial
    _scores: weakref.WeakKeyDictionary[SessionCache, dict[tuple[int, int], Scores]] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        problems = [int_problem("budget", self.budget, 1), int_problem("recent", self.recent, 0)]
        if not any(problems) and self.recent > self.budget:
            problems.append(f"recent={self.recent} must be <= budget={self.budget}")
        raise_problems("h2o", problems)

    def drop(
        self,
        cache: SessionCache,
        layer: int,
        head: int,
        stream: Stream,
        q: torch.Tensor,
        scale: float,
    ) -> list[int]:
        """Accumulate this step's weights of q [T, G, d]; the lowest non-recent slots beyond budget."""
        pos = stream.positions
        last = pos.max()  # the step's last token is always written
        query_pos = torch.arange(int(last) - q.shape[0] + 1, int(last) + 1, device=pos.device)
        added = group_attention(q, stream.keys, pos, query_pos, scale).sum(dim=0)  # [n]
        total = added.to(torch.float64) + self._previous(cache, layer, head, pos)
        excess = pos.numel() - self.budget
        protected = pos > last - self.recent
        slots = lowest_slots(total, pos, excess, protected)
        keep = torch.ones_like(pos, dtype=torch.bool)
        keep[slots] = False
        order = torch.argsort(pos[keep])
        self._scores.setdefault(cache, {})[(layer, head)] = (pos[keep][order], total[keep][order])
        return slots

    def _previous(
        self, cache: SessionCache, layer: int, head: int, pos: torch.Tensor
    ) -> torch.Tensor:
        """Accumulated scores [n] float64 of the tokens at positions pos [n] (0 for unknown ones)."""
        if layer == 0 and head == 0:  # once per step and session: forget freed sessions
            for stale in [c for c in self._scores if c.closed]:
                del self._scores[stale]
        old = self._scores.get(cache, {}).get((layer, head))
        if old is None or old[0].numel() == 0:
            return torch.zeros(pos.shape, dtype=torch.float64, device=pos.device)
        old_pos, old_score = old
        idx = torch.searchsorted(old_pos, pos).clamp(max=old_pos.numel() - 1)
        found = old_pos[idx] == pos
        return torch.where(found, old_score[idx], torch.zeros_like(old_score[idx]))
