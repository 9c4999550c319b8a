"""The python tool: permission, output, time limit, memory limit, workspace cwd and empty env."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentrt.errors import ConfigError, ToolError
from agentrt.tools import PermissionPolicy, SandboxLimits, ToolRegistry, builtin_registry

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX rlimits")


@pytest.fixture
def tools(tmp_path: Path) -> ToolRegistry:
    policy = PermissionPolicy(tmp_path, allow_python=True)
    return builtin_registry(policy, SandboxLimits(memory_mb=256, max_output_chars=2000))


def _gone(pid: int, within_s: float = 3.0) -> bool:
    """Whether process `pid` has exited (no such process, or a zombie) within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_python_needs_permission(tmp_path: Path) -> None:
    tools = builtin_registry(PermissionPolicy(tmp_path))
    with pytest.raises(ToolError, match="allow_python=True"):
        tools.call("python", {"code": "print(1)"})


def test_runs_code_in_workspace_with_empty_env(tools: ToolRegistry, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("41")
    code = (
        "import os, sys\n"
        "print(int(open('data.txt').read()) + 1)\n"
        "print(sorted(os.environ))\n"
        "print(os.getcwd())\n"
        "print('oops', file=sys.stderr)\n"
    )
    out = tools.call("python", {"code": code}).splitlines()
    assert out[0] == "42"
    assert out[1] in ("['PATH']", "['LC_CTYPE', 'PATH']")  # CPython may set LC_CTYPE itself
    assert Path(out[2]).resolve() == tmp_path.resolve()
    assert out[3] == "oops"


def test_error_exit_is_reported_as_output(tools: ToolRegistry) -> None:
    out = tools.call("python", {"code": "raise SystemExit(3)"})
    assert out.endswith("[exit code 3]")
    out = tools.call("python", {"code": "1/0"})
    assert "ZeroDivisionError" in out and out.endswith("[exit code 1]")


def test_output_truncated(tools: ToolRegistry) -> None:
    out = tools.call("python", {"code": "print('x' * 10000)"})
    assert out.startswith("x" * 2000) and "[output truncated:" in out
    assert len(out) < 2100


def test_timeout_kills_the_process_group(tools: ToolRegistry, tmp_path: Path) -> None:
    code = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
        "open('pids', 'w').write(f'{os.getpid()} {child.pid}')\n"
        "while True: pass\n"
    )
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"timed out after 1 s"):
        tools.call("python", {"code": code, "timeout_s": 1})
    assert time.monotonic() - start < 5
    pid, child = (int(p) for p in (tmp_path / "pids").read_text().split())
    assert _gone(pid), f"sandbox process {pid} still running"
    assert _gone(child), f"grandchild {child} still running"


def test_memory_limit(tools: ToolRegistry) -> None:
    out = tools.call("python", {"code": "b = bytearray(2 * 1024**3)\nprint('allocated')"})
    assert "MemoryError" in out and "allocated" not in out
    assert out.endswith("[exit code 1]")


def test_timeout_bounds(tools: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="timeout_s"):
        tools.call("python", {"code": "pass", "timeout_s": 0})
    with pytest.raises(ToolError, match="timeout_s"):
        tools.call("python", {"code": "pass", "timeout_s": 3600})


def test_limits_validated() -> None:
    with pytest.raises(ConfigError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
