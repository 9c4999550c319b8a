"""tool_schema: JSON schemas from function signatures."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from agentrt.tools import tool_schema


def greet(name: str, times: int = 1, loud: bool = False) -> str:
    """Greet someone.

    Longer text that must not reach the description.
    """
    return name


def pick(
    mode: Literal["fast", "slow"], tags: list[str], ratio: float, note: str | None = None
) -> str:
    """Pick a mode."""
    return mode


def test_scalars_defaults_and_description() -> None:
    schema = tool_schema(greet)
    fn = schema["function"]
    assert schema["type"] == "function"
    assert fn["name"] == "greet"
    assert fn["description"] == "Greet someone."
    assert fn["parameters"] == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "times": {"type": "integer", "default": 1},
            "loud": {"type": "boolean", "default": False},
        },
        "required": ["name"],
    }


def test_literal_list_float_optional() -> None:
    props = tool_schema(pick)["function"]["parameters"]["properties"]
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["ratio"] == {"type": "number"}
    assert props["note"] == {"type": ["string", "null"], "default": None}
    assert tool_schema(pick)["function"]["parameters"]["required"] == ["mode", "tags", "ratio"]


def test_name_override_and_empty_signature() -> None:
    def ping() -> str:
        return "pong"

    schema = tool_schema(ping, name="health")
    assert schema["function"]["name"] == "health"
    assert schema["function"]["description"] == ""
    assert schema["function"]["parameters"]["properties"] == {}


def bad_dict(data: dict[str, Any]) -> str:
    """Unsupported."""
    return ""


def bad_missing(x) -> str:
    """No annotation."""
    return ""


def bad_kwargs(**kw: str) -> str:
    """Var keyword."""
    return ""


@pytest.mark.parametrize(
    ("fn", "param"),
    [(bad_dict, "data"), (bad_missing, "x"), (bad_kwargs, "kw")],
    ids=["dict", "no-annotation", "var-keyword"],
)
def test_unsupported_annotations_name_the_parameter(fn: Any, param: str) -> None:
    with pytest.raises(TypeError, match=repr(param)):
        tool_schema(fn)
