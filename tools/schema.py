"""JSON schemas of tool functions, derived from their signatures (OpenAI/Hermes "function" style)."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def first_line(doc: str | None) -> str:
    """The first non-empty line of a docstring, or an empty string."""
    for line in (doc or "").strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _annotation_schema(annotation: Any, fn_name: str, param: str) -> dict[str, Any]:
    """The JSON schema of one parameter's annotation; TypeError if unsupported."""
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is list and len(args) == 1 and args[0] in _SCALARS:
        return {"type": "array", "items": {"type": _SCALARS[args[0]]}}
    if origin is Literal and args:
        kinds = {type(a) for a in args}
        if len(kinds) == 1 and kinds <= set(_SCALARS):
            return {"type": _SCALARS[kinds.pop()], "enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            inner = _annotation_schema(rest[0], fn_name, param)
            return {**inner, "type": [inner["type"], "null"]}
    raise TypeError(
        f"tool {fn_name!r}: parameter {param!r} has unsupported annotation {annotation!r}; "
        "use str, int, float, bool, list[str|int|float|bool], Literal[...] or X | None"
    )


def tool_schema(fn: Callable[..., Any], name: str | None = None) -> dict[str, Any]:
    """The "function"-style JSON schema of `fn` (name, description, parameters)."""
    fn_name = name or fn.__name__
    try:
        hints = typing.get_type_hints(fn, include_extras=False)
    except Exception as exc:
        raise TypeError(f"tool {fn_name!r}: cannot resolve type hints: {exc}") from exc
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"tool {fn_name!r}: parameter {pname!r} must be a named parameter")
        if pname not in hints:
            raise TypeError(f"tool {fn_name!r}: parameter {pname!r} has no type annotation")
        prop = _annotation_schema(hints[pname], fn_name, pname)
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            prop["default"] = param.default
        properties[pname] = prop
    return {
        "type": "function",
        "function": {
            "name": fn_name,
            "description": first_line(fn.__doc__),
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


def check_value(value: Any, prop: dict[str, Any]) -> bool:
    """Whether `value` matches one property schema produced by `tool_schema`."""
    kind = prop["type"]
    if isinstance(kind, list):
        if value is None:
            return "null" in kind
        kind = kind[0]
    if kind == "array":
        return isinstance(value, list) and all(check_value(v, prop["items"]) for v in value)
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
    }[kind]
    if ok and "enum" in prop:
        return value in prop["enum"]
    return ok


__all__ = ["check_value", "first_line", "tool_schema"]
