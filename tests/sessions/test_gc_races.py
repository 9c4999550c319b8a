"""gc against concurrent saves: rows are read again under each session's lock before deleting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agentrt.sessions import SessionStore
from agentrt.sessions.gc import collect_files, prune
from agentrt.sessions.layout import SessionLayout
from agentrt.sessions.locks import SessionLock


def add_blob(store: SessionStore, layout: SessionLayout, session_id: str, n: int) -> str:
    """Write a small blob into the session's folder and record its checkpoint row."""
    data = f"checkpoint {n}".encode()
    path = layout.session_dir(session_id) / f"{n:013d}-{n}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    store.add_checkpoint(
        session_id,
        file=layout.relative(path),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        tokens=n,
        slots=n,
        compression_ratio=1.0,
        fingerprint="f" * 64,
        format_version=1,
    )
    return layout.relative(path)


class SaveAfterSnapshot:
    """A store whose first `checkpoints()` answer is taken just before a save commits."""

    def __init__(self, store: SessionStore, save) -> None:
        self._store, self._save = store, save
        self.saved: list[str] = []

    def checkpoints(self, *args, **kwargs):
        rows = self._store.checkpoints(*args, **kwargs)
        if self._save is not None:
            self.saved.append(self._save())
            self._save = None
        return rows

    def __getattr__(self, name):
        return getattr(self._store, name)


def collect(store, layout: SessionLayout) -> list[tuple[str, str]]:
    said: list[tuple[str, str]] = []
    collect_files(
        store,
        layout,
        dry_run=False,
        say=lambda kind, text, _: said.append((kind, text)),
        size_text=str,
    )
    return said


@pytest.fixture
def layout(agentrt_home: Path) -> SessionLayout:
    return SessionLayout.under(agentrt_home)


def test_gc_keeps_a_checkpoint_committed_after_its_snapshot(store, layout, session_kwargs) -> None:
    info = store.create_session("alpha", **session_kwargs)
    add_blob(store, layout, info.id, 1)
    racing = SaveAfterSnapshot(store, lambda: add_blob(store, layout, info.id, 2))
    said = collect(racing, layout)
    (newer,) = racing.saved
    assert layout.resolve(newer).is_file(), said
    assert [layout.resolve(c.file).is_file() for c in store.checkpoints("alpha")] == [True, True]
    assert not [k for k, _ in said if k == "orphan"]


def test_gc_keeps_the_folder_of_a_session_created_after_its_snapshot(
    store, layout, session_kwargs
) -> None:
    (layout.checkpoint_dir).mkdir(parents=True)

    def first_save() -> str:
        return add_blob(store, layout, store.create_session("late", **session_kwargs).id, 1)

    racing = SaveAfterSnapshot(store, first_save)
    racing.list_sessions = lambda: []  # the snapshot predates the new session row
    collect(racing, layout)
    (blob,) = racing.saved
    assert layout.resolve(blob).is_file()


def test_gc_still_removes_real_orphans(store, layout, session_kwargs) -> None:
    info = store.create_session("alpha", **session_kwargs)
    add_blob(store, layout, info.id, 1)
    stray = layout.session_dir(info.id) / "0000000000009-9.safetensors"
    stray.write_bytes(b"stray")
    gone = layout.checkpoint_dir / "no-such-session"
    gone.mkdir()
    (gone / "x.safetensors").write_bytes(b"x")
    kinds = [k for k, _ in collect(store, layout)]
    assert kinds == ["orphan", "orphan"] and not stray.exists() and not gone.exists()


def test_prune_skips_a_session_open_in_another_process(store, layout, session_kwargs) -> None:
    info = store.create_session("alpha", **session_kwargs)
    files = [add_blob(store, layout, info.id, n) for n in (1, 2, 3)]
    held = SessionLock.acquire(layout, info.id, "alpha")  # another open handle on its lock
    said: list[tuple[str, str]] = []
    try:
        prune(store, layout, 1, dry_run=False, say=lambda k, t, _: said.append((k, t)), when=str)
        assert [k for k, _ in said] == ["skipped"]
        assert all(layout.resolve(f).is_file() for f in files)
        assert len(store.checkpoints("alpha")) == 3
        collect(store, layout)
        assert all(layout.resolve(f).is_file() for f in files)
    finally:
        held.release()
    said.clear()
    prune(store, layout, 1, dry_run=False, say=lambda k, t, _: said.append((k, t)), when=str)
    assert [k for k, _ in said] == ["pruned", "pruned"]
    assert [c.file for c in store.checkpoints("alpha")] == files[-1:]
