"""Engine setup, file modes, status reporting, schema checks and error translation."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

from agentrt.errors import DatabaseError, SessionError
from agentrt.sessions import (
    UPGRADE_COMMAND,
    SessionStore,
    current_revision,
    database_status,
    head_revision,
    make_engine,
    open_catalog,
    redact_url,
    sqlite_path,
    translate_errors,
    upgrade,
)
from agentrt.sessions import sqlite as sqlite_module


def test_sqlite_folder_and_files_are_owner_only(db_url: str, agentrt_home: Path) -> None:
    store = SessionStore(open_catalog(db_url))
    try:
        store.create_session("s", "m", "f", {})
    finally:
        store.close()
    assert agentrt_home.stat().st_mode & 0o777 == 0o700
    files = list(agentrt_home.iterdir())
    assert any(f.name == "agentrt.db" for f in files)
    modes = {f.name: f.stat().st_mode & 0o777 for f in files}
    assert set(modes.values()) == {0o600}, modes


def test_existing_folder_mode_is_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    engine.dispose()
    assert tmp_path.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "x.db").stat().st_mode & 0o777 == 0o600


def test_sqlite_pragmas(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        engine.dispose()


def test_sqlite_path() -> None:
    assert sqlite_path("sqlite:////a/b.db") == Path("/a/b.db")
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u@h/db") is None


def test_redact_url() -> None:
    assert redact_url("postgresql://alice:s3cret@db.example/agentrt") == (
        "postgresql://alice:***@db.example/agentrt"
    )
    assert redact_url("sqlite:////home/a/agentrt.db") == "sqlite:////home/a/agentrt.db"
    assert "s3cret" not in redact_url("weird://alice:s3cret@host with spaces")


def test_status_of_a_fresh_path_does_not_create_it(db_url: str, agentrt_home: Path) -> None:
    status = database_status(db_url)
    assert status.reachable and status.error is None
    assert status.revision is None and not status.up_to_date
    assert status.head == head_revision()
    assert not agentrt_home.exists()


def test_status_after_open(db_url: str) -> None:
    open_catalog(db_url).kw["bind"].dispose()
    status = database_status(db_url)
    assert (status.reachable, status.revision, status.up_to_date) == (True, head_revision(), True)


@pytest.mark.parametrize(
    "url_template, expected",
    [
        ("sqlite:///{blocker}/sub/agentrt.db", "not a folder"),
        ("nosuchdialect://user@host/db", "unsupported database URL"),
        ("this is not a url", "cannot parse"),
        ("sqlite:///{garbage}", "not a database"),
    ],
    ids=["parent-is-a-file", "bad-scheme", "unparseable", "not-sqlite-file"],
)
def test_status_of_unreachable_database_never_raises(
    tmp_path: Path, url_template: str, expected: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"definitely not sqlite" * 100)
    url = url_template.format(blocker=blocker, garbage=garbage)
    status = database_status(url)
    assert not status.reachable and not status.up_to_date
    assert status.revision is None
    assert status.error is not None and expected in status.error, status.error


def test_status_never_shows_the_password() -> None:
    status = database_status("postgresql+psycopg://alice:hunter2@127.0.0.1:1/agentrt")
    assert not status.reachable
    assert status.url_redacted == "postgresql+psycopg://alice:***@127.0.0.1:1/agentrt"
    assert "hunter2" not in repr(status)


def test_behind_database_names_the_upgrade_command(db_url: str) -> None:
    with pytest.raises(DatabaseError) as info:
        open_catalog(db_url, auto_migrate=False)
    assert UPGRADE_COMMAND == "agentrt db upgrade"
    assert f"run `{UPGRADE_COMMAND}`" in str(info.value)
    upgrade(db_url)
    maker = open_catalog(db_url, auto_migrate=False)
    maker.kw["bind"].dispose()


def test_concurrent_auto_migration_of_a_fresh_database(db_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def opener() -> None:
        barrier.wait()
        try:
            open_catalog(db_url).kw["bind"].dispose()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = make_engine(db_url)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_missing_tables_say_how_to_fix(db_url: str) -> None:
    engine = make_engine(db_url)
    store = SessionStore(sessionmaker(bind=engine))
    try:
        with pytest.raises(DatabaseError, match="agentrt db upgrade"):
            store.list_sessions()
    finally:
        store.close()


def test_locked_database_becomes_database_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade(db_url)
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT_S", 0.05)
    holder = make_engine(db_url)
    store = SessionStore(open_catalog(db_url))
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE: holds the write lock
            with pytest.raises(DatabaseError, match="locked by another process"):
                store.create_session("blocked", "m", "f", {})
    finally:
        store.close()
        holder.dispose()


def test_integrity_errors_become_session_errors(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    try:
        with pytest.raises(SessionError, match="conflicts with existing data"):
            with translate_errors("inserting an orphan"), engine.begin() as c:
                c.exec_driver_sql(
                    "INSERT INTO messages (id, session_id, seq, role, content, created_at) "
                    "VALUES ('m1', 'no-such-session', 1, 'user', 'x', '2025-01-01')"
                )
    finally:
        engine.dispose()
