"""The python tool: permission, output, time limit, memory limit, workspace cwd and empty env."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agentrt.errors import ConfigError, ToolError
from agentrt.tools import PermissionPolicy, SandboxLimits, ToolRegistry, builtin_registry, sandbox

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX rlimits")


@pytest.fixture
def tools(tmp_path: Path) -> ToolRegistry:
    policy = PermissionPolicy(tmp_path, allow_python=True)
    return builtin_registry(policy, SandboxLimits(memory_mb=256, max_output_chars=2000))


@pytest.fixture(params=["host", "session"])
def isolation_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with this host's isolation, and again with the no-namespace fallback."""
    if request.param == "session":
        monkeypatch.setattr(sandbox, "namespace_prefix", lambda network: ())
    return request.param


def _still_growing(path: Path, wait_s: float = 0.6) -> bool:
    """Whether a heartbeat file written by a sandboxed process keeps growing after the call."""
    before = path.stat().st_size
    time.sleep(wait_s)
    return path.stat().st_size > before


_HEARTBEAT = (
    "import os, time\nwhile True:\n    open('beat', 'a').write('.')\n    time.sleep(0.02)\n"
)


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
    assert out[1] == "['LANG', 'LC_ALL', 'PATH']"
    assert Path(out[2]).resolve() == tmp_path.resolve()
    assert out[3] == "oops"


def test_error_exit_is_reported_as_output(tools: ToolRegistry) -> None:
    out = tools.call("python", {"code": "raise SystemExit(3)"})
    assert out.endswith("[exit code 3]")
    out = tools.call("python", {"code": "1/0"})
    assert "ZeroDivisionError" in out and out.endswith("[exit code 1]")


def test_output_truncated(tools: ToolRegistry) -> None:
    out = tools.call("python", {"code": "print('x' * 10000)"})
    assert out == "x" * 2000 + "\n[output truncated: showed 2000 characters; 8001 more bytes]"
    out = tools.call("python", {"code": "print('é' * 3000)"})  # 2 bytes per character
    assert out == "é" * 2000 + "\n[output truncated: showed 2000 characters; 2001 more bytes]"
    code = "import sys; sys.stdout.buffer.write(b'\\xff' * 2500)"  # undecodable bytes
    out = tools.call("python", {"code": code})
    assert out == "\ufffd" * 2000 + "\n[output truncated: showed 2000 characters; 500 more bytes]"


def test_timeout_kills_the_process_group(
    tools: ToolRegistry, tmp_path: Path, isolation_mode: str
) -> None:
    # Pids are not compared: inside a PID namespace they mean nothing outside; a heartbeat
    # file shows whether anything the code started is still running.
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {_HEARTBEAT!r}])\n"
        "while True: pass\n"
    )
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"timed out after 1 s"):
        tools.call("python", {"code": code, "timeout_s": 1})
    assert time.monotonic() - start < 5
    assert not _still_growing(tmp_path / "beat"), "a child of the sandbox is still running"


@pytest.mark.parametrize("escape", ["os.setpgid(0, 0)", "os.setsid()", "double-fork+setsid"])
def test_children_that_leave_the_process_group_are_killed(
    tools: ToolRegistry, tmp_path: Path, escape: str, isolation_mode: str
) -> None:
    if escape == "double-fork+setsid":
        leave = "if os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n"
    else:
        leave = escape + "\n"
    child = "import os\n" + leave + _HEARTBEAT
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        "time.sleep(0.5)\n"
        "print('parent done')\n"
    )
    for call in ({"code": code}, {"code": code + "time.sleep(60)\n", "timeout_s": 1.5}):
        (tmp_path / "beat").unlink(missing_ok=True)
        try:
            assert tools.call("python", call) == "parent done\n"
        except ToolError as exc:
            assert "timed out" in exc.message
        assert (tmp_path / "beat").exists()
        assert not _still_growing(tmp_path / "beat"), f"a child that ran {escape} survived"


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


def test_code_size_is_capped(tools: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="code longer than 100000"):
        tools.call("python", {"code": "#" * 100_001})


def test_limits_validated_processes() -> None:
    with pytest.raises(ConfigError, match="max_processes"):
        SandboxLimits(max_processes=0)


def test_memory_cap_is_for_all_processes_together(tmp_path: Path, isolation_mode: str) -> None:
    if not Path("/proc/self/statm").exists():
        pytest.skip("the summed memory cap reads /proc (Linux)")
    tools = builtin_registry(
        PermissionPolicy(tmp_path, allow_python=True), SandboxLimits(memory_mb=256)
    )
    hog = "import time\nb = b'x' * (120 * 1024 * 1024)\ntime.sleep(30)\n"
    code = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen([sys.executable, '-c', {hog!r}]) for _ in range(4)]\n"
        "time.sleep(30)\n"
    )
    start = time.monotonic()
    out = tools.call("python", {"code": code, "timeout_s": 20})
    assert out.endswith("[killed: the sandbox's processes used more than 256 MiB together]")
    assert time.monotonic() - start < 15


def test_file_size_limit_gives_efbig(tmp_path: Path) -> None:
    tools = builtin_registry(
        PermissionPolicy(tmp_path, allow_python=True), SandboxLimits(max_file_bytes=1024 * 1024)
    )
    out = tools.call("python", {"code": "open('big', 'wb').write(b'x' * (2 * 1024 * 1024))"})
    assert "OSError: [Errno 27] File too large" in out and out.endswith("[exit code 1]")
    assert (tmp_path / "big").stat().st_size <= 1024 * 1024


def _run_with_secret_env(tmp_path: Path, code: str) -> str:
    """Run the python tool from a fresh agentrt process whose environment holds a secret."""
    import subprocess
    import sys

    driver = (
        "import sys\n"
        "from pathlib import Path\n"
        "from agentrt.tools import SandboxLimits, run_python\n"
        "print(run_python(sys.argv[1], Path(sys.argv[2]), 10, SandboxLimits()))\n"
    )
    env = {**os.environ, "AGENTRT_DB": "postgresql://alice:S3cretPW@db/agentrt"}
    done = subprocess.run(
        [sys.executable, "-c", driver, code, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_parent_environment_is_not_readable(tmp_path: Path) -> None:
    from agentrt.tools.sandbox import isolation

    code = (
        "import os\n"
        "print('ppid env:', open(f'/proc/{os.getppid()}/environ', 'rb').read())\n"
        "leaks = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        if b'S3cretPW' in open(f'/proc/{pid}/environ', 'rb').read(): leaks.append(pid)\n"
        "    except OSError: pass\n"
        "print('leaks:', len(leaks))\n"
    )
    if not Path("/proc/self/environ").exists():
        pytest.skip("no /proc here")
    out = _run_with_secret_env(tmp_path, code)
    assert "ppid env:" in out and "S3cretPW" not in out.split("leaks:")[0]
    if isolation(SandboxLimits()) == "namespaces":  # only the sandbox's own processes are visible
        assert "leaks: 0" in out, out


def test_network_is_blocked_where_namespaces_exist(tools: ToolRegistry) -> None:
    import socket

    from agentrt.tools.sandbox import isolation

    if isolation(SandboxLimits()) != "namespaces":
        pytest.skip("no unprivileged network namespace on this host: network is not blocked")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\n"
            "except OSError as exc: print('refused', exc.errno)\n"
        )
        assert tools.call("python", {"code": code}).startswith("refused")


def test_process_count_is_capped(tmp_path: Path, isolation_mode: str) -> None:
    # RLIMIT_NPROC refuses the fork (not for root); the supervisor's count kills the run
    if not Path("/proc/self/task").exists():
        pytest.skip("the supervisor counts processes through /proc (Linux)")
    tools = builtin_registry(
        PermissionPolicy(tmp_path, allow_python=True), SandboxLimits(max_processes=4)
    )
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(50):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5); os._exit(0)\n"
        "        n += 1\n"
        "except BlockingIOError: print('refused after', n)\n"
    )
    start = time.monotonic()
    out = tools.call("python", {"code": code, "timeout_s": 20})
    assert time.monotonic() - start < 10
    # the code itself counts: RLIMIT_NPROC (non-root) refuses its 4th child
    refused = out == "refused after 3\n"
    assert refused or out.endswith("[killed: the code ran more than 4 processes at once]"), out


def test_a_fork_burst_between_two_polls_is_counted(tmp_path: Path, isolation_mode: str) -> None:
    # the code forks 10 sleepers and exits at once, likely between two 20 ms polls: the
    # orphans are the supervisor's (subreaper / PID 1) and are counted after the exit
    if not Path("/proc/self/task").exists():
        pytest.skip("the supervisor counts processes through /proc (Linux)")
    tools = builtin_registry(
        PermissionPolicy(tmp_path, allow_python=True), SandboxLimits(max_processes=4)
    )
    code = (
        "import os, time\n"
        "try:\n"
        "    for _ in range(10):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(5); os._exit(0)\n"
        "except BlockingIOError: print('refused')\n"
    )
    start = time.monotonic()
    out = tools.call("python", {"code": code, "timeout_s": 20})
    assert time.monotonic() - start < 4  # the sleepers were killed, not waited for
    assert out == "refused\n" or out.endswith(
        "[killed: the code ran more than 4 processes at once]"
    )


def test_children_are_killed_when_the_code_kills_its_supervisor(
    tools: ToolRegistry, tmp_path: Path, isolation_mode: str
) -> None:
    # with namespaces the supervisor is PID 1 there and the kill is ignored; without, agentrt
    # kills what is left of the supervisor's session
    code = (
        "import os, signal, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {_HEARTBEAT!r}])\n"
        "time.sleep(0.3)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
        "time.sleep(0.3)\n"
    )
    tools.call("python", {"code": code})
    assert (tmp_path / "beat").exists()
    assert not _still_growing(tmp_path / "beat"), "a child outlived its killed supervisor"
