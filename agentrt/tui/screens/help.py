"""F1: the keys and slash commands."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# agentrt chat

Each session is a KV cache that lives on: saved sessions continue from their
checkpoint with no re-prefill.

## Keys

| key | does |
|---|---|
| `enter` | send |
| `shift+enter`, `ctrl+j` | new line |
| `up` / `down` | walk the input history |
| `ctrl+c` | stop the answer (the partial answer stays) |
| `ctrl+s` | save the session now |
| `ctrl+n` | new session |
| `ctrl+f` | fork the session |
| `f2` | rename the session |
| `delete` (sidebar) | delete the session |
| `f3` | session panel |
| `h` (panel open) | compression per head / per layer |
| `ctrl+b` | sidebar |
| `ctrl+p` | command palette |
| `f1` | this help |
| `ctrl+q` | save and quit |

## Slash commands

| command | does |
|---|---|
| `/save` | save the session now |
| `/fork NAME` | fork into a new session |
| `/new [NAME]` | start a new session |
| `/system TEXT` | system prompt (for an empty session, else for new ones) |
| `/tools [on\\|off]` | list the tools, or turn them on/off for new sessions |
| `/stats` | the session's numbers |
| `/help` | this help |
"""


class HelpScreen(ModalScreen[None]):
    """Keys and slash commands; Esc, q or F1 closes it."""

    BINDINGS = [Binding("escape,q,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        """The help text."""
        with VerticalScroll(classes="dialog help"):
            yield Markdown(HELP)
