"""search_text runs model-written patterns in linear time, with pattern, file and total caps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentrt.errors import ToolError
from agentrt.tools import PermissionPolicy, ToolRegistry, builtin_registry
from agentrt.tools.search import MAX_PATTERN_CHARS, MAX_SEARCH_FILE_BYTES


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "evil.txt").write_text("a" * 40 + "!\n" + "b" * 100_000 + "!\n")
    return tmp_path


@pytest.fixture
def tools(workspace: Path) -> ToolRegistry:
    return builtin_registry(PermissionPolicy(workspace))


@pytest.mark.parametrize(
    ("pattern", "hit"),
    [(r"(a+)+$", False), (r"(a|aa)+$", False), (r"(.*a){20}", True), (r"(b|b)+\d", False)],
)
def test_catastrophic_patterns_finish_quickly(tools: ToolRegistry, pattern: str, hit: bool) -> None:
    # Python's `re` needs 2**40 steps for `(a+)+$` against 40 'a's and a '!' (days)
    start = time.monotonic()
    out = tools.call("search_text", {"pattern": pattern})
    assert time.monotonic() - start < 2.0
    assert out == ("evil.txt:1: " + "a" * 40 + "!" if hit else "no matches")


def test_unsupported_and_oversize_patterns_are_clear_errors(tools: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="RE2 syntax") as info:
        tools.call("search_text", {"pattern": r"(a)\1"})
    assert "backreferences" in (info.value.hint or "")
    with pytest.raises(ToolError, match="invalid regular expression"):
        tools.call("search_text", {"pattern": r"(?=a)b"})
    with pytest.raises(ToolError, match=f"longer than {MAX_PATTERN_CHARS}"):
        tools.call("search_text", {"pattern": "a" * (MAX_PATTERN_CHARS + 1)})
    with pytest.raises(ToolError, match="invalid regular expression"):
        tools.call("search_text", {"pattern": "((((a{100}){100}){100}){100})"})


def test_oversize_file_is_skipped_and_reported(tools: ToolRegistry, workspace: Path) -> None:
    (workspace / "big.log").write_bytes(b"needle\n" * (MAX_SEARCH_FILE_BYTES // 7 + 1))
    (workspace / "small.txt").write_text("needle\n")
    out = tools.call("search_text", {"pattern": "needle"}).splitlines()
    assert out[0] == "small.txt:1: needle"
    assert out[1] == f"[skipped 1 entries: big.log (larger than {MAX_SEARCH_FILE_BYTES} bytes)]"
    with pytest.raises(ToolError, match="larger than"):
        tools.call("search_text", {"pattern": "needle", "path": "big.log"})
