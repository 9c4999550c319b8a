"""The agent task's tools as `agentrt.tools` Tools over an item's virtual workspace.

Tools run against an item's files (`{path: text}`), never the real disk. Calls are parsed
with `agentrt.tools.parse_tool_calls` and validated by the `ToolRegistry`, the same as in
the agent loop; `calculator` is the built-in one (results printed without a trailing `.0`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentrt.errors import ToolError
from agentrt.tools import Tool, ToolCallError, ToolRegistry
from agentrt.tools import parse_tool_calls as parse_calls
from agentrt.tools.calculator import calculate as evaluate_expression

MAX_RESULT_CHARS = 800
MAX_SEARCH_HITS = 10


def _schema(name: str, description: str, arg: str, arg_doc: str) -> dict[str, Any]:
    """An OpenAI-style function schema with one required string argument."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": "string", "description": arg_doc}},
                "required": [arg],
            },
        },
    }


TOOLS: dict[str, dict[str, Any]] = {
    "calculator": _schema(
        "calculator", "Evaluate an arithmetic expression.", "expression", "e.g. (12 + 7) * 3"
    ),
    "read_file": _schema("read_file", "Read a file of the workspace.", "path", "file path"),
    "search_text": _schema(
        "search_text", "Find the workspace lines that contain a text.", "query", "text to find"
    ),
}


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call; `error` is None when it parses and fits its tool's schema."""

    name: str | None
    arguments: dict[str, Any]
    error: str | None = None


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """The Hermes/Qwen text of one call: <tool_call>\\n{json}\\n</tool_call>."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def calculate(expression: str) -> str:
    """The built-in calculator's result as text (`5`, not `5.0`), or `error: ...`."""
    try:
        value = evaluate_expression(expression.replace("×", "*"))
    except ToolError as err:
        return f"error: {err.message}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


def registry(files: dict[str, str] | None = None, names: list[str] | None = None) -> ToolRegistry:
    """The tools (all, or `names` in that order) bound to an item's virtual files."""
    files = files or {}

    def calculator(expression: str) -> str:
        return calculate(expression)

    def read_file(path: str) -> str:
        return files.get(path.strip(), f"error: no such file: {path}")

    def search_text(query: str) -> str:
        needle = query.strip().lower()
        hits = [
            f"{path}:{no}: {line}"
            for path, text in sorted(files.items())
            for no, line in enumerate(text.splitlines(), 1)
            if needle and needle in line.lower()
        ]
        return "\n".join(hits[:MAX_SEARCH_HITS]) if hits else "no matches"

    fns = {"calculator": calculator, "read_file": read_file, "search_text": search_text}
    reg = ToolRegistry()
    for name in names or list(TOOLS):
        schema = TOOLS[name]
        reg.register(Tool(name, schema["function"]["description"], fns[name], schema))
    return reg


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every tool call of a reply, parsed (agentrt.tools) and validated against TOOLS."""
    reg = registry()
    out = []
    for call in parse_calls(text):
        if isinstance(call, ToolCallError):
            out.append(ToolCall(call.name, {}, call.message))
            continue
        try:
            reg.validate(reg.get(call.name), call.arguments)
        except ToolError as err:
            out.append(ToolCall(call.name, call.arguments, err.message))
            continue
        out.append(ToolCall(call.name, call.arguments))
    return out


def run_tool(call: ToolCall, files: dict[str, str]) -> str:
    """The tool message content for one call on the workspace `files` (errors as text)."""
    if call.error is not None:
        return f"error: {call.error}"
    try:
        out = registry(files).call(call.name, call.arguments)
    except ToolError as err:
        out = f"error: {err.message}"
    return out[:MAX_RESULT_CHARS]
