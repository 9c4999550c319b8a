"""The built-in tools: calculator, read_file, list_dir, search_text, write_file, python."""

from __future__ import annotations

import os
from pathlib import Path

from agentrt.errors import ToolError
from agentrt.tools.calculator import calculate
from agentrt.tools.policy import PermissionPolicy
from agentrt.tools.registry import Tool, ToolRegistry
from agentrt.tools.sandbox import SandboxLimits, run_python
from agentrt.tools.search import search_text as search_workspace
from agentrt.tools.workspace import confine, describe_entry, open_file, rel

MAX_READ_BYTES = 1024 * 1024
MAX_WRITE_BYTES = 1024 * 1024
MAX_LIST_ENTRIES = 1000


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
        with os.fdopen(open_file(workspace, target, path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
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
        try:
            entries = sorted(target.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise ToolError(f"cannot list {path!r}: {exc.strerror}") from None
        lines = [describe_entry(workspace, entry) for entry in entries[:MAX_LIST_ENTRIES]]
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"[{len(entries) - MAX_LIST_ENTRIES} more entries not shown]")
        return "\n".join(lines) if lines else "(empty directory)"

    def search_text(pattern: str, path: str = ".", max_hits: int = 50) -> str:
        """Search text files in the workspace for an RE2 regex; one 'file:line: text' per hit."""
        return search_workspace(workspace, pattern, path, max_hits)

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
        with os.fdopen(open_file(workspace, target, path, write=True), "wb") as f:
            f.truncate(0)
            f.write(data)
        return f"wrote {len(data)} bytes to {rel(workspace, target)}"

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
