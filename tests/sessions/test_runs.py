"""RunStore: batch runs and their items."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from agentrt.errors import SessionError
from agentrt.sessions import RunInfo, RunItemInfo, SessionStore


def test_run_lifecycle(store: SessionStore) -> None:
    runs = store.runs
    run = runs.create_run("examples/task.yaml", "summarize", "tiny", {"system": "secret prompt"})
    assert isinstance(run, RunInfo)
    assert (run.status, run.finished_at) == ("running", None)
    assert "secret prompt" not in repr(run) and "system" in repr(run)

    first = runs.add_run_item(run.id, "doc-1")
    second = runs.add_run_item(run.id, "doc-2", status="pending")
    assert isinstance(first, RunItemInfo)
    assert first.started_at is not None and second.started_at is None

    done = runs.finish_run_item(first.id, output={"answer": "private text"})
    assert (done.status, done.output) == ("done", {"answer": "private text"})
    assert "private text" not in repr(done)
    failed = runs.finish_run_item(second.id, status="failed", error="tool exploded: secret")
    assert failed.error == "tool exploded: secret" and "secret" not in repr(failed)
    assert failed.started_at == failed.finished_at

    finished = runs.finish_run(run.id, "failed")
    assert finished.status == "failed" and finished.finished_at is not None
    assert [i.input_id for i in runs.run_items(run.id)] == ["doc-1", "doc-2"]
    assert runs.get_run(run.id) == finished


def test_run_errors(store: SessionStore) -> None:
    runs = store.runs
    run = runs.create_run("t.yaml", "t", "m")
    runs.add_run_item(run.id, "a")
    with pytest.raises(SessionError, match="already has an item for input 'a'"):
        runs.add_run_item(run.id, "a")
    with pytest.raises(SessionError, match="no run with id"):
        runs.add_run_item("nope", "a")
    with pytest.raises(SessionError, match="final run status"):
        runs.finish_run(run.id, "running")
    with pytest.raises(SessionError, match="no run item"):
        runs.finish_run_item("nope")


def test_deleting_a_run_cascades_to_items(store: SessionStore) -> None:
    run = store.runs.create_run("t.yaml", "t", "m")
    store.runs.add_run_item(run.id, "a")
    engine = store._sessionmaker.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM runs WHERE id = :id"), {"id": run.id})
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM run_items")).scalar_one() == 0
