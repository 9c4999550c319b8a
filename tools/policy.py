"""The permission policy: data saying which opt-in tool capabilities a task grants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentrt.errors import ConfigError, ToolError

# permission name -> the policy option that grants it
PERMISSIONS: dict[str, str] = {"write": "allow_write", "python": "allow_python"}


@dataclass(frozen=True)
class PermissionPolicy:
    """Which opt-in tools may run, and the workspace that file tools are confined to."""

    workspace: Path
    allow_write: bool = False
    allow_python: bool = False

    def __post_init__(self) -> None:
        """Resolve the workspace and check that it is an existing directory."""
        workspace = Path(self.workspace).expanduser().resolve()
        if not workspace.is_dir():
            raise ConfigError(
                f"workspace={str(self.workspace)!r} is not an existing directory",
                hint="create the folder or point the task's workspace at one",
            )
        object.__setattr__(self, "workspace", workspace)

    def check(self, permission: str | None, tool_name: str) -> None:
        """Raise ToolError unless the policy grants `permission` (None needs nothing)."""
        if permission is None:
            return
        option = PERMISSIONS.get(permission)
        if option is None:
            raise ToolError(f"tool {tool_name!r} requires unknown permission {permission!r}")
        if not getattr(self, option):
            raise ToolError(
                f"tool {tool_name!r} is not permitted: it needs the {permission!r} permission",
                hint=f"enable it with {option}=True in the permission policy",
            )


__all__ = ["PERMISSIONS", "PermissionPolicy"]
