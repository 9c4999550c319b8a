"""One writer per saved session across processes: an exclusive `fcntl` lock on its `.lock` file.

The engine holds a session's lock for as long as the session is open; CLI commands that
change a session's files (remove, fork, import, gc) take it for their duration.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from agentrt.errors import SessionError
from agentrt.sessions.atomic import ensure_private_dir
from agentrt.sessions.layout import SessionLayout


class SessionLocked(SessionError):
    """The session's lock is held by another process (or another open handle)."""


class SessionLock:
    """A held lock on one session's folder; `release()` (or closing the process) frees it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, layout: SessionLayout, session_id: str, name: str) -> SessionLock:
        """Lock the session (creating its folder); SessionError if another process holds it."""
        ensure_private_dir(layout.session_dir(session_id))
        fd = os.open(layout.lock_path(session_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SessionLocked(
                f"session {name!r} is open in another agentrt process",
                hint="close it there first, or fork it into a new session",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(fd)

    def release(self) -> None:
        """Unlock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextmanager
def session_lock(
    layout: SessionLayout, session_id: str, name: str, *, create: bool = True
) -> Iterator[bool]:
    """Hold a session's lock for a block; yields False (holding nothing) when its folder is
    missing and `create` is False."""
    if not create and not layout.session_dir(session_id).is_dir():
        yield False
        return
    lock = SessionLock.acquire(layout, session_id, name)
    try:
        yield True
    finally:
        lock.release()


def remove_session_dir(layout: SessionLayout, session_id: str) -> None:
    """Remove a session folder's lock file and the folder itself when nothing else is left."""
    folder = layout.session_dir(session_id)
    (folder / ".lock").unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # missing, or still holds files the user kept
