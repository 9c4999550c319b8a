"""Run untrusted Python in a subprocess with time, memory and output limits (POSIX only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ConfigError, ToolError


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of the python tool: address space, longest timeout, output and file sizes."""

    memory_mb: int = 512
    max_timeout_s: float = 60.0
    max_output_chars: int = 16_000
    max_file_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        """Check that every limit is positive."""
        for key in ("memory_mb", "max_timeout_s", "max_output_chars", "max_file_bytes"):
            value = getattr(self, key)
            if not value > 0:
                raise ConfigError(f"sandbox limit {key}={value!r} must be positive")


def _limiter(limits: SandboxLimits) -> Callable[[], None]:
    """A preexec_fn that applies the resource limits in the child before exec."""

    def apply() -> None:
        """Set RLIMIT_AS, RLIMIT_FSIZE and RLIMIT_CORE in the child process."""
        import resource

        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group and reap the child."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _truncate(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a note saying how much was dropped."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output truncated: {len(text) - limit} more characters]"


def run_python(code: str, workspace: Path, timeout_s: float, limits: SandboxLimits) -> str:
    """Run `code` with `python -I -c` in `workspace`; return stdout+stderr, or ToolError on timeout."""
    if not 0 < timeout_s <= limits.max_timeout_s:
        raise ToolError(f"timeout_s={timeout_s!r} must be > 0 and <= {limits.max_timeout_s:g} s")
    if sys.platform == "win32":
        raise ToolError("the python tool needs a POSIX system (resource limits, process groups)")
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-u", "-c", code],
            cwd=workspace,
            env={"PATH": os.defpath},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limiter(limits),
        )
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ToolError(f"timed out after {timeout_s:g} s; the process was killed") from None
        finally:
            if proc.returncode is None:
                _kill_group(proc)
        # Leftover grandchildren share the group: kill them too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        out.seek(0)
        text = out.read(limits.max_output_chars * 4 + 1).decode("utf-8", errors="replace")
    text = _truncate(text, limits.max_output_chars)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        text += f"\n[killed by signal {name}]"
    elif returncode != 0:
        text += f"\n[exit code {returncode}]"
    return text


__all__ = ["SandboxLimits", "run_python"]
