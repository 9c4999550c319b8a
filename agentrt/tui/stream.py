"""The bridge from the agent loop's callbacks (a worker thread) to the UI (the event loop).

Tokens are only buffered here (a lock, no UI call per token); the screen drains the
buffer on a timer, so a fast model costs one Markdown render per tick, not per token.
Turn ends, tool calls and prefill progress are forwarded at once with
`app.call_from_thread`, which waits for the UI, so they stay in order with the text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from agentrt.agent import AgentCallbacks, ToolCallRecord

Timer = Callable[[], float]


class TokenBuffer:
    """Streamed text waiting for the next UI tick, with token count and first-token time."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self._lock = threading.Lock()
        self._text: list[str] = []
        self.tokens = 0
        self.first_at: float | None = None

    def reset(self) -> None:
        """Forget counts (a new input starts)."""
        with self._lock:
            self._text.clear()
            self.tokens = 0
            self.first_at = None

    def push(self, text: str) -> None:
        """Add one streamed piece (called per token, from the worker thread)."""
        with self._lock:
            if self.first_at is None:
                self.first_at = self.timer()
            self._text.append(text)
            self.tokens += 1

    def take(self) -> str:
        """Everything buffered since the last take."""
        with self._lock:
            text = "".join(self._text)
            self._text.clear()
            return text

    def rate(self) -> float | None:
        """Streamed pieces per second since the first one (None before two pieces)."""
        with self._lock:
            if self.first_at is None or self.tokens < 2:
                return None
            seconds = self.timer() - self.first_at
            return self.tokens / seconds if seconds > 0 else None


class UICallbacks(AgentCallbacks):
    """Agent-loop callbacks that feed a screen: `screen` implements the `on_*` coroutines below."""

    def __init__(self, app: Any, screen: Any, buffer: TokenBuffer) -> None:
        self.app = app
        self.screen = screen
        self.buffer = buffer

    def _ui(self, fn: Callable[..., Any], *args: Any) -> None:
        self.app.call_from_thread(fn, *args)

    def on_token(self, text: str) -> None:
        """Buffer the piece; the screen's timer renders it."""
        self.buffer.push(text)

    def on_turn_end(self, text: str, finish: str) -> None:
        """Render the rest of the turn and its final text."""
        self._ui(self.screen.turn_ended, text, finish)

    def on_tool_call(self, call: ToolCallRecord) -> None:
        """Show a tool block."""
        self._ui(self.screen.tool_called, call.name, dict(call.arguments), call.error)

    def on_tool_result(self, call: ToolCallRecord) -> None:
        """Fill the tool block."""
        self._ui(self.screen.tool_finished, call.result, call.error)

    def on_prefill(self, tokens: int, how: str) -> None:
        """Report the prefill (progress)."""
        self._ui(self.screen.prefilled, tokens, how)

    def on_rollover(self, summary: str, old_session: Any, new_session: Any) -> None:
        """Tell the user the conversation moved to a new session."""
        self._ui(self.screen.rolled_over, old_session.name, new_session.name)
