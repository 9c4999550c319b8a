"""Admission by compressed bytes: plan which idle sessions leave the pool so a step fits.

`MemoryPlanner.reserve` is what the scheduler calls while it builds a plan. It changes
nothing: it counts free blocks as if the swaps it already chose had run, and returns a
`Reservation` naming the swaps its item needs (or None when the item cannot fit). The
engine runs the swaps of the finished plan before the forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentrt.engine.scheduler import Reservation
from agentrt.errors import BudgetError, SessionError

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
        need = blocks_to_run(self.pool, session, n)
        swap_in = (session,) if session.cache is None else ()
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


def blocks_to_run(pool: KVPool, session: Session, n: int) -> int:
    """Free blocks `session` needs to take `n` more tokens: growth only when resident, its
    whole cache plus the growth when swapped out (the one count planning and errors share)."""
    if session.cache is not None:
        return session.cache.blocks_needed(n)
    if session.swapped is not None:
        lens = session.swapped.lens
        return pool.spec.blocks_for_streams(lens) + pool.spec.blocks_to_grow(lens, n)
    raise SessionError(f"session {session.name!r} has no KV state (closed or lost)")


def pool_holders(pool: KVPool, registry: SessionRegistry, session: Session) -> str:
    """Who holds the pool's blocks, largest first: `session` itself, pinned, busy, idle ones."""
    rows = []
    for s in registry.values():
        if s.cache is None:
            continue
        role = (
            "this session"
            if s.id == session.id
            else "pinned"
            if s.pinned
            else "busy"
            if s.active is not None
            else "idle"
        )
        rows.append((s.cache.blocks_held, f"{s.name!r} ({role}) {s.cache.blocks_held}"))
    rows.sort(key=lambda r: -r[0])
    shown = [text for _, text in rows[:5]]
    if len(rows) > 5:
        shown.append(f"{len(rows) - 5} more sessions {sum(n for n, _ in rows[5:])}")
    shown.append(f"free {pool.num_free}")
    return "blocks held: " + ", ".join(shown)


def budget_error(
    pool: KVPool, registry: SessionRegistry, session: Session, need: int, what: str, extra: str = ""
) -> BudgetError:
    """The BudgetError for `session` needing `need` blocks for `what`, naming who holds the pool."""
    own = session.cache.blocks_held if session.cache is not None else 0
    total = pool.num_blocks
    if own + need > total:
        hint = (
            f"this session alone would need {own + need} of the pool's {total} blocks: raise "
            "kv_budget, or start a new session (summarise this one into it)"
        )
    elif own * 2 >= total:
        hint = (
            f"this session itself holds {own} of the pool's {total} blocks: raise kv_budget, or "
            "start a new session; unpinning or closing others frees the rest"
        )
    else:
        hint = "unpin or close other sessions, or raise kv_budget"
    return BudgetError(
        f"session {session.name!r} needs {need} KV blocks "
        f"({need * pool.bytes_per_block} bytes) {what}, but the pool has {total} blocks "
        f"in all and only {pool.num_free} free ({pool_holders(pool, registry, session)})",
        hint=hint + extra,
    )
