"""Streaming callbacks of the agent loop: tokens, tool calls, tool results, turns, context events.

Subclass `AgentCallbacks` and override what you need; every method is a no-op by default.
The TUI, the HTTP server and `agentrt run` each pass their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCallRecord:
    """One tool call the model made: name, arguments, the result text or the error text."""

    name: str | None
    arguments: dict[str, Any] = field(repr=False)
    result: str | None = field(default=None, repr=False)
    error: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the output JSONL)."""
        return {
            "name": self.name,
            "arguments": self.arguments,
            "result": self.result,
            "error": self.error,
            "seconds": round(self.seconds, 4),
        }


class AgentCallbacks:
    """Hooks the loop calls while it runs (all optional; exceptions propagate)."""

    def on_token(self, text: str) -> None:
        """A piece of the assistant's text (stable UTF-8; may be empty-free chunks of a token)."""

    def on_turn_end(self, text: str, finish: str) -> None:
        """An assistant turn ended (`finish`: "stop", "length", "context_limit", "interrupted")."""

    def on_tool_call(self, call: ToolCallRecord) -> None:
        """The model asked for a tool call (before it runs; `call.error` set if it is malformed)."""

    def on_tool_result(self, call: ToolCallRecord) -> None:
        """A tool call finished: `call.result` or `call.error` is set."""

    def on_prefill(self, tokens: int, how: str) -> None:
        """New messages were prefilled onto the cache (`how`: "full", "diff" or "explicit")."""

    def on_rollover(self, summary: str, old_session: Any, new_session: Any) -> None:
        """The context was full: the conversation continues in a new session seeded with a summary."""


__all__ = ["AgentCallbacks", "ToolCallRecord"]
