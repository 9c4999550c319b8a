"""The sessions sidebar: a filter box over the sessions, with tokens, KV bytes, compression, age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from agentrt.tui.widgets.format import age, human_bytes, human_count


def entry_text(entry: Any, now: datetime, current: bool) -> Text:
    """Two lines: the name (marked when current / unsaved), then its numbers."""
    mark = "▶ " if current else "  "
    text = Text(mark, style="bold")
    text.append(entry.name, style="bold" if current else "")
    if entry.open and (entry.dirty or not entry.saved):
        text.append(" •", style="yellow")
    text.append(
        f"\n  {human_count(entry.tokens)} tok · {human_bytes(entry.kv_bytes)} · "
        f"CR {entry.compression_ratio:.1f} · {age(entry.last_used, now)}",
        style="dim",
    )
    return text


class Sidebar(Vertical):
    """Sessions, most recent first; selecting one posts `Sidebar.Selected`."""

    @dataclass
    class Selected(Message):
        """The user picked this session."""

        name: str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entries: list[Any] = []
        self.current: str | None = None
        self.now: datetime | None = None

    def compose(self) -> ComposeResult:
        """Title, filter, list, key hints."""
        yield Label("Sessions", classes="title")
        yield Input(placeholder="filter…", id="session-filter")
        yield OptionList(id="session-list")
        yield Label("^n new · ^f fork · f2 rename · del delete", classes="hint")

    def show(self, entries: list[Any], current: str | None, now: datetime) -> None:
        """Show these sessions (keeps the filter)."""
        self.entries, self.current, self.now = entries, current, now
        self._render_list()

    def _render_list(self) -> None:
        needle = self.query_one("#session-filter", Input).value.strip().lower()
        options = self.query_one("#session-list", OptionList)
        options.clear_options()
        shown = [e for e in self.entries if needle in e.name.lower()]
        options.add_options(
            [Option(entry_text(e, self.now, e.name == self.current), id=e.name) for e in shown]
        )
        names = [e.name for e in shown]
        if self.current in names:
            options.highlighted = names.index(self.current)

    @property
    def highlighted_name(self) -> str | None:
        """The name of the highlighted session, if any."""
        options = self.query_one("#session-list", OptionList)
        if options.highlighted is None:
            return None
        return options.get_option_at_index(options.highlighted).id

    @on(Input.Changed, "#session-filter")
    def _filter(self, event: Input.Changed) -> None:
        event.stop()
        self._render_list()

    @on(OptionList.OptionSelected, "#session-list")
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Selected(event.option.id))
