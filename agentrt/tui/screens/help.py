"""F1: the keys and slash commands."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from agentrt.tui.commands import COMMANDS

INTRO = (
    "Each session is a KV cache that lives on: a saved session continues from its "
    "checkpoint with no re-prefill. ctrl+q saves every session with news and quits."
)
KEYS = [
    ("enter", "send"),
    ("shift+enter, ctrl+j", "new line"),
    ("up / down", "walk the input history"),
    ("ctrl+c", "stop the answer (the partial answer stays)"),
    ("ctrl+s", "save the session now"),
    ("ctrl+n", "new session"),
    ("ctrl+f", "fork the session"),
    ("f2", "rename the session"),
    ("delete (sidebar)", "delete the session and its checkpoints"),
    ("f3", "session panel (h: per head / per layer)"),
    ("ctrl+b", "show / hide the sidebar"),
    ("ctrl+p", "command palette"),
    ("f1", "this help"),
    ("ctrl+q", "save and quit"),
]


def two_columns(rows: list[tuple[str, str]]) -> Table:
    """A borderless key | meaning table."""
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(no_wrap=True)
    table.add_column()
    for key, does in rows:
        table.add_row(Text(key, style="bold"), does)
    return table


class HelpScreen(ModalScreen[None]):
    """Keys and slash commands; Esc, q or F1 closes it."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        """Intro, keys, commands."""
        with VerticalScroll(classes="dialog help"):
            yield Label("agentrt chat", classes="title")
            yield Static(INTRO, classes="intro")
            yield Label("Keys", classes="subtitle")
            yield Static(two_columns(KEYS))
            yield Label("Slash commands", classes="subtitle")
            yield Static(two_columns([(f"/{name}", does) for name, does in COMMANDS.items()]))
            yield Label("esc: close", classes="hint")
