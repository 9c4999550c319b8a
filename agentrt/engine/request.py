"""`Request`: one unit of work for one session, with every per-request field typed.

The scheduler reads `pending`, `decode_phase` and `finished`; the engine owns the rest.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from agentrt.engine.sampling import SamplingParams
    from agentrt.engine.session import Session

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """Tokens to feed into one session, then optionally sampling until a stop."""

    session: Session  # the session it feeds (opaque to the scheduler)
    pending: list[int]  # token ids still to feed
    generate: bool  # sample after the last pending token
    max_new_tokens: int = 0
    rid: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    decode_phase: bool = False  # True once the prompt is fed and tokens are being generated
    params: SamplingParams | None = field(default=None, repr=False)  # generate requests only
    stops: frozenset[int] = field(default=frozenset(), repr=False)  # token ids that end it
    out: collections.deque[int] = field(default_factory=collections.deque, repr=False)
    lead: int | None = field(default=None, repr=False)  # the session's unfed sampled token
    fed: int = 0  # tokens of this request the cache has taken so far
    logits: torch.Tensor | None = field(default=None, repr=False)  # [V] after a prefill

    def __repr__(self) -> str:  # never log token ids or text
        return (
            f"Request(rid={self.rid}, pending={len(self.pending)} tokens, generate={self.generate}, "
            f"generated={len(self.generated)}, finished={self.finished})"
        )
