"""The catalog database: engine setup, Alembic migrations, schema checks.

Alembic is imported only to migrate or to name revisions other than the head: opening a
catalog that is already current reads `alembic_version` with one query and compares it
with `HEAD_REVISION`, so a process that resumes a session does not pay Alembic's import.
Nothing here reads the environment: the runtime resolves the URL (`agentrt.settings`)
and passes it in. A SQLite catalog runs in WAL mode with foreign keys on, and its folder
and file are created owner-only (0700/0600): it holds the user's conversations
(see `agentrt.sessions.sqlite`). Migrations assume one linear revision history.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agentrt.errors import AgentRTError, DatabaseError
from agentrt.sessions.db_errors import (
    UPGRADE_COMMAND,
    driver_message,
    parse_url,
    redact_url,
    scrub,
    translate_errors,
)
from agentrt.sessions.models import Base
from agentrt.sessions.sqlite import (
    BEGIN_MODE_OPTION,
    BUSY_TIMEOUT_S,
    backup_sqlite,
    check_foreign_keys,
    create_sqlite_file,
    install_sqlite_listeners,
    set_foreign_keys,
    sqlite_path,
    uncreatable_reason,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest revision under migrations/versions; tests check it against Alembic's own view.
HEAD_REVISION = "0003_placements"
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps
# Alembic's `context` and `op` are process-global proxies: one migration at a time per process.
_MIGRATION_LOCK = threading.RLock()


@dataclass(frozen=True)
class DatabaseStatus:
    """What `agentrt db status` / `doctor` report; built without ever raising."""

    reachable: bool
    revision: str | None
    head: str
    up_to_date: bool
    error: str | None
    url_redacted: str


def make_engine(url: str | URL) -> Engine:
    """An Engine for `url`; a SQLite file (and its folder) is created owner-only if missing."""
    parsed = parse_url(url)
    path = sqlite_path(parsed)
    if path is not None:
        create_sqlite_file(path)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if is_sqlite:
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
    try:
        engine = create_engine(parsed, **kwargs)
    except (NoSuchModuleError, ArgumentError) as exc:
        raise DatabaseError(
            f"unsupported database URL {redact_url(parsed)}: {exc}",
            hint="use sqlite:///PATH or a SQLAlchemy URL such as postgresql+psycopg://USER@HOST/DB",
        ) from exc
    except ImportError as exc:
        raise DatabaseError(
            f"the database driver for {parsed.drivername!r} is not installed ({exc.name})",
            hint=f"install the Python package {exc.name!r} into agentrt's environment",
        ) from exc
    if is_sqlite:
        install_sqlite_listeners(engine)
    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic `Config` built in code (no alembic.ini), optionally bound to `connection`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision shipped with this agentrt."""
    return HEAD_REVISION


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty (unversioned) database."""
    with translate_errors("reading the schema version"), engine.connect() as conn:
        return _read_revision(conn.execution_options(**{BEGIN_MODE_OPTION: "DEFERRED"}))


def upgrade(db: str | URL | Engine, revision: str = "head") -> str | None:
    """Migrate the catalog up to `revision`; a non-empty SQLite file is backed up first."""
    return _migrate(db, revision, up=True)


def downgrade(db: str | URL | Engine, revision: str = "-1") -> str | None:
    """Migrate the catalog down to `revision` ("base" drops everything); backs up SQLite first."""
    return _migrate(db, revision, up=False)


def database_status(url: str | URL) -> DatabaseStatus:
    """Reachability and schema revision of the catalog at `url`; never raises on a bad DB."""
    redacted = redact_url(url)
    head = head_revision()

    def failed(error: str) -> DatabaseStatus:
        return DatabaseStatus(False, None, head, False, scrub(error, url), redacted)

    try:
        path = sqlite_path(url)
        if path is not None and not path.exists():
            problem = uncreatable_reason(path)
            if problem is not None:
                return failed(problem)
            return DatabaseStatus(True, None, head, False, None, redacted)
        engine = make_engine(url)
        try:
            revision = current_revision(engine)
        finally:
            engine.dispose()
    except (AgentRTError, SQLAlchemyError, OSError) as exc:
        return failed(str(exc))
    error = None
    if revision is not None and not _is_known(revision):
        error = f"schema revision {revision} is newer than this agentrt (head {head})"
    return DatabaseStatus(True, revision, head, revision == head, error, redacted)


def open_catalog(url: str | URL, *, auto_migrate: bool = True) -> sessionmaker[Session]:
    """A sessionmaker on the catalog at `url`, migrated to head (or refused if behind)."""
    engine = make_engine(url)
    try:
        _ensure_current(engine, auto_migrate=auto_migrate)
    except BaseException:
        engine.dispose()
        raise
    return sessionmaker(bind=engine, expire_on_commit=False)


# --- schema checks and migrations -------------------------------------------------------


def _ensure_current(engine: Engine, *, auto_migrate: bool) -> None:
    revision = current_revision(engine)
    head = head_revision()
    if revision == head:
        return
    if revision is not None and not _is_known(revision):
        raise DatabaseError(
            f"the database at {redact_url(engine.url)} has schema revision {revision}, "
            f"newer than this agentrt understands (head {head})",
            hint="upgrade agentrt, or point it at another database",
        )
    if not auto_migrate:
        raise DatabaseError(
            f"the database at {redact_url(engine.url)} is at schema revision "
            f"{revision or '(empty)'}, this agentrt needs {head}",
            hint=f"run `{UPGRADE_COMMAND}` (a SQLite file is backed up first)",
        )
    upgrade(engine)


def _migrate(db: str | URL | Engine, revision: str, *, up: bool) -> str | None:
    action = f"{'upgrading' if up else 'downgrading'} the schema to {revision}"
    with (
        _MIGRATION_LOCK,
        _engine_for(db) as engine,
        _migration_connection(engine, action) as conn,
    ):
        current, present = _read_state(conn)
        if current is not None and not _is_known(current):
            raise DatabaseError(
                f"cannot migrate: schema revision {current} is newer than this agentrt",
                hint="upgrade agentrt instead",
            )
        from alembic import command

        goal = _resolve(current, revision)
        if goal == current:
            return current
        position = {rev: i for i, rev in enumerate(_chain())}
        if (position.get(goal or "", -1) > position.get(current or "", -1)) != up:
            raise DatabaseError(
                f"cannot {'upgrade' if up else 'downgrade'} from schema {current or 'base'} "
                f"to {goal or 'base'}",
                hint=f"use {'downgrade' if up else 'upgrade'} to go that way",
            )
        if current is None and present:
            raise DatabaseError(
                f"the database has catalog tables ({', '.join(sorted(present))}) "
                "but no schema version, so it cannot be migrated safely",
                hint="point agentrt at an empty database, or restore a backup (*.bak-*)",
            )
        path = sqlite_path(engine.url)
        backup = None
        if path is not None and current is not None:
            backup = backup_sqlite(conn, path, current)
        try:
            with translate_errors(action):
                (command.upgrade if up else command.downgrade)(alembic_config(conn), goal or "base")
        except DatabaseError as exc:
            if conn.in_transaction():
                conn.rollback()
            now = _read_revision(conn)
            if up and now == goal:  # another process ran the same migration concurrently
                return goal
            cause = exc.__cause__
            detail = driver_message(cause) if isinstance(cause, DBAPIError) else exc.message
            raise DatabaseError(
                f"migrating to schema {goal or 'base'} stopped at {now or '(empty)'}: {detail}",
                hint=f"the database as it was before is saved in {backup}"
                if backup
                else "report this with the message above",
            ) from exc
        if conn.in_transaction():
            conn.commit()
        return _read_revision(conn)


def _resolve(current: str | None, revision: str) -> str | None:
    """The revision id that `revision` ("head", "base", "+N", "-N" or an id) names."""
    from alembic.script.revision import RevisionError
    from alembic.util.exc import CommandError

    script = _script()
    try:
        if revision == "base":
            return None
        if revision[:1] in ("+", "-") and revision[1:].isdigit():
            chain = _chain()
            index = (chain.index(current) if current else -1) + int(revision)
            if not -1 <= index < len(chain):
                raise DatabaseError(f"no schema revision {revision} from {current or 'base'}")
            return chain[index] if index >= 0 else None
        found = script.get_revision(script.get_current_head() if revision == "head" else revision)
    except (CommandError, RevisionError) as exc:
        raise DatabaseError(
            f"unknown schema revision {revision!r}", hint="use 'head', 'base' or a revision id"
        ) from exc
    if found is None:
        raise DatabaseError(f"unknown schema revision {revision!r}")
    return found.revision


def _chain() -> list[str]:
    """Revision ids from the first to the head (the history is linear)."""
    return [rev.revision for rev in reversed(list(_script().walk_revisions()))]


def _read_state(conn: Connection) -> tuple[str | None, set[str]]:
    """The revision and the catalog tables present, read in one transaction."""
    with conn.begin():
        revision = _version_row(conn)
        present = set(inspect(conn).get_table_names()) & set(Base.metadata.tables)
    return revision, present


def _read_revision(conn: Connection) -> str | None:
    with conn.begin():
        return _version_row(conn)


def _version_row(conn: Connection) -> str | None:
    """The revision in Alembic's version table (None when it is missing or empty)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    if len(rows) > 1:
        raise DatabaseError(
            f"the catalog records several schema revisions ({', '.join(sorted(rows))}); "
            "agentrt keeps one linear history",
            hint="restore a backup (*.bak-*) or point agentrt at another database",
        )
    return rows[0] if rows else None


def _is_known(revision: str) -> bool:
    if revision == HEAD_REVISION:
        return True
    from alembic.util.exc import CommandError

    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


@contextmanager
def _engine_for(target: str | URL | Engine) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = make_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _migration_connection(engine: Engine, action: str) -> Iterator[Connection]:
    """A connection for migrations; on SQLite with foreign keys OFF (batch table copies
    would otherwise cascade-delete child rows), checked with `foreign_key_check` after."""
    sqlite = engine.dialect.name == "sqlite"
    with translate_errors(action), engine.connect() as conn:
        if sqlite:
            set_foreign_keys(conn, False)
        try:
            yield conn
            if sqlite:
                check_foreign_keys(conn)
        finally:
            if conn.in_transaction():
                conn.rollback()
            if sqlite and not conn.invalidated:
                set_foreign_keys(conn, True)


__all__ = [
    "MIGRATIONS_DIR",
    "UPGRADE_COMMAND",
    "HEAD_REVISION",
    "DatabaseStatus",
    "alembic_config",
    "current_revision",
    "database_status",
    "downgrade",
    "head_revision",
    "make_engine",
    "open_catalog",
    "redact_url",
    "sqlite_path",
    "upgrade",
]
