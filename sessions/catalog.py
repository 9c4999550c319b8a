"""Opening the session catalog for one command: migrated to head, closed on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from agentrt.errors import SessionError

if TYPE_CHECKING:
    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.store import SessionStore


@contextmanager
def catalog(
    layout: SessionLayout, db_url: str, *, readonly: bool = False
) -> Iterator[SessionStore | None]:
    """The session store at `db_url` (migrated to head), closed on exit.

    With `readonly=True` a SQLite catalog that does not exist yet yields None instead of
    being created, so listing sessions on a fresh machine writes nothing.
    """
    from agentrt.sessions.atomic import ensure_private_dir
    from agentrt.sessions.database import open_catalog, sqlite_path
    from agentrt.sessions.store import SessionStore

    if readonly:
        path = sqlite_path(db_url)
        if path is not None and not path.exists():
            yield None
            return
    else:
        ensure_private_dir(layout.home)
    store = SessionStore(open_catalog(db_url))
    try:
        yield store
    finally:
        store.close()


def require_store(store: SessionStore | None, name: str) -> SessionStore:
    """`store`, or the SessionError an unknown session gets when there is no catalog yet."""
    if store is None:
        raise SessionError(
            f"no session named {name!r} (no sessions saved yet)",
            hint="list sessions with `agentrt sessions ls`",
        )
    return store
