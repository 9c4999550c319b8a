"""Admission by compressed bytes: plan which idle sessions leave the pool so a step fits.

`MemoryPlanner.reserve` is what the scheduler calls while it builds a plan. It changes
nothing: it counts free blocks as if the swaps it already chose had run, and returns a
`Reservation` naming the swaps its item needs (or None when the item cannot fit). The
engine runs the swaps of the finished plan before the forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrt.engine.scheduler import Reservation
from agentrt.errors import SessionError

if TYPE_CHECKING:
    from agentrt.dms.kv_pool import KVPool
    from agentrt.engine.registry import SessionRegistry
    from agentrt.engine.request import Request
    from agentrt.engine.session import Session
    from agentrt.engine.swap import SwapManager


class MemoryPlanner:
    """Free-block accounting for one plan; victims are least recently used idle sessions."""

    def __init__(self, pool: KVPool, registry: SessionRegistry, swap: SwapManager) -> None:
        self.pool = pool
        self.registry = registry
        self.swap = swap
        self.free = pool.num_free  # free blocks once the chosen swaps have run
        self.protected: set[str] = set()  # sessions of this plan: never victims
        self.victims: list[Session] = []

    def reserve(self, request: Request, n: int) -> Reservation | None:
        """Room for `n` more tokens of the request's session, or None (nothing is changed)."""
        return self.reserve_session(request.session, n)

    def reserve_session(self, session: Session, n: int) -> Reservation | None:
        """Room for `session` to be resident and take `n` more tokens, or None."""
        self.protected.add(session.id)
        spec = self.pool.spec
        if session.cache is not None:
            need, swap_in = session.cache.blocks_needed(n), ()
        elif session.swapped is not None:
            lens = session.swapped.lens
            need = spec.blocks_for_streams(lens) + spec.blocks_to_grow(lens, n)
            swap_in = (session,)
        else:
            raise SessionError(f"session {session.name!r} has no KV state (closed or lost)")
        out = self.victims_for(need)
        if out is None:
            return None
        self.victims.extend(out)
        self.free += sum(v.cache.blocks_exclusive for v in out) - need
        return Reservation(blocks=need, swap_out=tuple(out), swap_in=swap_in)

    def victims_for(self, need: int) -> list[Session] | None:
        """Idle sessions whose swap-out frees enough blocks (LRU first), or None."""
        chosen: list[Session] = []
        free = self.free
        if free >= need:
            return chosen
        taken = self.protected | {v.id for v in self.victims}
        for s in sorted(self.registry.evictable(taken), key=lambda s: s.last_used):
            chosen.append(s)
            free += s.cache.blocks_exclusive
            if free >= need:
                return chosen
        return None
