"""The built-in tools: calculator, read_file, list_dir, search_text, write_file, python."""

from __future__ import annotations

import os
import re
from pathlib import Path

from agentrt.errors import ToolError
from agentrt.tools.calculator import calculate
from agentrt.tools.policy import PermissionPolicy
from agentrt.tools.registry import Tool, ToolRegistry
from agentrt.tools.sandbox import SandboxLimits, run_python

MAX_READ_BYTES = 1024 * 1024
MAX_WRITE_BYTES = 1024 * 1024
MAX_SEARCH_FILE_BYTES = 2 * 1024 * 1024
MAX_HITS = 1000
MAX_LIST_ENTRIES = 1000
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules"}


def confine(workspace: Path, path: str) -> Path:
    """`path` (relative to the workspace, or absolute) resolved; ToolError if it leaves the workspace."""
    if "\x00" in path:
        raise ToolError("path contains a NUL character")
    candidate = Path(path) if Path(path).is_absolute() else workspace / path
    resolved = candidate.resolve()
    if not resolved.is_relative_to(workspace):
        raise ToolError(f"path {path!r} is outside the workspace; use a path inside it")
    return resolved


def _rel(workspace: Path, path: Path) -> str:
    """`path` relative to the workspace, with '/' separators."""
    rel = path.relative_to(workspace).as_posix()
    return rel or "."


def _is_binary(head: bytes) -> bool:
    """Whether a file's first bytes look binary (contain NUL)."""
    return b"\x00" in head


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, parentheses, sqrt, log, sin, ...)."""
    return str(calculate(expression))


def make_file_tools(workspace: Path) -> list[Tool]:
    """read_file, list_dir and search_text bound to `workspace`."""

    def read_file(path: str, max_bytes: int = 65536) -> str:
        """Read a text file in the workspace (at most max_bytes bytes)."""
        if not 0 < max_bytes <= MAX_READ_BYTES:
            raise ToolError(f"max_bytes must be between 1 and {MAX_READ_BYTES}")
        target = confine(workspace, path)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file in the workspace")
        size = target.stat().st_size
        with target.open("rb") as f:
            data = f.read(max_bytes)
        text = data.decode("utf-8", errors="replace")
        if size > len(data):
            text += f"\n[truncated: showed {len(data)} of {size} bytes]"
        return text

    def list_dir(path: str = ".") -> str:
        """List a directory in the workspace: subdirectories end with '/', files show their size."""
        target = confine(workspace, path)
        if not target.is_dir():
            raise ToolError(f"{path!r} is not a directory in the workspace")
        lines: list[str] = []
        entries = sorted(target.iterdir(), key=lambda p: p.name)
        for entry in entries[:MAX_LIST_ENTRIES]:
            if entry.is_symlink() and not entry.resolve().is_relative_to(workspace):
                lines.append(f"{entry.name} -> (outside the workspace)")
            elif entry.is_dir():
                lines.append(f"{entry.name}/")
            else:
                lines.append(f"{entry.name}  ({entry.stat().st_size} bytes)")
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[{len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
        return "\n".join(lines) if lines else "(empty directory)"

    def search_text(pattern: str, path: str = ".", max_hits: int = 50) -> str:
        """Search text files in the workspace for a regex; one 'file:line: text' per hit."""
        if not 0 < max_hits <= MAX_HITS:
            raise ToolError(f"max_hits must be between 1 and {MAX_HITS}")
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ToolError(f"invalid regular expression {pattern!r}: {exc}") from None
        root = confine(workspace, path)
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
                files.extend(Path(dirpath) / name for name in sorted(filenames))
        else:
            raise ToolError(f"{path!r} does not exist in the workspace")
        hits: list[str] = []
        for file in files:
            real = file.resolve()
            if not real.is_relative_to(workspace) or not real.is_file():
                continue  # a symlink pointing out of the workspace, or a dangling one
            if real.stat().st_size > MAX_SEARCH_FILE_BYTES:
                continue
            data = real.read_bytes()
            if _is_binary(data[:8192]):
                continue
            text = data.decode("utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), start=1):
                if regex.search(line):
                    hits.append(f"{_rel(workspace, file)}:{number}: {line.strip()[:200]}")
                    if len(hits) >= max_hits:
                        return "\n".join(hits) + f"\n[stopped after {max_hits} hits]"
        return "\n".join(hits) if hits else "no matches"

    return [Tool.from_function(f) for f in (read_file, list_dir, search_text)]


def make_write_file(workspace: Path) -> Tool:
    """write_file bound to `workspace`; needs the 'write' permission."""

    def write_file(path: str, content: str) -> str:
        """Write a UTF-8 text file in the workspace, creating parent folders; replaces an existing file."""
        data = content.encode("utf-8")
        if len(data) > MAX_WRITE_BYTES:
            raise ToolError(f"content is larger than {MAX_WRITE_BYTES} bytes")
        target = confine(workspace, path)
        if target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"wrote {len(data)} bytes to {_rel(workspace, target)}"

    return Tool.from_function(write_file, permission="write")


def make_python(workspace: Path, limits: SandboxLimits) -> Tool:
    """python bound to `workspace` and `limits`; needs the 'python' permission."""

    def python(code: str, timeout_s: float = 5.0) -> str:
        """Run Python code in a sandboxed subprocess in the workspace; returns stdout and stderr."""
        return run_python(code, workspace, timeout_s, limits)

    return Tool.from_function(python, permission="python")


def builtin_registry(policy: PermissionPolicy, limits: SandboxLimits | None = None) -> ToolRegistry:
    """A registry with every built-in tool; write_file and python run only if the policy allows."""
    registry = ToolRegistry(policy)
    registry.register(Tool.from_function(calculator))
    for file_tool in make_file_tools(policy.workspace):
        registry.register(file_tool)
    registry.register(make_write_file(policy.workspace))
    registry.register(make_python(policy.workspace, limits or SandboxLimits()))
    return registry


__all__ = ["builtin_registry", "calculator", "confine"]
