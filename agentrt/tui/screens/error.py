"""A fatal error (the model did not load...) as a screen with the message and hint, no traceback."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Label, Static


class ErrorScreen(Screen[None]):
    """Shows what went wrong and what to do; Enter, q or Esc quits the app."""

    BINDINGS = [Binding("q,escape,enter", "app.quit", "Quit")]

    def __init__(self, title: str, message: str, hint: str | None = None) -> None:
        super().__init__()
        self.error_title = title
        self.message = message
        self.hint = hint

    def compose(self) -> ComposeResult:
        """Title, message, hint, quit button."""
        with Vertical(classes="dialog error"):
            yield Label(self.error_title, classes="title", id="error-title")
            yield Static(self.message, id="error-message", markup=False)
            if self.hint:
                yield Static(f"hint: {self.hint}", id="error-hint", markup=False)
            yield Button("Quit", id="quit", variant="error")

    @on(Button.Pressed, "#quit")
    def _quit(self) -> None:
        self.app.exit(return_code=1)
