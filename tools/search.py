"""search_text: a linear-time (RE2) regex search over the workspace's text files, with size and time caps.

Python's `re` backtracks: `(a+)+$` on 40 'a's and a '!' runs for days while holding the GIL.
RE2 (the `google-re2` package) matches in time linear in the text for every pattern, so a
model-written pattern cannot stall the process. RE2 has no backreferences or lookaround;
such a pattern is refused with a ToolError that says so.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import re2

from agentrt.errors import ToolError
from agentrt.tools.workspace import Walk, confine, open_file, rel

MAX_PATTERN_CHARS = 1000
MAX_SEARCH_FILE_BYTES = 2 * 1024 * 1024
MAX_SEARCH_TOTAL_BYTES = 64 * 1024 * 1024
MAX_SEARCH_SECONDS = 10.0
MAX_HITS = 1000
MAX_PROGRAM_BYTES = 8 * 1024 * 1024  # RE2's own memory budget for one compiled pattern


def compile_pattern(pattern: str) -> re2._Regexp:
    """`pattern` compiled with RE2; ToolError for a too-long, invalid or unsupported pattern."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ToolError(f"pattern longer than {MAX_PATTERN_CHARS} characters; use a shorter one")
    options = re2.Options()
    options.max_mem = MAX_PROGRAM_BYTES
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", errors="replace")
        raise ToolError(
            f"invalid regular expression {pattern!r}: {reason}",
            hint="patterns use RE2 syntax: no backreferences (\\1) and no lookaround ((?=...))",
        ) from None


def _read_text(workspace: Path, real: Path, shown: str) -> str | None:
    """The text of a file to search, or None for a binary file; ToolError when refused."""
    fd = open_file(workspace, real, shown)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_SEARCH_FILE_BYTES:
            raise ToolError(f"{shown!r} is not searched: larger than {MAX_SEARCH_FILE_BYTES} bytes")
        data = f.read(MAX_SEARCH_FILE_BYTES + 1)
    if b"\x00" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def search_text(workspace: Path, pattern: str, path: str = ".", max_hits: int = 50) -> str:
    """'file:line: text' per line of the workspace's text files under `path` matching `pattern`."""
    if not 0 < max_hits <= MAX_HITS:
        raise ToolError(f"max_hits must be between 1 and {MAX_HITS}")
    regex = compile_pattern(pattern)
    root = confine(workspace, path)
    walk = Walk(workspace, root)
    if root.is_file():
        files = iter([(root, rel(workspace, root))])
    elif root.is_dir():
        files = walk.files()
    else:
        raise ToolError(f"{path!r} is not a file or folder in the workspace")
    hits: list[str] = []
    stop = ""
    deadline = time.monotonic() + MAX_SEARCH_SECONDS
    total = 0
    for real, shown in files:
        try:
            text = _read_text(workspace, real, shown)
        except ToolError as exc:
            if root.is_file():
                raise
            walk.skipped.append(f"{shown} ({exc.message.split(': ', 1)[-1]})")
            continue
        if text is None:
            continue
        total += len(text)
        for number, line in enumerate(text.splitlines(), start=1):
            if regex.search(line):
                hits.append(f"{shown}:{number}: {line.strip()[:200]}")
                if len(hits) >= max_hits:
                    stop = f"[stopped after {max_hits} hits]"
                    break
        if not stop and total > MAX_SEARCH_TOTAL_BYTES:
            stop = f"[stopped after reading {MAX_SEARCH_TOTAL_BYTES} bytes; search a narrower path]"
        if not stop and time.monotonic() > deadline:
            stop = f"[stopped after {MAX_SEARCH_SECONDS:g} s; search a narrower path]"
        if stop:
            break
    lines = hits or ["no matches"]
    lines += [note for note in (stop, walk.note()) if note]
    return "\n".join(lines)


__all__ = ["MAX_PATTERN_CHARS", "MAX_SEARCH_FILE_BYTES", "compile_pattern", "search_text"]
