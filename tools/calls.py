"""Parse tool calls out of model text: Hermes/Qwen `<tool_call>` tags and Llama 3.1 JSON."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"
_LLAMA_END_TOKENS = ("<|eom_id|>", "<|eot_id|>")


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call: the tool's name, its arguments, and the raw text it came from."""

    name: str
    arguments: dict[str, Any] = field(repr=False)
    raw: str = field(repr=False)

    def __repr__(self) -> str:
        """Name and argument keys only: argument values may hold user text."""
        return f"ToolCall(name={self.name!r}, argument_keys={sorted(self.arguments)})"


@dataclass(frozen=True)
class ToolCallError:
    """A tool call that could not be parsed; `message` goes back to the model as a tool message."""

    message: str
    raw: str = field(repr=False)
    name: str | None = None


ParsedCall = ToolCall | ToolCallError


def _from_json(body: str, args_keys: tuple[str, ...]) -> ParsedCall:
    """A ToolCall from one JSON object with a name and arguments, or a ToolCallError saying why not."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ToolCallError(f"tool call is not valid JSON: {exc.msg} at position {exc.pos}", body)
    return _from_object(obj, body, args_keys)


def _from_object(obj: Any, body: str, args_keys: tuple[str, ...]) -> ParsedCall:
    """A ToolCall from one decoded JSON value, or a ToolCallError saying why not."""
    if not isinstance(obj, dict):
        return ToolCallError("tool call must be a JSON object with 'name' and arguments", body)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCallError("tool call has no 'name' string", body)
    arguments: Any = {}
    for key in args_keys:
        if key in obj:
            arguments = obj[key]
            break
    if isinstance(arguments, str):  # some models encode the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return ToolCallError(f"arguments of {name!r} are not valid JSON: {exc.msg}", body, name)
    if not isinstance(arguments, dict):
        return ToolCallError(f"arguments of {name!r} must be a JSON object", body, name)
    return ToolCall(name, arguments, body)


def _from_tag(body: str) -> list[ParsedCall]:
    """The calls of one tag body: a JSON object, or a JSON list of them (SmolLM2's format)."""
    keys = ("arguments", "parameters")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return [_from_json(body, keys)]
    if isinstance(obj, list) and all(isinstance(item, dict) for item in obj):  # `[]`: no call
        return [_from_object(item, json.dumps(item), keys) for item in obj]
    return [_from_object(obj, body, keys)]


def parse_hermes(text: str) -> list[ParsedCall]:
    """Every call in `<tool_call>{json}</tool_call>` tags of `text` (a tag may hold a JSON list;
    an unclosed last tag runs to the end)."""
    return [call for m in _HERMES.finditer(text) for call in _from_tag(m.group(1).strip())]


def parse_llama(text: str) -> list[ParsedCall]:
    """A Llama 3.1 JSON call `{"name": ..., "parameters": {...}}` forming the whole message."""
    body = text.strip()
    tagged = body.startswith(PYTHON_TAG)
    if tagged:
        body = body[len(PYTHON_TAG) :].strip()
    for end in _LLAMA_END_TOKENS:
        body = body.removesuffix(end).rstrip()
    if not tagged and not (body.startswith("{") and '"name"' in body):
        return []
    return [_from_json(body, ("parameters", "arguments"))]


def parse_tool_calls(text: str) -> list[ParsedCall]:
    """The tool calls in a model message, Hermes/Qwen tags first, else Llama 3.1 JSON; [] if none."""
    if "<tool_call>" in text:
        return parse_hermes(text)
    return parse_llama(text)


__all__ = [
    "ParsedCall",
    "ToolCall",
    "ToolCallError",
    "parse_hermes",
    "parse_llama",
    "parse_tool_calls",
]
