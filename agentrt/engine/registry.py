"""`SessionRegistry`: the engine's open sessions by id (the one owner of that list)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agentrt.engine.session import Session


class SessionRegistry(Mapping[str, "Session"]):
    """Open sessions keyed by id; the engine adds and removes, others only read."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def __getitem__(self, session_id: str) -> Session:
        return self._by_id[session_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, session: Session) -> None:
        """Register an open session."""
        self._by_id[session.id] = session

    def discard(self, session: Session) -> None:
        """Forget a closed session (idempotent)."""
        self._by_id.pop(session.id, None)

    def names(self) -> list[str]:
        """Names of the open sessions, sorted."""
        return sorted(s.name for s in self._by_id.values())

    def evictable(self, exclude: set[str]) -> list[Session]:
        """Resident, unpinned, idle sessions whose id is not in `exclude`."""
        return [
            s
            for s in self._by_id.values()
            if s.cache is not None and not s.pinned and s.active is None and s.id not in exclude
        ]
