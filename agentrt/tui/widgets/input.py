"""The prompt box: Enter sends, Shift+Enter or Ctrl+J adds a line, Up/Down walk the history."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = ("shift+enter", "ctrl+j", "alt+enter")


class ChatInput(TextArea):
    """A multi-line input whose Enter posts `ChatInput.Submitted` instead of a new line."""

    @dataclass
    class Submitted(Message):
        """The user sent this text."""

        text: str

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, show_line_numbers=False, **kwargs)
        self.sent: list[str] = []
        self._browse: int | None = None  # index into history while walking it

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text.strip()
            if text:
                self.sent.append(self.text)
                self._browse = None
                self.clear()
                self.post_message(self.Submitted(text))
            return
        if event.key in NEWLINE_KEYS:
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        if event.key == "up" and self.cursor_location[0] == 0 and self.sent:
            event.prevent_default()
            event.stop()
            self._browse = len(self.sent) - 1 if self._browse is None else max(self._browse - 1, 0)
            self.load_text(self.sent[self._browse])
            return
        if event.key == "down" and self._browse is not None and self.cursor_at_last_line:
            event.prevent_default()
            event.stop()
            self._browse += 1
            if self._browse >= len(self.sent):
                self._browse = None
                self.clear()
            else:
                self.load_text(self.sent[self._browse])
            return
        await super()._on_key(event)
