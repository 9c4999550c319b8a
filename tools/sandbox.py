"""Run untrusted Python under a supervisor with time, memory, process and output limits (POSIX only).

agentrt starts `sandbox_supervisor.py` in an empty environment and a new session; where
Linux allows unprivileged namespaces (`unshare --user --pid --mount-proc --net`), inside new
user, PID, mount and network namespaces. The supervisor runs the code as its child, polls
the summed memory of every descendant, and kills them all on exit, timeout or overuse.
docs/SECURITY.md says what this stops and what it does not.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ConfigError, ToolError

_SUPERVISOR = Path(__file__).with_name("sandbox_supervisor.py")
_GRACE_S = 10.0  # how long past the timeout agentrt waits for the supervisor before killing it
_LOCALE = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
MAX_CODE_CHARS = 100_000  # the code travels as one argv string (Linux caps those at 128 KiB)


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of the python tool: memory, timeout, output, file size, processes, network."""

    memory_mb: int = 512
    max_timeout_s: float = 60.0
    max_output_chars: int = 16_000
    max_file_bytes: int = 8 * 1024 * 1024
    max_processes: int = 32
    allow_network: bool = False

    def __post_init__(self) -> None:
        """Check that every limit is positive."""
        for key in ("memory_mb", "max_timeout_s", "max_output_chars", "max_file_bytes"):
            value = getattr(self, key)
            if not value > 0:
                raise ConfigError(f"sandbox limit {key}={value!r} must be positive")
        if not self.max_processes >= 1:
            raise ConfigError(f"sandbox limit max_processes={self.max_processes!r} must be >= 1")


def clean_env() -> dict[str, str]:
    """The whole environment the supervisor and the code get: PATH and a UTF-8 locale."""
    return {"PATH": os.defpath, **_LOCALE}


@functools.cache
def namespace_prefix(network: bool) -> tuple[str, ...]:
    """The `unshare` command that isolates the sandbox on this host, or () when none works."""
    unshare = shutil.which("unshare") if sys.platform == "linux" else None
    if unshare is None:
        return ()
    base = ("--pid", "--fork", "--kill-child", "--mount-proc")
    if not network:
        base += ("--net",)
    for user in (("--map-current-user",), ("--map-root-user",)):
        prefix = (unshare, *user, *base, "--")
        try:
            probe = subprocess.run(
                [*prefix, sys.executable, "-I", "-S", "-c", "import os; print(os.getpid())"],
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "1":
            return prefix
    return ()


def isolation(limits: SandboxLimits) -> str:
    """'namespaces' when the sandbox gets its own user/PID/mount(/net) namespaces, else 'session'."""
    return "namespaces" if namespace_prefix(limits.allow_network) else "session"


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the supervisor's process group (its session) and reap the supervisor."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _kill_leftovers(session: int) -> None:
    """SIGKILL every process of the supervisor's session (for when the code killed the supervisor)."""
    for stat in Path("/proc").glob("[0-9]*/stat") if sys.platform == "linux" else []:
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ...
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _output(out: tempfile._TemporaryFileWrapper[bytes], limit: int) -> str:
    """The captured output cut to `limit` characters, with an exact note of what was left out."""
    total = os.fstat(out.fileno()).st_size
    out.seek(0)
    # surrogateescape keeps one character per undecodable byte, so the count stays exact
    chunk = out.read(limit * 4).decode("utf-8", errors="surrogateescape")[:limit]
    raw = chunk.encode("utf-8", errors="surrogateescape")
    text = raw.decode("utf-8", errors="replace")
    if total > len(raw):
        text += f"\n[output truncated: showed {limit} characters; {total - len(raw)} more bytes]"
    return text


def run_python(code: str, workspace: Path, timeout_s: float, limits: SandboxLimits) -> str:
    """Run `code` with `python -I -c` in `workspace`; return stdout+stderr, or ToolError on timeout."""
    if not 0 < timeout_s <= limits.max_timeout_s:
        raise ToolError(f"timeout_s={timeout_s!r} must be > 0 and <= {limits.max_timeout_s:g} s")
    if os.name != "posix":
        raise ToolError("the python tool needs a POSIX system (resource limits, process groups)")
    if len(code) > MAX_CODE_CHARS:
        raise ToolError(f"code longer than {MAX_CODE_CHARS} characters; write it to a file first")
    settings = {
        "python": sys.executable,
        "code": code,
        "cwd": str(workspace),
        "env": clean_env(),
        "timeout_s": timeout_s,
        "memory_bytes": limits.memory_mb * 1024 * 1024,
        "file_bytes": limits.max_file_bytes,
        "max_processes": limits.max_processes,
        "total_memory": sys.platform == "linux",
    }
    command = [
        *namespace_prefix(limits.allow_network),
        sys.executable,
        "-I",
        "-S",
        "-c",
        _SUPERVISOR.read_text(),
    ]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command,
            cwd=workspace,
            env=clean_env(),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(json.dumps(settings).encode(), timeout=timeout_s + _GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            raise ToolError(f"timed out after {timeout_s:g} s; the process was killed") from None
        finally:
            if proc.returncode is None:
                _kill_session(proc)
        try:  # anything left in the supervisor's process group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        text = _output(out, limits.max_output_chars)
    lines = err.decode("utf-8", errors="replace").strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        _kill_leftovers(proc.pid)
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        return text + f"\n[the sandbox supervisor stopped early: {detail}]"
    if report["status"] == "timeout":
        raise ToolError(f"timed out after {timeout_s:g} s; the process was killed")
    if report["status"] == "processes":
        return text + f"\n[killed: the code ran more than {limits.max_processes} processes at once]"
    if report["status"] == "memory":
        return text + (
            f"\n[killed: the sandbox's processes used more than {limits.memory_mb} MiB together]"
        )
    returncode = report["returncode"]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        text += f"\n[killed by signal {name}]"
    elif returncode != 0:
        text += f"\n[exit code {returncode}]"
    return text


__all__ = ["SandboxLimits", "clean_env", "isolation", "namespace_prefix", "run_python"]
