"""Continuous-batching scheduler: which sessions feed which tokens in the next engine step.

It never touches tensors or models: it sees requests as token-id lists and asks the
engine, through one narrow callback, whether a session's tokens fit in the KV pool.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentrt.errors import ConfigError


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


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """A unit of work for one session: tokens to feed, then optionally sampling."""

    session: Any  # agentrt.session.Session (opaque to the scheduler)
    pending: list[int]  # token ids still to feed
    generate: bool  # sample after the last pending token
    max_new_tokens: int = 0
    rid: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    decode_phase: bool = False  # True once the prompt is fed and tokens are being generated
    payload: dict = field(default_factory=dict, repr=False)  # engine-side per-request state

    def __repr__(self) -> str:  # never log token ids or text
        return (
            f"Request(rid={self.rid}, pending={len(self.pending)} tokens, generate={self.generate}, "
            f"generated={len(self.generated)}, finished={self.finished})"
        )


@dataclass
class PlanItem:
    """One session's share of a step."""

    request: Request
    tokens: list[int]
    completes_feed: bool  # the request's pending tokens are all fed after this step


@dataclass
class StepPlan:
    """What the next engine step runs; the runner gets nothing else."""

    items: list[PlanItem] = field(default_factory=list)
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    deferred: list[Request] = field(default_factory=list)  # did not fit in memory this step


# reserve(request, n_tokens) -> True if the session's cache can take n more tokens now
ReserveFn = Callable[[Request, int], bool]


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

    def has_work(self) -> bool:
        """True while any request has tokens to feed."""
        return any(r.pending and not r.finished for r in self.waiting)

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
            if not reserve(req, n):
                plan.deferred.append(req)
                continue
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
