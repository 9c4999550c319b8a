"""Ask for a name (new session, fork, rename) as a modal screen."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class NameScreen(ModalScreen[str | None]):
    """Dismisses with the typed name (Enter), or None (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, prompt: str, value: str = "") -> None:
        super().__init__()
        self.prompt = prompt
        self.value = value

    def compose(self) -> ComposeResult:
        """The prompt over an input."""
        with Vertical(classes="dialog"):
            yield Label(self.prompt, classes="question")
            yield Input(value=self.value, id="name")
            yield Label("enter: ok   esc: cancel", classes="hint")

    def action_cancel(self) -> None:
        """Close without a name."""
        self.dismiss(None)

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)
