"""File tools refuse hard links, FIFOs and devices, and survive symlink loops in the workspace."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agentrt.errors import ToolError
from agentrt.tools import PermissionPolicy, ToolRegistry, builtin_registry

pytestmark = pytest.mark.skipif(os.name != "posix", reason="hard links, FIFOs and O_NOFOLLOW")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("needle in the workspace\n")
    (tmp_path / "victim.txt").write_text("needle outside: do not touch\n")
    return ws


@pytest.fixture
def tools(workspace: Path) -> ToolRegistry:
    return builtin_registry(PermissionPolicy(workspace, allow_write=True))


def test_hard_link_to_outside_file_is_neither_read_nor_written(
    tools: ToolRegistry, workspace: Path, tmp_path: Path
) -> None:
    os.link(tmp_path / "victim.txt", workspace / "hard.txt")
    with pytest.raises(ToolError, match="2 hard links"):
        tools.call("read_file", {"path": "hard.txt"})
    with pytest.raises(ToolError, match="2 hard links"):
        tools.call("write_file", {"path": "hard.txt", "content": "overwritten"})
    assert (tmp_path / "victim.txt").read_text() == "needle outside: do not touch\n"
    out = tools.call("search_text", {"pattern": "needle"})
    assert "outside" not in out.split("[skipped")[0]
    assert out.splitlines() == [
        "notes.txt:1: needle in the workspace",
        "[skipped 1 entries: hard.txt (it has 2 hard links; another link may lie outside the "
        "workspace, so files with more than one link are refused)]",
    ]
    with pytest.raises(ToolError, match="2 hard links"):
        tools.call("search_text", {"pattern": "needle", "path": "hard.txt"})


def test_write_to_fifo_is_refused_at_once(tools: ToolRegistry, workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")
    result: list[object] = []

    def call() -> None:
        try:
            result.append(tools.call("write_file", {"path": "pipe", "content": "x"}))
        except ToolError as exc:
            result.append(exc)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "write_file blocked on a FIFO"
    assert isinstance(result[0], ToolError) and "FIFO, not a regular file" in str(result[0])
    with pytest.raises(ToolError, match="FIFO, not a regular file"):
        tools.call("read_file", {"path": "pipe"})
    assert "pipe  (FIFO)" in tools.call("list_dir", {}).splitlines()


def test_write_file_through_a_fifo_opened_by_a_reader_is_refused(
    tools: ToolRegistry, workspace: Path
) -> None:
    fifo = workspace / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with a reader, open() would succeed
    try:
        with pytest.raises(ToolError, match="FIFO"):
            tools.call("write_file", {"path": "pipe", "content": "x"})
        assert os.read(reader, 10) == b""
    finally:
        os.close(reader)


def test_symlink_loop_is_skipped_and_reported(tools: ToolRegistry, workspace: Path) -> None:
    (workspace / "loop").symlink_to(workspace / "loop")
    (workspace / "a").symlink_to(workspace / "b")
    (workspace / "b").symlink_to(workspace / "a")
    (workspace / "sub").mkdir()
    (workspace / "sub" / "deep.txt").write_text("needle deeper\n")
    assert tools.call("list_dir", {}).splitlines() == [
        "a -> (symlink loop; skipped)",
        "b -> (symlink loop; skipped)",
        "loop -> (symlink loop; skipped)",
        "notes.txt  (24 bytes)",
        "sub/",
    ]
    out = tools.call("search_text", {"pattern": "needle", "path": "."}).splitlines()
    assert out == [
        "notes.txt:1: needle in the workspace",
        "sub/deep.txt:1: needle deeper",
        "[skipped 3 entries: a (symlink loop), b (symlink loop), loop (symlink loop)]",
    ]
    with pytest.raises(ToolError, match="symlink loop"):
        tools.call("read_file", {"path": "loop"})
    with pytest.raises(ToolError, match="symlink loop"):
        tools.call("list_dir", {"path": "loop"})


def test_dangling_symlink_is_reported(tools: ToolRegistry, workspace: Path) -> None:
    (workspace / "gone").symlink_to(workspace / "missing.txt")
    assert "gone -> (No such file or directory; skipped)" in tools.call("list_dir", {})
    assert "gone (No such file or directory)" in tools.call("search_text", {"pattern": "x"})


def test_unreadable_folder_is_reported_not_fatal(tools: ToolRegistry, workspace: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any folder")
    locked = workspace / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        out = tools.call("search_text", {"pattern": "needle"})
        assert "locked (Permission denied)" in out
        assert out.startswith("notes.txt:1: needle")
    finally:
        locked.chmod(0o755)


def test_write_file_does_not_follow_a_symlink_swapped_into_the_path(
    tools: ToolRegistry, workspace: Path, tmp_path: Path
) -> None:
    from agentrt.tools.workspace import open_file

    (workspace / "dir").mkdir()
    target = workspace / "dir" / "x.txt"  # confined while "dir" was a real folder...
    (workspace / "dir").rmdir()
    (workspace / "dir").symlink_to(tmp_path)  # ...then swapped for a link out
    with pytest.raises(ToolError, match="cannot open"):
        open_file(workspace, target, "dir/x.txt", write=True)
    assert not (tmp_path / "x.txt").exists()


def test_write_file_replaces_contents_of_a_single_link_file(
    tools: ToolRegistry, workspace: Path
) -> None:
    (workspace / "f.txt").write_text("a much longer old content\n")
    assert tools.call("write_file", {"path": "f.txt", "content": "new"}) == "wrote 3 bytes to f.txt"
    assert (workspace / "f.txt").read_text() == "new"
