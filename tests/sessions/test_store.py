"""SessionStore: sessions, messages and checkpoints on a migrated SQLite catalog."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from agentrt.errors import CheckpointError, SessionError
from agentrt.sessions import CheckpointInfo, SessionInfo, SessionStore, open_catalog


def _checkpoint(store: SessionStore, session: str, file: str, **extra: Any) -> CheckpointInfo:
    fields: dict[str, Any] = {
        "file": file,
        "size_bytes": 1024,
        "sha256": "ab" * 32,
        "tokens": 100,
        "slots": 20,
        "compression_ratio": 5.0,
        "fingerprint": "f" * 64,
        "format_version": 1,
    }
    fields.update(extra)
    return store.add_checkpoint(session, **fields)


def _count(store: SessionStore, table: str) -> int:
    engine = store._sessionmaker.kw["bind"]
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_create_and_get(store: SessionStore, session_kwargs: dict[str, Any]) -> None:
    created = store.create_session("analysis", tags=["doc"], **session_kwargs)
    assert isinstance(created, SessionInfo)
    assert (created.name, created.status, created.tokens, created.tags) == (
        "analysis",
        "active",
        0,
        ("doc",),
    )
    assert created.dms_config == session_kwargs["dms_config"]
    assert created.created_at.tzinfo is UTC
    assert store.get_session("analysis") == created
    assert store.get_session(created.id) == created
    assert store.get_session(created.id[:8]) == created
    with pytest.raises(AttributeError):
        created.name = "other"  # type: ignore[misc]


def test_duplicate_name_is_a_session_error(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("dup", **session_kwargs)
    with pytest.raises(SessionError, match="a session named 'dup' already exists"):
        store.create_session("dup", **session_kwargs)


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "empty"),
        (" padded", "whitespace"),
        ("a/b", "slash"),
        ("x" * 201, "longer than 200"),
        ("bell\x07", "control"),
        ("0b7c6a44-9d1f-4f1e-8f43-2d4e4a7b9c10", "looks like a session id"),
    ],
)
def test_invalid_names(store: SessionStore, session_kwargs: dict, name: str, problem: str) -> None:
    with pytest.raises(SessionError, match=problem):
        store.create_session(name, **session_kwargs)


def test_unknown_session_lists_close_names(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("analysis", **session_kwargs)
    store.create_session("analytics", **session_kwargs)
    store.create_session("zebra", **session_kwargs)
    with pytest.raises(SessionError) as info:
        store.get_session("analysys")
    message = str(info.value)
    assert "no session named 'analysys'" in message
    assert "'analysis'" in message and "'analytics'" in message and "zebra" not in message


def test_list_update_status_tag_rename(store: SessionStore, session_kwargs: dict) -> None:
    a = store.create_session("a", **session_kwargs)
    store.create_session("b", **session_kwargs)
    stats = store.update_session_stats(
        a, tokens=4096, slots=512, kv_bytes=1 << 33, compression_ratio=8.0
    )
    assert (stats.tokens, stats.slots, stats.kv_bytes, stats.compression_ratio) == (
        4096,
        512,
        1 << 33,
        8.0,
    )
    assert [s.name for s in store.list_sessions()] == ["a", "b"]  # most recently updated first
    assert store.set_status("a", "saved").status == "saved"
    assert [s.name for s in store.list_sessions(status="saved")] == ["a"]
    with pytest.raises(SessionError, match="expected one of active, idle, saved, archived"):
        store.set_status("a", "sleeping")
    tagged = store.tag_session("a", pinned=True, tags=["x", "y"])
    assert tagged.pinned and tagged.tags == ("x", "y")
    assert store.rename_session("a", "a2").name == "a2"
    with pytest.raises(SessionError, match="already exists"):
        store.rename_session("a2", "b")
    assert store.get_session(a.id).name == "a2"


def test_messages_get_sequence_numbers(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("chat", **session_kwargs)
    first = store.add_message("chat", "user", "secret prompt", token_start=0, token_end=5)
    calls = [{"name": "calculator", "arguments": {"expr": "1+1"}}]
    second = store.add_message("chat", "assistant", "ok", tool_calls=calls)
    assert (first.seq, second.seq) == (1, 2)
    listed = store.messages("chat")
    assert [m.content for m in listed] == ["secret prompt", "ok"]
    assert listed[1].tool_calls == tuple(calls)
    assert "secret prompt" not in repr(first) and "<13 chars>" in repr(first)
    assert "calculator" not in repr(second)
    with pytest.raises(SessionError, match="message role"):
        store.add_message("chat", "narrator", "x")


def test_checkpoints(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("s", **session_kwargs)
    assert store.latest_checkpoint("s") is None
    full = _checkpoint(store, "s", "s/1.safetensors")
    inc = _checkpoint(store, "s", "s/2.safetensors", kind="incremental", parent_id=full.id)
    assert inc.created_at > full.created_at
    assert store.latest_checkpoint("s") == inc
    assert [c.file for c in store.checkpoints("s")] == ["s/1.safetensors", "s/2.safetensors"]
    missing = store.mark_checkpoint_missing(inc.id)
    assert missing.missing
    assert store.latest_checkpoint("s") == full
    assert store.latest_checkpoint("s", include_missing=True) == missing
    with pytest.raises(CheckpointError, match="base of incremental"):
        store.delete_checkpoint(full.id)
    assert store.delete_checkpoint(inc.id) == "s/2.safetensors"
    assert store.delete_checkpoint(full.id) == "s/1.safetensors"
    assert store.checkpoints() == []


@pytest.mark.parametrize(
    "extra, problem",
    [
        ({"file": "/abs/x.safetensors"}, "relative"),
        ({"file": "../x.safetensors"}, "relative"),
        ({"sha256": "XYZ"}, "64 lowercase hex"),
        ({"kind": "incremental"}, "needs a parent"),
        ({"parent_id": "nope"}, "does not belong"),
        ({"kind": "delta"}, "checkpoint kind"),
    ],
)
def test_bad_checkpoints_are_refused(
    store: SessionStore, session_kwargs: dict, extra: dict[str, Any], problem: str
) -> None:
    store.create_session("s", **session_kwargs)
    fields = {"file": "s/1.safetensors", **extra}
    with pytest.raises((CheckpointError, SessionError), match=problem):
        _checkpoint(store, "s", **fields)


def test_parent_must_be_of_the_same_session(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("a", **session_kwargs)
    store.create_session("b", **session_kwargs)
    parent = _checkpoint(store, "a", "a/1.safetensors")
    with pytest.raises(CheckpointError, match="does not belong to session 'b'"):
        _checkpoint(store, "b", "b/1.safetensors", parent_id=parent.id)


def test_delete_cascades_with_foreign_keys_on(store: SessionStore, session_kwargs: dict) -> None:
    doomed = store.create_session("doomed", **session_kwargs)
    store.create_session("kept", **session_kwargs)
    store.add_message("doomed", "user", "hi")
    store.add_message("kept", "user", "hi")
    _checkpoint(store, "doomed", "doomed/1.safetensors")
    _checkpoint(store, "kept", "kept/1.safetensors")
    run = store.runs.create_run("task.yaml", "t", "m")
    item = store.runs.add_run_item(run.id, "in-1", session_id=doomed.id)

    assert store.delete_session("doomed") == ["doomed/1.safetensors"]
    assert (_count(store, "messages"), _count(store, "checkpoints")) == (1, 1)
    assert store.runs.run_items(run.id)[0].session_id is None  # SET NULL, result kept
    assert store.runs.run_items(run.id)[0].id == item.id
    assert store.delete_session("kept", keep_checkpoints=True) == []
    assert (_count(store, "messages"), _count(store, "checkpoints")) == (0, 0)
    with pytest.raises(SessionError, match="no session named 'doomed'"):
        store.get_session("doomed")


def test_foreign_keys_are_enforced(store: SessionStore) -> None:
    engine = store._sessionmaker.kw["bind"]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO checkpoints (id, session_id, created_at, file, bytes, sha256, tokens,"
                " slots, compression_ratio, fingerprint, format_version, kind, missing) VALUES"
                " ('c', 'ghost', '2025-01-01', 'f', 1, 's', 1, 1, 1.0, 'f', 1, 'full', 0)"
            )
        )


def test_concurrent_threads_one_name_one_winner(store: SessionStore, session_kwargs: dict) -> None:
    n = 8
    barrier = threading.Barrier(n)
    outcomes: list[str] = []

    def create() -> None:
        barrier.wait()
        try:
            store.create_session("race", **session_kwargs)
            outcomes.append("won")
        except SessionError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=create) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1, outcomes
    assert all("already exists" in o for o in outcomes if o != "won"), outcomes


def test_concurrent_messages_get_distinct_seq(store: SessionStore, session_kwargs: dict) -> None:
    store.create_session("busy", **session_kwargs)
    barrier = threading.Barrier(6)

    def add() -> None:
        barrier.wait()
        for _ in range(5):
            store.add_message("busy", "user", "x")

    threads = [threading.Thread(target=add) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [m.seq for m in store.messages("busy")] == list(range(1, 31))


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from agentrt.errors import SessionError
    from agentrt.sessions import SessionStore, open_catalog
    url, go, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    store = SessionStore(open_catalog(url))
    try:
        store.create_session("race", "m", "f", {})
        print("won")
    except SessionError as exc:
        print("lost:", exc)
    finally:
        store.close()
    """
)


def test_concurrent_processes_one_name_one_winner(db_url: str, tmp_path: Path) -> None:
    """Two processes on a fresh database: both migrate-or-wait, one creates, one is told why."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, db_url, str(go), str(flag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    lines = sorted(out.strip() for out, _ in results)
    assert lines[1] == "won" and lines[0].startswith("lost: a session named 'race' already exists")
    store = SessionStore(open_catalog(db_url))
    try:
        assert [s.name for s in store.list_sessions()] == ["race"]
    finally:
        store.close()
