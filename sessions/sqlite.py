"""SQLite specifics of the catalog: owner-only files, pragmas, BEGIN IMMEDIATE, backups.

Every transaction on a SQLite catalog starts with `BEGIN IMMEDIATE` (we take over BEGIN
from the sqlite3 driver), so concurrent writers queue on the busy timeout instead of
failing half-way through a read-then-write. Read-only checks pass the execution option
`BEGIN_MODE_OPTION="DEFERRED"`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL

from agentrt.errors import DatabaseError
from agentrt.sessions.db_errors import parse_url, redact_url

BUSY_TIMEOUT_S = 30.0
BEGIN_MODE_OPTION = "agentrt_sqlite_begin"  # execution option: "IMMEDIATE" (default) | "DEFERRED"


def sqlite_path(url: str | URL) -> Path | None:
    """The file of a SQLite URL, or None (not SQLite, in-memory, or a `file:` URI)."""
    parsed = parse_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    return Path(database).expanduser()


def create_sqlite_file(path: Path) -> None:
    """Create the folder (0700) and the empty database file (0600) when missing."""
    try:
        if not path.parent.is_dir():
            from agentrt.sessions.atomic import ensure_private_dir

            ensure_private_dir(path.parent)  # every folder it creates is 0700, whatever the umask
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(path, 0o600)
    except OSError as exc:
        raise DatabaseError(
            f"cannot create the database file {path}: {exc.strerror or exc}",
            hint="choose a writable location for the agentrt home or database",
        ) from exc


def uncreatable_reason(path: Path) -> str | None:
    """Why `path` could not be created, or None if it could (nothing is created)."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create the database file {path}: {ancestor} is not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create the database file {path}: {ancestor} is not writable"
    return None


def backup_sqlite(conn: Connection, path: Path, revision: str) -> Path:
    """Copy the live database to `<file>.bak-<revision>` (0600) with SQLite's backup API."""
    backup = path.with_name(f"{path.name}.bak-{revision}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak-{revision}-{n}")
        n += 1
    os.close(os.open(backup, os.O_CREAT | os.O_WRONLY, 0o600))
    source = conn.connection.dbapi_connection
    assert isinstance(source, sqlite3.Connection), type(source)
    target = sqlite3.connect(backup)
    try:
        source.backup(target)
    finally:
        target.close()
    return backup


def set_foreign_keys(conn: Connection, on: bool) -> None:
    """Switch `PRAGMA foreign_keys` (only effective outside a transaction)."""
    assert not conn.in_transaction(), "PRAGMA foreign_keys is a no-op inside a transaction"
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


def check_foreign_keys(conn: Connection) -> None:
    """Raise `DatabaseError` if any row has a dangling foreign key."""
    with conn.begin():
        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise DatabaseError(
            f"the migration left {len(broken)} row(s) with dangling foreign keys "
            f"(first in table {broken[0][0]!r}) in {redact_url(conn.engine.url)}",
            hint="restore the backup file next to the database (*.bak-REVISION)",
        )


def _enable_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    """Switch to WAL once per file; the switch needs an exclusive lock and SQLite does not
    wait on the busy timeout for it, so a fresh file opened by several connections retries."""
    if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def install_sqlite_listeners(engine: Engine) -> None:
    """Busy timeout, WAL and foreign keys on every connection; BEGIN IMMEDIATE on begin."""
    busy_ms = int(BUSY_TIMEOUT_S * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            _enable_wal(cursor, BUSY_TIMEOUT_S)
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        mode = options.get(BEGIN_MODE_OPTION, "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


__all__ = [
    "BEGIN_MODE_OPTION",
    "BUSY_TIMEOUT_S",
    "backup_sqlite",
    "check_foreign_keys",
    "create_sqlite_file",
    "install_sqlite_listeners",
    "set_foreign_keys",
    "sqlite_path",
    "uncreatable_reason",
]
