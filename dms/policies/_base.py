"""Shared pieces of the baselines: field validation and the score-based eviction template.

Score-based policies (TOVA, H2O) mark nothing (δ = 0, so the DMS rule keeps every token)
and, after each layer's attention and writes, shrink every stream of every session of the
step back to `budget` slots by dropping its lowest-scoring slots (`ScorePolicy.after_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from agentrt.dms.policies._stream import Stream, evict_slots, read_stream
from agentrt.errors import ConfigError

if TYPE_CHECKING:
    from agentrt.dms.serving import StepItem
    from agentrt.dms.session_cache import SessionCache


def int_problem(key: str, value: object, minimum: int) -> str | None:
    """A message if `value` is not an int ≥ minimum (bools refused), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return f"{key}={value!r} must be an int >= {minimum}"
    return None


def raise_problems(policy: str, problems: list[str | None]) -> None:
    """Raise one ConfigError listing every problem found for `policy` (no-op when none)."""
    found = [p for p in problems if p]
    if found:
        raise ConfigError(
            f"invalid {policy} cache policy: " + "; ".join(found),
            hint="see the policy's docstring in agentrt.dms.policies for the valid ranges",
        )


@dataclass(frozen=True)
class ScorePolicy:
    """Template of the score-based baselines: keep every token, then evict to `budget` per stream.

    Subclasses implement `drop(cache, layer, head, stream, q, scale)`. Cost per layer and
    step: one gather of each stream's keys ([n, d], n ≤ budget + T) and one host sync per
    stream, plus the subclass's scores; plain torch, any device.
    """

    budget: int  # slots per stream (session, layer, KV head) kept after every step

    def decide(self, layer: int, positions: torch.Tensor, decisions: torch.Tensor) -> torch.Tensor:
        """No DMS marks: δ = 0 [N, H_kv] (eviction happens in after_layer)."""
        return torch.zeros_like(decisions)

    def after_layer(
        self, layer: int, items: list[StepItem], q: torch.Tensor, scale: float, cu: list[int]
    ) -> None:
        """Score each stream of each session (q [N, H_q, d] packed by cu) and evict down to budget."""
        for it, start, end in zip(items, cu[:-1], cu[1:], strict=True):
            cache = it.cache
            group = q.shape[1] // cache.num_kv_heads
            for head in range(cache.num_kv_heads):
                stream = read_stream(cache, layer, head)
                q_head = q[start:end, head * group : (head + 1) * group]  # [T, G, d]
                slots = self.drop(cache, layer, head, stream, q_head, scale)
                if slots:
                    evict_slots(cache, layer, head, slots)

    def drop(
        self,
        cache: SessionCache,
        layer: int,
        head: int,
        stream: Stream,
        q: torch.Tensor,
        scale: float,
    ) -> list[int]:
        """Stream slots to evict after this step; q [T, G, d] are the step's queries of the head's group."""
        raise NotImplementedError
