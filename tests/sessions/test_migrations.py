"""Migration checks in the style of pytest-alembic's built-ins, written by hand.

Runs on SQLite; also on PostgreSQL when AGENTRT_TEST_PG names a database that these
tests may wipe (only this file reads that variable).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from agentrt.errors import DatabaseError
from agentrt.sessions import (
    Base,
    SessionStore,
    alembic_config,
    current_revision,
    database_status,
    downgrade,
    head_revision,
    make_engine,
    open_catalog,
    sqlite_path,
    upgrade,
)
from agentrt.sessions import database as database_module

PG_URL = os.environ.get("AGENTRT_TEST_PG")

# The schema contract: table -> columns in order. Change it only together with a new revision.
EXPECTED: dict[str, list[str]] = {
    "sessions": [
        "id", "name", "model", "model_fingerprint", "dms_config", "status", "tokens", "slots",
        "kv_bytes", "compression_ratio", "created_at", "updated_at", "pinned", "tags",
    ],
    "messages": [
        "id", "session_id", "seq", "role", "content", "tool_calls", "token_start", "token_end",
        "created_at",
    ],
    "checkpoints": [
        "id", "session_id", "created_at", "file", "bytes", "sha256", "tokens", "slots",
        "compression_ratio", "fingerprint", "format_version", "parent_id", "kind", "missing",
        "label",
    ],
    "runs": [
        "id", "task_file", "task_name", "model", "status", "started_at", "finished_at", "options",
    ],
    "run_items": [
        "id", "run_id", "input_id", "status", "output", "error", "session_id", "started_at",
        "finished_at",
    ],
    "placements": ["session_name", "replica", "node", "updated_at"],
}  # fmt: skip

EXPECTED_FOREIGN_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("messages", "session_id"): ("sessions", "CASCADE"),
    ("checkpoints", "session_id"): ("sessions", "CASCADE"),
    ("checkpoints", "parent_id"): ("checkpoints", "SET NULL"),
    ("run_items", "run_id"): ("runs", "CASCADE"),
    ("run_items", "session_id"): ("sessions", "SET NULL"),
}


def _wipe_postgres(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql", marks=pytest.mark.skipif(not PG_URL, reason="AGENTRT_TEST_PG not set")
        ),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend under test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'catalog.db'}"
        return
    assert PG_URL is not None
    _wipe_postgres(PG_URL)
    yield PG_URL
    _wipe_postgres(PG_URL)


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    eng = make_engine(url)
    yield eng
    eng.dispose()


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def _walk() -> list[str]:
    """Revision ids from the first to the head."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_single_head_revision() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, heads
    assert head_revision() == heads[0]


def test_upgrade_from_empty(engine: Engine) -> None:
    assert current_revision(engine) is None
    assert upgrade(engine) == head_revision()
    assert current_revision(engine) == head_revision()
    assert _tables(engine) == set(EXPECTED)
    assert upgrade(engine) == head_revision()  # idempotent


def test_up_down_consistency(engine: Engine) -> None:
    revisions = _walk()
    for previous, revision in zip([None, *revisions], revisions, strict=False):
        assert upgrade(engine, revision) == revision
        assert downgrade(engine, previous or "base") == previous
        assert upgrade(engine, revision) == revision
    assert downgrade(engine, "base") is None
    assert _tables(engine) == set()
    assert upgrade(engine) == head_revision()


def test_relative_unknown_and_backwards_revisions(engine: Engine) -> None:
    first = _walk()[0]
    assert upgrade(engine, "+1") == first
    assert downgrade(engine) is None  # default "-1"
    with pytest.raises(DatabaseError, match="unknown schema revision 'nope'"):
        upgrade(engine, "nope")
    with pytest.raises(DatabaseError, match="no schema revision -1 from base"):
        downgrade(engine)
    upgrade(engine)
    with pytest.raises(DatabaseError, match="use downgrade"):
        upgrade(engine, "base")


def test_model_definitions_match_ddl(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
    assert diffs == []


def test_expected_columns(engine: Engine) -> None:
    upgrade(engine)
    inspector = inspect(engine)
    actual = {t: [c["name"] for c in inspector.get_columns(t)] for t in EXPECTED}
    assert actual == EXPECTED
    models = {t: [c.name for c in Base.metadata.tables[t].columns] for t in EXPECTED}
    assert models == EXPECTED


def test_foreign_keys_have_explicit_delete_rules(engine: Engine) -> None:
    upgrade(engine)
    inspector = inspect(engine)
    found = {
        (table, fk["constrained_columns"][0]): (
            fk["referred_table"],
            (fk.get("options") or {}).get("ondelete", "").upper(),
        )
        for table in EXPECTED
        for fk in inspector.get_foreign_keys(table)
    }
    assert found == EXPECTED_FOREIGN_KEYS


@pytest.mark.parametrize("dialect_url", ["sqlite:///x.db", "postgresql+psycopg://u@h/db"])
def test_offline_sql_renders_for_each_dialect(dialect_url: str) -> None:
    """The migrations compile for both backends, even with no PostgreSQL server here."""
    buffer = io.StringIO()
    config = alembic_config()
    config.output_buffer = buffer
    config.set_main_option("sqlalchemy.url", dialect_url)
    command.upgrade(config, "head", sql=True)
    command.downgrade(config, f"{head_revision()}:base", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE sessions" in sql
    assert "ON DELETE CASCADE" in sql and "ON DELETE SET NULL" in sql
    assert "DROP TABLE sessions" in sql


def test_upgrade_backs_up_a_non_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    assert list(tmp_path.glob("*.bak-*")) == []  # nothing to back up when empty
    downgrade(url, "base")
    backups = sorted(p.name for p in tmp_path.glob("*.bak-*"))
    assert backups == [f"catalog.db.bak-{head_revision()}"]
    assert (tmp_path / backups[0]).stat().st_mode & 0o777 == 0o600
    backup_engine = make_engine(f"sqlite:///{tmp_path / backups[0]}")
    try:
        assert current_revision(backup_engine) == head_revision()
    finally:
        backup_engine.dispose()


def test_unversioned_catalog_tables_are_refused(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE sessions (id VARCHAR(36) PRIMARY KEY)"))
    with pytest.raises(DatabaseError, match="no schema version"):
        upgrade(engine)


def test_newer_schema_is_refused(engine: Engine, url: str) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
    with pytest.raises(DatabaseError, match="newer"):
        open_catalog(url)
    with pytest.raises(DatabaseError, match="newer"):
        upgrade(engine)
    status = database_status(url)
    assert status.reachable and not status.up_to_date
    assert status.error is not None and "newer" in status.error


def _scripts_with(tmp_path: Path, revision_source: str) -> Path:
    """A copy of the shipped migrations plus one test revision (9002) on top of the head."""
    scripts = tmp_path / "migrations"
    shutil.copytree(
        database_module.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    source = revision_source.replace("{down}", head_revision())
    (scripts / "versions" / "9002_test_only.py").write_text(source)
    return scripts


_FAILING_REVISION = '''
"""Test-only: fails half-way."""
from alembic import op

revision = "9002"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE half_done (x INTEGER)")
    op.execute("SELECT * FROM no_such_table_anywhere")


def downgrade() -> None:
    pass
'''


def test_failed_migration_rolls_back_only_itself(
    engine: Engine, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transaction_per_migration: earlier revisions stay applied, the failing one leaves nothing."""
    head = head_revision()
    monkeypatch.setattr(
        database_module, "MIGRATIONS_DIR", _scripts_with(tmp_path, _FAILING_REVISION)
    )
    with pytest.raises(DatabaseError, match=f"stopped at {head}"):
        upgrade(engine)  # from empty: the shipped revisions commit, 9002 rolls back
    assert current_revision(engine) == head
    assert "half_done" not in inspect(engine).get_table_names()
    with pytest.raises(DatabaseError) as info:
        upgrade(url)  # from the head: backed up first, and the hint names the backup
    path = sqlite_path(url)
    if path is not None:
        assert f"{path.name}.bak-{head}" in str(info.value)


_BATCH_REVISION = '''
"""Test-only: widen sessions.model; on SQLite a batch copy of the whole table."""
import sqlalchemy as sa
from alembic import op

revision = "9002"
down_revision = "{down}"
branch_labels = None
depends_on = None


def _retype(old: int, new: int) -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.alter_column(
            "model", type_=sa.String(new), existing_type=sa.String(old), existing_nullable=False
        )


def upgrade() -> None:
    _retype(1024, 2048)


def downgrade() -> None:
    _retype(2048, 1024)
'''


def test_batch_migration_keeps_child_rows(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recreating a parent table must not cascade-delete its children (FKs off on SQLite)."""
    scripts = _scripts_with(tmp_path, _BATCH_REVISION)

    store = SessionStore(open_catalog(url))
    try:
        session = store.create_session("keep-me", "m", "f" * 64, {})
        store.add_message(session, "user", "hello")
        store.add_checkpoint(
            session, file="a.safetensors", size_bytes=1, sha256="0" * 64, tokens=1, slots=1,
            compression_ratio=1.0, fingerprint="f", format_version=1,
        )  # fmt: skip
        old_head = head_revision()
        monkeypatch.setattr(database_module, "MIGRATIONS_DIR", scripts)
        assert upgrade(url) == "9002"
        assert len(store.messages("keep-me")) == 1
        assert len(store.checkpoints("keep-me")) == 1
        assert downgrade(url, old_head) == old_head
        assert len(store.messages("keep-me")) == 1
    finally:
        store.close()
    path = sqlite_path(url)
    if path is not None:
        names = sorted(p.name for p in path.parent.glob("*.bak-*"))
        assert names == [f"{path.name}.bak-{old_head}", f"{path.name}.bak-9002"]
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        finally:
            engine.dispose()


def test_opening_a_current_catalog_does_not_import_alembic(tmp_path) -> None:
    """A catalog at head opens with a plain version query: Alembic is left unimported."""
    import subprocess
    import sys

    db = f"sqlite:///{tmp_path}/c.db"
    upgrade(db)
    code = (
        "import sys; from agentrt.sessions import open_catalog, SessionStore; "
        f"SessionStore(open_catalog({db!r})).list_sessions(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_several_version_rows_are_refused(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0002')"))
    with pytest.raises(DatabaseError, match="several schema revisions"):
        current_revision(engine)
