"""`PlacementStore`: which replica of a cluster holds which session, in the catalog.

The router of `agentrt.cluster` is the only writer; `agentrt sessions` and operators read
it. One short transaction per call, driver errors translated in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from agentrt.sessions.db_errors import translate_errors
from agentrt.sessions.models import PlacementRow, utcnow
from agentrt.sessions.records import as_utc


@dataclass(frozen=True)
class Placement:
    """One session's replica, as the catalog records it."""

    session_name: str
    replica: str
    node: str | None
    updated_at: datetime


class PlacementStore:
    """Session → replica rows; reached through `open_placements(db_url)`."""

    def __init__(self, sessionmaker: sessionmaker[Session]) -> None:
        self._sessionmaker = sessionmaker

    def place(self, session_name: str, replica: str, node: str | None = None) -> Placement:
        """Record (or move) a session's placement."""
        with self._tx(f"placing session {session_name!r}") as s:
            row = s.get(PlacementRow, session_name)
            if row is None:
                row = PlacementRow(session_name=session_name, replica=replica, node=node)
                s.add(row)
            else:
                row.replica, row.node, row.updated_at = replica, node, utcnow()
            s.flush()
            return _info(row)

    def get(self, session_name: str) -> Placement | None:
        """A session's placement, or None when it has none."""
        with self._tx(f"reading the placement of {session_name!r}") as s:
            row = s.get(PlacementRow, session_name)
            return None if row is None else _info(row)

    def on_replica(self, replica: str) -> list[Placement]:
        """Every placement on one replica, by session name."""
        query = select(PlacementRow).where(PlacementRow.replica == replica)
        with self._tx(f"reading the placements on {replica!r}") as s:
            return [_info(r) for r in s.scalars(query.order_by(PlacementRow.session_name))]

    def all(self) -> list[Placement]:
        """Every placement, by session name."""
        with self._tx("reading placements") as s:
            query = select(PlacementRow).order_by(PlacementRow.session_name)
            return [_info(r) for r in s.scalars(query)]

    def remove(self, session_name: str) -> None:
        """Forget a session's placement (closed, or lost with its replica)."""
        with self._tx(f"removing the placement of {session_name!r}") as s:
            s.execute(delete(PlacementRow).where(PlacementRow.session_name == session_name))

    def close(self) -> None:
        """Release the database connections."""
        bind = self._sessionmaker.kw.get("bind")
        if bind is not None:
            bind.dispose()

    @contextmanager
    def _tx(self, action: str) -> Iterator[Session]:
        with translate_errors(action), self._sessionmaker.begin() as s:
            yield s


def _info(row: PlacementRow) -> Placement:
    return Placement(row.session_name, row.replica, row.node, as_utc(row.updated_at))


def open_placements(db_url: str) -> PlacementStore:
    """The placement table of the catalog at `db_url` (migrated to head)."""
    from agentrt.sessions.database import open_catalog

    return PlacementStore(open_catalog(db_url))
