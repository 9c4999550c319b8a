"""Reach files inside the workspace only: confine paths, open regular files, list and walk folders.

Files are opened one path component at a time from the workspace folder with `O_NOFOLLOW`,
so a component swapped for a symlink after `confine` checked the path is refused, not
followed. Only regular files with a single hard link are opened: another link to the same
inode may lie outside the workspace. FIFOs, sockets and devices are refused, and opened
non-blocking so that refusing them never waits for a peer.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentrt.errors import ToolError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules"}


def confine(workspace: Path, path: str) -> Path:
    """`path` (relative to the workspace, or absolute) resolved; ToolError if it leaves the workspace."""
    if "\x00" in path:
        raise ToolError("path contains a NUL character")
    candidate = Path(path) if Path(path).is_absolute() else workspace / path
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ToolError(f"path {path!r} cannot be resolved: {_reason(exc)}") from None
    if not resolved.is_relative_to(workspace):
        raise ToolError(f"path {path!r} is outside the workspace; use a path inside it")
    return resolved


def rel(workspace: Path, path: Path) -> str:
    """`path` relative to the workspace, with '/' separators."""
    return path.relative_to(workspace).as_posix() or "."


def _reason(exc: BaseException) -> str:
    """A short reason for an OSError/RuntimeError met while resolving or opening a path."""
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == 40:  # ELOOP
        return "symlink loop"
    return getattr(exc, "strerror", None) or str(exc)


def kind(mode: int) -> str:
    """'directory', 'FIFO', 'socket', 'device', 'symlink' or 'file' for a stat mode."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "file"


def refusal(st: os.stat_result) -> str | None:
    """Why a file with this stat may not be read or written, or None when it may."""
    if stat.S_ISDIR(st.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(st.st_mode):
        return f"it is a {kind(st.st_mode)}, not a regular file"
    if st.st_nlink > 1:
        return (
            f"it has {st.st_nlink} hard links; another link may lie outside the workspace, "
            "so files with more than one link are refused"
        )
    return None


def _open_dir(workspace: Path, parts: tuple[str, ...], create: bool = False) -> int:
    """A descriptor of workspace/parts, opened a component at a time without following links."""
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(workspace: Path, target: Path, shown: str, write: bool = False) -> int:
    """A descriptor of the regular, single-link file `target` (confined), for reading or writing.

    For writing the file is created (with missing parent folders) if absent and is not
    truncated here: the caller truncates after this check, so a refused file is untouched.
    """
    parts = target.relative_to(workspace).parts
    if not parts:
        raise ToolError(f"{shown!r} is not a file: it is a directory")
    try:
        dir_fd = _open_dir(workspace, parts[:-1], create=write)
    except OSError as exc:
        raise ToolError(f"cannot open {shown!r}: {_reason(exc)} in its folder path") from None
    try:
        try:
            before = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if not write:
                raise ToolError(f"{shown!r} is not a file in the workspace") from None
        else:
            problem = refusal(before)
            if problem:
                raise ToolError(f"{shown!r} is not a file that can be used: {problem}")
        flags = _FILE_FLAGS | (os.O_WRONLY | os.O_CREAT if write else os.O_RDONLY)
        try:
            fd = os.open(parts[-1], flags, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            raise ToolError(f"cannot open {shown!r}: {_reason(exc)}") from None
    finally:
        os.close(dir_fd)
    after = os.fstat(fd)
    problem = refusal(after)
    if problem:
        os.close(fd)
        raise ToolError(f"{shown!r} is not a file that can be used: {problem}")
    os.set_blocking(fd, True)
    return fd


def describe_entry(workspace: Path, entry: Path) -> str:
    """One list_dir line for `entry`: 'name/', 'name  (N bytes)', or why it is skipped."""
    name = entry.name
    try:
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            try:
                real = entry.resolve(strict=True)
            except (OSError, RuntimeError) as exc:
                return f"{name} -> ({_reason(exc)}; skipped)"
            if not real.is_relative_to(workspace):
                return f"{name} -> (outside the workspace)"
            st = real.stat()
    except OSError as exc:
        return f"{name}  ({_reason(exc)}; skipped)"
    if stat.S_ISDIR(st.st_mode):
        return f"{name}/"
    if stat.S_ISREG(st.st_mode):
        return f"{name}  ({st.st_size} bytes)"
    return f"{name}  ({kind(st.st_mode)})"


@dataclass
class Walk:
    """The files under a folder of the workspace, and the entries skipped with their reasons."""

    workspace: Path
    root: Path
    skipped: list[str] = field(default_factory=list)

    def files(self) -> Iterator[tuple[Path, str]]:
        """(resolved path, path as shown) of every file to look at; links leading out are dropped."""

        def onerror(exc: OSError) -> None:
            where = Path(exc.filename) if exc.filename else self.root
            self.skipped.append(f"{rel(self.workspace, where)} ({_reason(exc)})")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=onerror):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                try:
                    real = path.resolve(strict=True)
                except (OSError, RuntimeError) as exc:
                    self.skipped.append(f"{rel(self.workspace, path)} ({_reason(exc)})")
                    continue
                if real.is_relative_to(self.workspace):
                    yield real, rel(self.workspace, path)

    def note(self, limit: int = 10) -> str:
        """'[skipped N entries: a (reason), ...]' or '' when nothing was skipped."""
        if not self.skipped:
            return ""
        shown = ", ".join(self.skipped[:limit])
        more = f", and {len(self.skipped) - limit} more" if len(self.skipped) > limit else ""
        return f"[skipped {len(self.skipped)} entries: {shown}{more}]"


__all__ = ["SKIP_DIRS", "Walk", "confine", "describe_entry", "kind", "open_file", "refusal", "rel"]
