"""ToolRegistry: registration, validation, errors, and the permission policy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from agentrt.errors import ConfigError, ToolError
from agentrt.tools import PermissionPolicy, Tool, ToolRegistry, tool


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return a + b


@tool(name="boom", permission=None)
def explode(message: str) -> str:
    """Always fails."""
    raise RuntimeError(message)


@tool(permission="write")
def scribble(text: str) -> str:
    """Pretend to write."""
    return f"wrote {text}"


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    reg = ToolRegistry(PermissionPolicy(tmp_path))
    for t in (add, explode, scribble):
        reg.register(t)
    return reg


def test_tool_from_function_fields() -> None:
    assert isinstance(add, Tool)
    assert (add.name, add.description, add.requires_permission) == (
        "add",
        "Add two integers.",
        None,
    )
    assert explode.name == "boom"
    assert scribble.requires_permission == "write"
    assert add(1) == 3  # a Tool stays callable


def test_call_returns_text_and_schemas_listed(registry: ToolRegistry) -> None:
    assert registry.call("add", {"a": 40}) == "42"
    assert registry.call("add", {"a": 1, "b": 1}) == "2"
    assert [s["function"]["name"] for s in registry.schemas()] == ["add", "boom", "scribble"]
    assert registry.names() == ["add", "boom", "scribble"] and len(registry) == 3


def test_unknown_tool_lists_known(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match=r"unknown tool 'nope'; known tools: add, boom, scribble"):
        registry.call("nope", {})


def test_duplicate_registration_refused(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="already registered"):
        registry.register(add)


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [
        ({}, r"'add': missing required argument 'a'"),
        ({"a": 1, "c": 3}, r"'add': unknown argument 'c'"),
        ({"a": "1"}, r"'add': argument 'a' should be integer, got str"),
        ({"a": True}, r"'add': argument 'a' should be integer, got bool"),
        ({"a": 1.5}, r"'add': argument 'a' should be integer, got float"),
        (["a"], r"'add': arguments must be a JSON object"),
    ],
    ids=["missing", "unknown", "str-for-int", "bool-for-int", "float-for-int", "not-object"],
)
def test_validation_errors_name_tool_and_key(
    registry: ToolRegistry, arguments: object, pattern: str
) -> None:
    with pytest.raises(ToolError, match=pattern):
        registry.call("add", arguments)


def test_validation_collects_all_problems(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError) as info:
        registry.call("add", {"b": "x", "z": 0})
    text = str(info.value)
    assert "missing required argument 'a'" in text
    assert "unknown argument 'z'" in text
    assert "argument 'b' should be integer" in text


def test_enum_list_and_float_validation(tmp_path: Path) -> None:
    def mode(kind: Literal["a", "b"], xs: list[int], ratio: float = 0.5) -> str:
        """Echo."""
        return f"{kind}{sum(xs)}{ratio}"

    reg = ToolRegistry()
    reg.register(mode)
    assert reg.call("mode", {"kind": "a", "xs": [1, 2], "ratio": 1}) == "a31"
    with pytest.raises(ToolError, match=r"argument 'kind' should be \['a', 'b'\]"):
        reg.call("mode", {"kind": "c", "xs": []})
    with pytest.raises(ToolError, match=r"argument 'xs' should be array"):
        reg.call("mode", {"kind": "a", "xs": [1, "2"]})


def test_tool_exception_becomes_tool_error_without_traceback(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError) as info:
        registry.call("boom", {"message": "disk on fire"})
    text = str(info.value)
    assert text == "tool 'boom' failed: RuntimeError: disk on fire"
    assert "Traceback" not in text and 'File "' not in text
    assert info.value.exit_code == 7


def test_permission_denied_names_the_option(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="'write' permission") as info:
        registry.call("scribble", {"text": "x"})
    assert "allow_write=True" in str(info.value)


def test_permission_allowed(tmp_path: Path) -> None:
    reg = ToolRegistry(PermissionPolicy(tmp_path, allow_write=True))
    reg.register(scribble)
    assert reg.call("scribble", {"text": "x"}) == "wrote x"


def test_permission_needs_a_policy() -> None:
    reg = ToolRegistry()
    reg.register(scribble)
    with pytest.raises(ToolError, match="no permission policy"):
        reg.call("scribble", {"text": "x"})


def test_policy_checked_before_arguments(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="not permitted"):
        registry.call("scribble", {})


def test_policy_requires_existing_workspace(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workspace="):
        PermissionPolicy(tmp_path / "missing")
    assert PermissionPolicy(tmp_path / ".").workspace == tmp_path.resolve()
