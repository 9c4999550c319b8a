"""Tools as plain typed functions, registered by name and called with validated arguments."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, overload

from agentrt.errors import ToolError
from agentrt.tools.policy import PermissionPolicy
from agentrt.tools.schema import check_value, first_line, tool_schema


@dataclass(frozen=True)
class Tool:
    """A named, described function with its JSON schema and the permission it needs."""

    name: str
    description: str
    fn: Callable[..., Any]
    schema: dict[str, Any]
    requires_permission: str | None = None

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], name: str | None = None, permission: str | None = None
    ) -> Tool:
        """Build a Tool from a typed function: name, docstring line and signature schema."""
        tool_name = name or fn.__name__
        return cls(
            name=tool_name,
            description=first_line(fn.__doc__),
            fn=fn,
            schema=tool_schema(fn, name=tool_name),
            requires_permission=permission,
        )

    @property
    def parameters(self) -> dict[str, Any]:
        """The "parameters" object of the schema."""
        return self.schema["function"]["parameters"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (no validation, no policy)."""
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, permission: str | None = None
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    permission: str | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Decorator turning a function into a Tool: `@tool` or `@tool(name=..., permission=...)`."""
    if fn is not None:
        return Tool.from_function(fn, name=name, permission=permission)
    return lambda f: Tool.from_function(f, name=name, permission=permission)


def _result_text(result: Any) -> str:
    """A tool's return value as the text of a `tool` message."""
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(result)


class ToolRegistry:
    """Tools by name; `call` validates arguments, consults the policy, and runs the tool."""

    def __init__(self, policy: PermissionPolicy | None = None) -> None:
        """An empty registry; without a policy, tools needing a permission are refused."""
        self.policy = policy
        self._tools: dict[str, Tool] = {}

    def register(self, item: Tool | Callable[..., Any]) -> Tool:
        """Add a Tool (or a plain function, wrapped with Tool.from_function); returns it."""
        new = item if isinstance(item, Tool) else Tool.from_function(item)
        if new.name in self._tools:
            raise ToolError(f"a tool named {new.name!r} is already registered")
        self._tools[new.name] = new
        return new

    def get(self, name: str) -> Tool:
        """The tool called `name`; ToolError listing the known names otherwise."""
        try:
            return self._tools[name]
        except KeyError:
            known = ", ".join(sorted(self._tools)) or "(none)"
            raise ToolError(f"unknown tool {name!r}; known tools: {known}") from None

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        """The JSON schemas of all tools, for the chat template's `tools=` argument."""
        return [t.schema for t in self._tools.values()]

    def __contains__(self, name: object) -> bool:
        """Whether a tool of that name is registered."""
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        """The registered tools."""
        return iter(self._tools.values())

    def __len__(self) -> int:
        """The number of registered tools."""
        return len(self._tools)

    def validate(self, tool_: Tool, arguments: Any) -> dict[str, Any]:
        """Check `arguments` against the tool's schema, collecting every problem into one ToolError."""
        if not isinstance(arguments, dict):
            raise ToolError(
                f"tool {tool_.name!r}: arguments must be a JSON object, got {type(arguments).__name__}"
            )
        params = tool_.parameters
        props: dict[str, Any] = params["properties"]
        problems = [
            f"missing required argument {k!r}" for k in params["required"] if k not in arguments
        ]
        problems += [
            f"unknown argument {k!r} (expected one of: {', '.join(props) or 'none'})"
            for k in arguments
            if k not in props
        ]
        for key, value in arguments.items():
            if key in props and not check_value(value, props[key]):
                want = props[key].get("enum") or props[key]["type"]
                problems.append(
                    f"argument {key!r} should be {want}, got {type(value).__name__} {value!r:.60}"
                )
        if problems:
            raise ToolError(f"tool {tool_.name!r}: " + "; ".join(problems))
        return dict(arguments)

    def call(self, name: str, arguments: Any) -> str:
        """Run tool `name` with `arguments` and return its result as text, or raise ToolError."""
        tool_ = self.get(name)
        if tool_.requires_permission is not None:
            if self.policy is None:
                raise ToolError(
                    f"tool {name!r} needs the {tool_.requires_permission!r} permission "
                    "and this registry has no permission policy"
                )
            self.policy.check(tool_.requires_permission, name)
        kwargs = self.validate(tool_, arguments)
        try:
            result = tool_.fn(**kwargs)
        except ToolError as exc:
            raise ToolError(f"tool {name!r}: {exc.message}", hint=exc.hint) from exc
        except Exception as exc:
            raise ToolError(f"tool {name!r} failed: {type(exc).__name__}: {exc}") from exc
        return _result_text(result)


__all__ = ["Tool", "ToolRegistry", "tool"]
