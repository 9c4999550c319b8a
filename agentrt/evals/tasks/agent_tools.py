"""The agent task's tools: JSON schemas, Hermes/Qwen `<tool_call>` parsing, validation, execution.

Tools run against an item's virtual workspace (`{path: text}`), never the real disk.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass
from typing import Any

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
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
    """One parsed tool call; `error` is None when it parses and validates."""

    name: str | None
    arguments: dict[str, Any]
    error: str | None = None


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """The Hermes/Qwen text of one call: <tool_call>\\n{json}\\n</tool_call>."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def validate(name: Any, arguments: Any) -> str | None:
    """Why a call does not fit its tool's schema (unknown name, missing/extra/mistyped args)."""
    if not isinstance(name, str) or name not in TOOLS:
        return f"unknown tool {name!r}; valid: {', '.join(TOOLS)}"
    if not isinstance(arguments, dict):
        return f"{name}: arguments must be an object"
    params = TOOLS[name]["function"]["parameters"]
    missing = [k for k in params["required"] if k not in arguments]
    extra = [k for k in arguments if k not in params["properties"]]
    wrong = [
        k for k, v in arguments.items() if k in params["properties"] and not isinstance(v, str)
    ]
    problems = [f"missing {k!r}" for k in missing] + [f"unknown {k!r}" for k in extra]
    problems += [f"{k!r} must be a string" for k in wrong]
    return f"{name}: " + "; ".join(problems) if problems else None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every <tool_call>…</tool_call> block of a reply, parsed and validated."""
    calls = []
    for body in TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            calls.append(ToolCall(None, {}, f"invalid JSON: {err.msg}"))
            continue
        if not isinstance(obj, dict):
            calls.append(ToolCall(None, {}, "a tool call must be a JSON object"))
            continue
        name, args = obj.get("name"), obj.get("arguments", {})
        if isinstance(args, str):  # some models send the arguments JSON-encoded
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        error = validate(name, args)
        calls.append(
            ToolCall(
                name if isinstance(name, str) else None,
                args if isinstance(args, dict) else {},
                error,
            )
        )
    return calls


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def calculate(expression: str) -> str:
    """Evaluate + − × / // % and parentheses over numbers (no names, no powers)."""

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = ev(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("only numbers, + - * / // % and parentheses are allowed")

    try:
        value = ev(ast.parse(expression.replace("×", "*"), mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError) as err:
        return f"error: {err}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


def run_tool(call: ToolCall, files: dict[str, str]) -> str:
    """The tool message content for one call on the workspace `files` (errors as text)."""
    if call.error is not None:
        return f"error: {call.error}"
    arg = next(iter(call.arguments.values()))
    if call.name == "calculator":
        out = calculate(arg)
    elif call.name == "read_file":
        out = files.get(arg.strip(), f"error: no such file: {arg}")
    else:
        needle = arg.strip().lower()
        hits = [
            f"{path}:{no}: {line}"
            for path, text in sorted(files.items())
            for no, line in enumerate(text.splitlines(), 1)
            if needle and needle in line.lower()
        ]
        out = "\n".join(hits[:MAX_SEARCH_HITS]) if hits else "no matches"
    return out[:MAX_RESULT_CHARS]
