"""The AgentRTError hierarchy: every error a user can cause, with a message that says what to do.

This module imports nothing (not even torch), so every package of the project
(`agentrt.dms`, `agentrt.kernels`, `agentrt.tools`, `agentrt.sessions`) may import it
without pulling in the runtime. It is the one sanctioned exception to the dependency
arrows of DESIGN.md §1.
"""

from __future__ import annotations


class AgentRTError(Exception):
    """Base class of errors a user can cause; the CLI prints them without a traceback."""

    exit_code: int = 1
    title: str = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(AgentRTError):
    """A configuration value (flag, env var, config key) is invalid."""

    exit_code = 2
    title = "configuration error"


class ModelLoadError(AgentRTError):
    """A model cannot be found, read or served (unsupported architecture, missing weights)."""

    exit_code = 3
    title = "model error"


class CheckpointError(AgentRTError):
    """A checkpoint is corrupt, missing, or belongs to another model."""

    exit_code = 4
    title = "checkpoint error"


class BudgetError(AgentRTError):
    """The KV memory budget cannot hold what was asked for."""

    exit_code = 5
    title = "memory budget exhausted"


class TaskFileError(AgentRTError):
    """A task file is malformed; the message names the key and the line."""

    exit_code = 6
    title = "task file error"


class ToolError(AgentRTError):
    """A tool failed, timed out, or was called with invalid arguments."""

    exit_code = 7
    title = "tool error"


class SessionError(AgentRTError):
    """A session is unknown, busy (single-writer), or in a state that forbids the operation."""

    exit_code = 8
    title = "session error"


class DatabaseError(AgentRTError):
    """The metadata database is unreachable or its schema needs a migration."""

    exit_code = 9
    title = "database error"


# Exit codes the CLI documents (README "Exit codes"). 1 = generic AgentRTError,
# 130 = interrupted, anything else unexpected keeps Python's traceback and exits 1.
EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        AgentRTError,
        ConfigError,
        ModelLoadError,
        CheckpointError,
        BudgetError,
        TaskFileError,
        ToolError,
        SessionError,
        DatabaseError,
    )
}

__all__ = [
    "AgentRTError",
    "BudgetError",
    "CheckpointError",
    "ConfigError",
    "DatabaseError",
    "EXIT_CODES",
    "ModelLoadError",
    "SessionError",
    "TaskFileError",
    "ToolError",
]
