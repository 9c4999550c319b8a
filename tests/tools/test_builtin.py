"""File tools confined to the workspace, and write_file behind its permission."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.errors import ToolError
from agentrt.tools import PermissionPolicy, ToolRegistry, builtin_registry


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src" / "pkg").mkdir(parents=True)
    (ws / "README.md").write_text("hello world\nsecond line\n")
    (ws / "src" / "main.py").write_text("import os\n\ndef main():\n    return 'hello'\n")
    (ws / "src" / "pkg" / "data.bin").write_bytes(b"hello\x00\x01binary")
    (tmp_path / "secret.txt").write_text("hello from outside\n")
    (ws / "escape").symlink_to(tmp_path / "secret.txt")
    (ws / "escape_dir").symlink_to(tmp_path)
    (ws / "inside_link").symlink_to(ws / "README.md")
    return ws


@pytest.fixture
def tools(workspace: Path) -> ToolRegistry:
    return builtin_registry(PermissionPolicy(workspace))


def test_all_builtins_registered(tools: ToolRegistry) -> None:
    assert tools.names() == [
        "calculator",
        "read_file",
        "list_dir",
        "search_text",
        "write_file",
        "python",
    ]
    assert tools.get("write_file").requires_permission == "write"
    assert tools.get("python").requires_permission == "python"
    assert tools.call("calculator", {"expression": "6*7"}) == "42"


def test_read_file(tools: ToolRegistry, workspace: Path) -> None:
    assert tools.call("read_file", {"path": "README.md"}) == "hello world\nsecond line\n"
    assert tools.call("read_file", {"path": str(workspace / "src/main.py")}).startswith("import os")
    assert tools.call("read_file", {"path": "inside_link"}).startswith("hello world")
    short = tools.call("read_file", {"path": "README.md", "max_bytes": 5})
    assert short.startswith("hello\n[truncated: showed 5 of 24 bytes]")


def test_read_file_errors(tools: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="not a file"):
        tools.call("read_file", {"path": "missing.txt"})
    with pytest.raises(ToolError, match="not a file"):
        tools.call("read_file", {"path": "src"})
    with pytest.raises(ToolError, match="max_bytes"):
        tools.call("read_file", {"path": "README.md", "max_bytes": 0})


@pytest.mark.parametrize("tool_name", ["read_file", "list_dir", "search_text"])
@pytest.mark.parametrize(
    "path", ["../secret.txt", "src/../../secret.txt", "/etc/passwd", "/", "escape", "escape_dir"]
)
def test_paths_outside_workspace_refused(tools: ToolRegistry, tool_name: str, path: str) -> None:
    args = {"path": path} if tool_name != "search_text" else {"pattern": "hello", "path": path}
    with pytest.raises(ToolError, match="outside the workspace"):
        tools.call(tool_name, args)


def test_absolute_path_of_tmp_parent_refused(tools: ToolRegistry, workspace: Path) -> None:
    with pytest.raises(ToolError, match="outside the workspace"):
        tools.call("read_file", {"path": str(workspace.parent / "secret.txt")})


def test_list_dir(tools: ToolRegistry) -> None:
    listing = tools.call("list_dir", {}).splitlines()
    assert listing == [
        "README.md  (24 bytes)",
        "escape -> (outside the workspace)",
        "escape_dir -> (outside the workspace)",
        "inside_link  (24 bytes)",
        "src/",
    ]
    assert tools.call("list_dir", {"path": "src"}).splitlines() == ["main.py  (42 bytes)", "pkg/"]


def test_search_text(tools: ToolRegistry) -> None:
    out = tools.call("search_text", {"pattern": "hel+o"}).splitlines()
    # the binary file and the symlinks leading out are skipped; the inside symlink is searched
    assert out == [
        "README.md:1: hello world",
        "inside_link:1: hello world",
        "src/main.py:4: return 'hello'",
    ]
    assert tools.call("search_text", {"pattern": "^def ", "path": "src/main.py"}) == (
        "src/main.py:3: def main():"
    )
    assert tools.call("search_text", {"pattern": "nothing-here"}) == "no matches"
    limited = tools.call("search_text", {"pattern": "l", "max_hits": 2}).splitlines()
    assert len(limited) == 3 and limited[-1] == "[stopped after 2 hits]"
    with pytest.raises(ToolError, match="invalid regular expression"):
        tools.call("search_text", {"pattern": "("})


def test_write_file_needs_permission(tools: ToolRegistry, workspace: Path) -> None:
    with pytest.raises(ToolError, match="allow_write=True"):
        tools.call("write_file", {"path": "out.txt", "content": "x"})
    assert not (workspace / "out.txt").exists()


def test_write_file_allowed(workspace: Path, tmp_path: Path) -> None:
    tools = builtin_registry(PermissionPolicy(workspace, allow_write=True))
    assert tools.call("write_file", {"path": "new/dir/out.txt", "content": "héllo"}) == (
        "wrote 6 bytes to new/dir/out.txt"
    )
    assert (workspace / "new/dir/out.txt").read_text() == "héllo"
    for path in ("../evil.txt", "escape", "escape_dir/evil.txt", str(tmp_path / "evil.txt")):
        with pytest.raises(ToolError, match="outside the workspace"):
            tools.call("write_file", {"path": path, "content": "x"})
    assert (tmp_path / "secret.txt").read_text() == "hello from outside\n"
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(ToolError, match="is a directory"):
        tools.call("write_file", {"path": "src", "content": "x"})
