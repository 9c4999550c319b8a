"""Continuous-batching scheduler: which sessions feed which tokens in the next engine step.

It never touches tensors or models, and it changes nothing outside its queue: it sees
requests as token-id lists and asks one narrow callback, `reserve(request, n_tokens)`,
whether a session's tokens fit. The answer is a `Reservation` (the blocks it holds and
the swaps that make room, which the engine runs before the forward) or None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentrt.engine.request import Request
from agentrt.errors import ConfigError

if TYPE_CHECKING:
    from agentrt.engine.session import Session


@dataclass(frozen=True)
class SchedulerConfig:
    """Per-step token budgets; prefill is chunked so decoders are never starved."""

    max_tokens_per_step: int = 2048
    prefill_chunk: int = 512  # most prefill tokens one session feeds in one step
    max_prefill_tokens_per_step: int = 1024
    max_sessions_per_step: int = 64

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in vars(self).items() if not isinstance(v, int) or v < 1]
        if bad:
            raise ConfigError("scheduler settings must be integers ≥ 1: " + ", ".join(bad))


@dataclass(frozen=True)
class Reservation:
    """Room for one plan item: pool blocks held for it and the swaps that free them."""

    blocks: int = 0  # pool blocks this item may take (appends + copy-on-write)
    swap_out: tuple[Session, ...] = ()  # idle sessions to move out of the pool first
    swap_in: tuple[Session, ...] = ()  # the item's own session, when it is swapped out


@dataclass
class PlanItem:
    """One session's share of a step."""

    request: Request
    tokens: list[int]
    completes_feed: bool  # the request's pending tokens are all fed after this step


@dataclass
class StepPlan:
    """What the next engine step runs, as data: swaps first, then one forward over `items`."""

    items: list[PlanItem] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    deferred: list[Request] = field(default_factory=list)  # did not fit in memory this step
    swap_out: list[Session] = field(default_factory=list)  # sessions to swap out before the forward
    swap_in: list[Session] = field(default_factory=list)  # planned sessions to bring back first


# reserve(request, n_tokens) -> a Reservation when the session can take n more tokens, else None
ReserveFn = Callable[[Request, int], "Reservation | bool | None"]


class Scheduler:
    """Decode tokens first (decoders rotate when capped), then prefill chunks in FIFO order.

    While a prefill waits it always gets a session slot, so neither side can starve the other.
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config or SchedulerConfig()
        self.waiting: list[Request] = []
        self._turn = 0  # rotation offset among decoders

    def add(self, request: Request) -> None:
        """Queue a request (one active request per session; the engine enforces it)."""
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Forget a request (finished or cancelled)."""
        if request in self.waiting:
            self.waiting.remove(request)

    def schedule(self, reserve: ReserveFn) -> StepPlan:
        """Pick the next step's items: every decode token, then prefill chunks, within budgets."""
        cfg = self.config
        plan = StepPlan()
        budget = cfg.max_tokens_per_step
        prefill_budget = cfg.max_prefill_tokens_per_step
        ready = [r for r in self.waiting if r.pending and not r.finished]
        decodes = [r for r in ready if r.decode_phase]
        prefills = [r for r in ready if not r.decode_phase]
        if decodes:  # rotate, so decoders beyond the caps take turns instead of starving
            k = self._turn % len(decodes)
            decodes = decodes[k:] + decodes[:k]
        self._turn += 1
        # while a prefill waits, decoders leave it one session slot and one token of budget
        hold = 1 if prefills and cfg.max_sessions_per_step > 1 and budget > 1 else 0
        decodes = decodes[: cfg.max_sessions_per_step - hold][: budget - hold]
        for req in decodes + prefills:
            if len(plan.items) >= cfg.max_sessions_per_step or budget <= 0:
                break
            if req.decode_phase:
                n = 1
            else:
                n = min(len(req.pending), cfg.prefill_chunk, budget, prefill_budget)
                if n <= 0:
                    continue
            room = reserve(req, n)
            if room is None or room is False:
                plan.deferred.append(req)
                continue
            if isinstance(room, Reservation):
                plan.swap_out.extend(room.swap_out)
                plan.swap_in.extend(room.swap_in)
            tokens = req.pending[:n]
            plan.items.append(PlanItem(req, tokens, completes_feed=n == len(req.pending)))
            budget -= n
            if req.decode_phase:
                plan.num_decode_tokens += n
            else:
                plan.num_prefill_tokens += n
                prefill_budget -= n
        return plan

    def postprocess(self, plan: StepPlan) -> None:
        """Drop the fed tokens from each request after the step ran."""
        for item in plan.items:
            del item.request.pending[: len(item.tokens)]
