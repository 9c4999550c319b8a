"""One message of the conversation: a role label over its text (assistant text as Markdown)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Markdown, Static

ROLE_TITLES = {"user": "you", "assistant": "assistant", "system": "system", "tool": "tool"}


class MessageView(Vertical):
    """A message; assistant messages stream: `append` buffers text, `flush` renders it."""

    DEFAULT_CSS = """
    MessageView { height: auto; }
    MessageView > Markdown { margin: 0; padding: 0; }
    """

    def __init__(self, role: str, text: str = "", *, note: str | None = None) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.note = note
        self._shown = text

    def compose(self) -> ComposeResult:
        """Role label, then the body."""
        yield Label(ROLE_TITLES.get(self.role, self.role), classes="role")
        if self.role == "user":
            yield Static(self.text, classes="body", markup=False)
        else:
            yield Markdown(self.text, classes="body")
        if self.note:
            yield Label(self.note, classes="note")

    def append(self, text: str) -> None:
        """Add streamed text (rendered at the next `flush`)."""
        self.text += text

    async def flush(self) -> bool:
        """Render the text added since the last flush; True if anything changed."""
        if self.text == self._shown or self.role == "user":
            return False
        self._shown = self.text
        await self.query_one(Markdown).update(self.text)
        return True

    async def finish(self, text: str, note: str | None = None) -> None:
        """The final text of the turn (and a note such as 'stopped'), rendered now."""
        self.text = text
        await self.flush()
        if note and not self.note:
            self.note = note
            await self.mount(Label(note, classes="note"))
