"""Repairing and cleaning the checkpoint store: mark lost blobs, prune old ones, remove orphans.

Each function reports what it does (or would do, with `dry_run`) through `say(kind, text,
freed_bytes)`; the CLI prints those lines. Folders of sessions open in another process are
skipped (their lock is held).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from agentrt.errors import CheckpointError, SessionError
from agentrt.sessions.atomic import TEMP_PREFIX, file_sha256
from agentrt.sessions.layout import BLOB_SUFFIX, SessionLayout
from agentrt.sessions.locks import remove_session_dir, session_lock

if TYPE_CHECKING:
    from agentrt.sessions.records import CheckpointInfo
    from agentrt.sessions.store import SessionStore

# say(kind, text, freed_bytes): kind is marked, restored, pruned, kept, temp, orphan or skipped
Say = Callable[[str, str, int], None]


def mark_missing(
    store: SessionStore, layout: SessionLayout, *, verify: bool, dry_run: bool, say: Say
) -> None:
    """Mark rows whose blob is gone (or, with verify, does not hash right) missing."""
    for c in store.checkpoints():
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


def prune(
    store: SessionStore,
    layout: SessionLayout,
    keep: int,
    *,
    dry_run: bool,
    say: Say,
    when: Callable[[CheckpointInfo], str],
) -> None:
    """Delete all but the `keep` newest usable checkpoints of every unpinned session."""
    by_session: dict[str, list[CheckpointInfo]] = defaultdict(list)
    for c in store.checkpoints():
        by_session[c.session_id].append(c)
    for info in store.list_sessions():
        if info.pinned:
            continue
        newest_first = sorted(by_session[info.id], key=lambda c: c.created_at, reverse=True)
        usable = 0
        for c in newest_first:
            if usable >= keep:
                path = layout.resolve(c.file)
                size = path.stat().st_size if path.is_file() else 0
                text = f"prune checkpoint {c.id[:8]} of {info.name!r} ({when(c)})"
                if dry_run:
                    say("pruned", text, size)
                    continue
                try:
                    file = store.delete_checkpoint(c.id)
                except CheckpointError as err:
                    say("kept", f"kept checkpoint {c.id[:8]} of {info.name!r}: {err.message}", 0)
                    continue
                layout.resolve(file).unlink(missing_ok=True)
                say("pruned", text, size)
            elif not c.missing:
                usable += 1


def collect_files(
    store: SessionStore,
    layout: SessionLayout,
    *,
    dry_run: bool,
    say: Say,
    size_text: Callable[[int], str],
) -> None:
    """Remove blobs no row references and stale `.tmp-` files, skipping sessions in use."""
    root = layout.checkpoint_dir
    if not root.is_dir():
        return
    live = {s.id for s in store.list_sessions()}
    referenced = {os.path.normpath(layout.resolve(c.file)) for c in store.checkpoints()}
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        junk = [
            p
            for p in sorted(folder.iterdir())
            if p.is_file()
            and (
                p.name.startswith(TEMP_PREFIX)
                or (p.suffix == BLOB_SUFFIX and os.path.normpath(p) not in referenced)
            )
        ]
        gone = folder != root and folder.name not in live
        if not junk and not gone:
            continue
        lock: AbstractContextManager[object] = (
            nullcontext() if folder == root else session_lock(layout, folder.name, folder.name)
        )
        try:
            with lock:
                for p in junk:
                    kind = "temp" if p.name.startswith(TEMP_PREFIX) else "orphan"
                    what = "stale temp file" if kind == "temp" else "orphaned checkpoint file"
                    size = p.stat().st_size
                    say(kind, f"remove {what} {p} ({size_text(size)})", size)
                    if not dry_run:
                        p.unlink(missing_ok=True)
                if gone and not dry_run:
                    remove_session_dir(layout, folder.name)
        except SessionError:
            say("skipped", f"skipped {folder}: its session is open in another agentrt process", 0)
