"""Repairing and cleaning the checkpoint store: mark lost blobs, prune old ones, remove orphans.

Each function reports what it does (or would do, with `dry_run`) through `say(kind, text,
freed_bytes)`; the CLI prints those lines. Folders of sessions open in another process are
skipped (their lock is held).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agentrt.sessions.atomic import TEMP_PREFIX, file_sha256
from agentrt.sessions.layout import BLOB_SUFFIX, SessionLayout
from agentrt.sessions.locks import SessionLocked, remove_session_dir, session_lock

if TYPE_CHECKING:
    from agentrt.sessions.records import CheckpointInfo
    from agentrt.sessions.store import SessionStore

# say(kind, text, freed_bytes): kind is marked, restored, pruned, kept, temp, orphan or skipped
Say = Callable[[str, str, int], None]


def mark_missing(
    store: SessionStore, layout: SessionLayout, *, verify: bool, dry_run: bool, say: Say
) -> None:
    """Mark rows whose blob is gone (or, with verify, does not hash right) missing, and
    name sessions that have no checkpoint at all (a first save that never completed)."""
    checkpoints = store.checkpoints()
    with_rows = {c.session_id for c in checkpoints}
    for info in store.list_sessions():
        if info.id not in with_rows:
            say(
                "kept",
                f"session {info.name!r} has no checkpoint (its first save or import never "
                f"completed): remove it with `agentrt sessions rm {info.name} --yes`",
                0,
            )
    for c in checkpoints:
        path = layout.resolve(c.file)
        problem = None if path.is_file() else "its file is missing"
        if problem is None and verify and file_sha256(path) != (c.size_bytes, c.sha256):
            problem = "its file does not match the recorded sha256"
        if problem is not None and not c.missing:
            say("marked", f"mark checkpoint {c.id[:8]} ({c.file}) missing: {problem}", 0)
            if not dry_run:
                store.mark_checkpoint_missing(c.id)
        elif problem is None and verify and c.missing:
            say("restored", f"clear the missing flag of checkpoint {c.id[:8]} (verified)", 0)
            if not dry_run:
                store.mark_checkpoint_missing(c.id, missing=False)
    _report_broken_chains(store, layout, say)


def _report_broken_chains(store: SessionStore, layout: SessionLayout, say: Say) -> None:
    """Name incremental checkpoints that cannot be restored because a link below them is lost."""
    from agentrt.sessions.chain import BrokenChain, chain_of

    rows = store.checkpoints()
    by_session: dict[str, list[CheckpointInfo]] = {}
    for c in rows:
        by_session.setdefault(c.session_id, []).append(c)
    for session_rows in by_session.values():
        for c in session_rows:
            if c.kind != "incremental" or c.missing:
                continue
            try:  # every row: a fork's chain starts in the session it was forked from
                lost = [link for link in chain_of(rows, c)[:-1] if link.missing]
            except BrokenChain as err:
                say("kept", f"checkpoint {c.id[:8]} cannot be restored: {err.message}", 0)
                continue
            if lost:
                say(
                    "kept",
                    f"incremental checkpoint {c.id[:8]} ({c.file}) cannot be restored: its "
                    f"chain link {lost[0].id[:8]} is missing (restore an older full checkpoint)",
                    0,
                )


def prune(
    store: SessionStore,
    layout: SessionLayout,
    keep: int,
    *,
    dry_run: bool,
    say: Say,
    when: Callable[[CheckpointInfo], str],
) -> None:
    """Delete all but the `keep` newest usable checkpoints of every unpinned session.

    Each session is pruned under its lock, from its checkpoint rows read again under that
    lock; a session open in another process is skipped.
    """
    for info in store.list_sessions():
        if info.pinned:
            continue
        try:
            with session_lock(layout, info.id, info.name, create=False):
                _prune_one(store, layout, info.id, info.name, keep, dry_run, say, when)
        except SessionLocked:
            say("skipped", f"skipped {info.name!r}: it is open in another agentrt process", 0)


def _prune_one(
    store: SessionStore,
    layout: SessionLayout,
    session_id: str,
    name: str,
    keep: int,
    dry_run: bool,
    say: Say,
    when: Callable[[CheckpointInfo], str],
) -> None:
    """Prune one session's checkpoints (its lock is held, or its folder does not exist).

    The rule of automatic retention (`agentrt.sessions.retention.to_prune`): the newest
    `keep` restore points stay with every link their chains need, and so do named snapshots.
    """
    from agentrt.sessions.retention import prune_session

    def said(c: CheckpointInfo, size: int) -> None:
        say("pruned", f"prune {c.kind} checkpoint {c.id[:8]} of {name!r} ({when(c)})", size)

    prune_session(store, layout, session_id, keep, dry_run=dry_run, say=said)


def collect_files(
    store: SessionStore,
    layout: SessionLayout,
    *,
    dry_run: bool,
    say: Say,
    size_text: Callable[[int], str],
) -> None:
    """Remove blobs no row references and stale `.tmp-` files, skipping sessions in use.

    A first pass over one snapshot of the catalog finds candidate folders; each is then
    locked and its rows read again, so a checkpoint committed after the snapshot is kept.
    """
    root = layout.checkpoint_dir
    if not root.is_dir():
        return
    _collect_folder(store, layout, root, dry_run, say, size_text)  # temp files only
    live = {s.id for s in store.list_sessions()}
    referenced = {os.path.normpath(layout.resolve(c.file)) for c in store.checkpoints()}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _junk(folder, referenced) and folder.name in live:
            continue
        try:
            with session_lock(layout, folder.name, folder.name, create=False) as held:
                if held:
                    _collect_folder(store, layout, folder, dry_run, say, size_text)
        except SessionLocked:
            say("skipped", f"skipped {folder}: its session is open in another agentrt process", 0)


def _junk(folder: Path, referenced: set[str]) -> list[Path]:
    """Temp files and blobs no catalog row references, in one folder."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and (
            p.name.startswith(TEMP_PREFIX)
            or (p.suffix == BLOB_SUFFIX and os.path.normpath(p) not in referenced)
        )
    ]


def _collect_folder(
    store: SessionStore,
    layout: SessionLayout,
    folder: Path,
    dry_run: bool,
    say: Say,
    size_text: Callable[[int], str],
) -> None:
    """Clean one folder from catalog rows read now (call holding the folder's lock)."""
    root = folder == layout.checkpoint_dir
    if root:
        referenced: set[str] = set()
        junk = [p for p in _junk(folder, referenced) if p.name.startswith(TEMP_PREFIX)]
    else:  # rows of any session: a deleted session's blobs that forks build on stay put
        referenced = {
            path
            for c in store.checkpoints()
            if os.path.dirname(path := os.path.normpath(layout.resolve(c.file)))
            == os.path.normpath(folder)
        }
        junk = _junk(folder, referenced)
    for p in junk:
        kind = "temp" if p.name.startswith(TEMP_PREFIX) else "orphan"
        what = "stale temp file" if kind == "temp" else "orphaned checkpoint file"
        size = p.stat().st_size
        say(kind, f"remove {what} {p} ({size_text(size)})", size)
        if not dry_run:
            p.unlink(missing_ok=True)
    if not root and not dry_run and not store.session_exists(folder.name):
        remove_session_dir(layout, folder.name)
