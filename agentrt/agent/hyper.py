"""Hyper-scaling in the agent loop: every model turn samples N chains and continues with the vote.

`generation.samples: N` (or `auto`), `generation.vote` and `generation.answer_pattern` in a
task file turn the loop's decode step into `ParallelDecoder`: the turn's prompt is
prefilled once, N copy-on-write forks decode together, and the winning chain becomes
the conversation's continuation. Each turn's chains (answers, KV bytes) are kept for the
run's JSONL record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentrt.engine.vote import VoteSpec

if TYPE_CHECKING:
    from agentrt.engine import SamplingParams
    from agentrt.engine.hyper import ParallelResult


@dataclass(frozen=True)
class HyperSpec:
    """The task file's `generation.samples / vote / answer_pattern`."""

    samples: int | str  # chains per model turn, or "auto" (the most that fit the KV budget)
    vote: VoteSpec = field(default_factory=VoteSpec)


class ParallelDecoder:
    """A decode step (agent loop `Decoder`) that samples N chains and continues with the winner."""

    def __init__(self, spec: HyperSpec) -> None:
        self.spec = spec
        self.results: list[ParallelResult] = []  # one per model turn since the last `clear`

    def __call__(self, session: Any, params: SamplingParams) -> list[int]:
        """Run the N chains of one turn; the session now holds the winning chain (its ids).

        A list, not an iterator: the loop knows the whole turn is in the cache already, so a
        stop mid-turn keeps it (nothing is fed twice or lost).
        """
        res = session.sample_parallel(
            self.spec.samples,
            params=params,
            vote=self.spec.vote.vote,
            answer_pattern=self.spec.vote.answer_pattern,
            keep="winner",
        )
        self.results.append(res)
        return list(res.chains[res.winner].token_ids)

    def clear(self) -> None:
        """Forget the turns recorded so far (a new input starts)."""
        self.results.clear()

    def record(self) -> dict[str, Any] | None:
        """The last turn's chains and vote for a JSONL record (texts left out), or None."""
        if not self.results:
            return None
        last = self.results[-1].as_dict()
        for chain in last["chains"]:
            chain.pop("text", None)
        return {**last, "turns": len(self.results)}


__all__ = ["HyperSpec", "ParallelDecoder"]
