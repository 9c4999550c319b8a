"""The one place where database driver errors become `AgentRTError`s; URL parsing and redaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from agentrt.errors import DatabaseError, SessionError
from agentrt.sessions.redact import redact_url, scrub

UPGRADE_COMMAND = "agentrt db upgrade"

_BUSY_MARKERS = ("database is locked", "database table is locked", "could not obtain lock")
_MISSING_TABLE_MARKERS = ("no such table", "undefinedtable")


def parse_url(url: str | URL) -> URL:
    """`url` as a SQLAlchemy URL; an unparseable one raises `DatabaseError` (redacted)."""
    if isinstance(url, URL):
        return url
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(
            f"cannot parse the database URL {redact_url(url)!r}",
            hint="use sqlite:///PATH or a SQLAlchemy URL such as postgresql+psycopg://USER@HOST/DB",
        ) from exc


def driver_message(exc: DBAPIError) -> str:
    """First line of the driver's own message (no SQL, no parameters)."""
    orig = exc.orig if exc.orig is not None else exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


@contextmanager
def translate_errors(action: str, *, conflict: str | None = None) -> Iterator[None]:
    """Re-raise driver errors from the block as `SessionError`/`DatabaseError`.

    `action` completes "while ..." in the message ("creating session 'x'"); `conflict`,
    when given, is the whole message for a constraint violation (duplicate name, ...).
    Errors that are not driver errors pass through unchanged: bugs keep their traceback.
    """
    try:
        yield
    except IntegrityError as exc:
        message = conflict or f"{action} conflicts with existing data: {driver_message(exc)}"
        raise SessionError(message) from exc
    except OperationalError as exc:
        raise _database_error(action, exc) from exc
    except DBAPIError as exc:
        raise _database_error(action, exc) from exc


def _database_error(action: str, exc: DBAPIError) -> DatabaseError:
    text = driver_message(exc)
    lowered = text.lower() + " " + type(exc.orig).__name__.lower()
    if any(marker in lowered for marker in _BUSY_MARKERS):
        return DatabaseError(
            f"the database stayed locked by another process while {action}",
            hint="retry; if it persists, look for a stuck agentrt process using the same database",
        )
    if any(marker in lowered for marker in _MISSING_TABLE_MARKERS):
        return DatabaseError(
            f"the catalog tables are missing while {action} ({text})",
            hint=f"run `{UPGRADE_COMMAND}` to create or migrate them",
        )
    return DatabaseError(
        f"database error while {action}: {text}",
        hint="check that the database is reachable and writable",
    )


__all__ = [
    "UPGRADE_COMMAND",
    "driver_message",
    "parse_url",
    "redact_url",
    "scrub",
    "translate_errors",
]
