"""The session panel: compression per layer (per head on demand), checkpoints, save now."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Button, Label, Static

from agentrt.tui.widgets.format import human_bytes

CHART_ROWS = 4
BLOCKS = " ▁▂▃▄▅▆▇█"
SPARK = "▁▂▃▄▅▆▇█"


def layer_bars(per_layer: list[float], rows: int = CHART_ROWS) -> Text:
    """A small column chart, one column per layer (height ~ its compression ratio), with an axis."""
    if not per_layer:
        return Text("no layers", style="dim")
    top = max(per_layer) or 1.0
    n = len(per_layer)
    col = 2 if n <= 12 else 1  # few layers: wider columns
    gap = " " if n <= 20 else ""
    text = Text()
    for row in range(rows - 1, -1, -1):
        cells = (BLOCKS[max(0, min(8, round(r / top * rows * 8) - row * 8))] for r in per_layer)
        text.append("".join(c * col + gap for c in cells), style="green")
        text.append(f" {top:.1f}×\n" if row == rows - 1 else "\n", style="dim")
    width = n * (col + len(gap))
    last = f"L{n - 1}"
    text.append("L0" + last.rjust(max(width - 2, len(last) + 1)) + "\n", style="dim")
    mean = sum(per_layer) / len(per_layer)
    text.append(f"min {min(per_layer):.2f}×  mean {mean:.2f}×  max {top:.2f}×\n")
    return text


def head_grid(per_head: list[list[float]]) -> Text:
    """One row per layer, one block character per KV head (height ~ its compression ratio)."""
    text = Text()
    top = max((r for row in per_head for r in row), default=1.0) or 1.0
    for i, row in enumerate(per_head):
        text.append(f"L{i:<3}", style="dim")
        for r in row:
            text.append(SPARK[min(len(SPARK) - 1, int((len(SPARK) - 1) * r / top))], style="cyan")
        text.append(f"  max {max(row, default=0):.1f}×\n", style="dim")
    return text


def checkpoint_lines(checkpoints: list[Any]) -> Text:
    """Newest first: local time, size, tokens, compression."""
    if not checkpoints:
        return Text("not saved yet (ctrl+s or /save)", style="dim")
    text = Text()
    for c in reversed(checkpoints[-8:]):
        when = c.created_at.astimezone().strftime("%m-%d %H:%M:%S")
        text.append(
            f"{when}  {human_bytes(c.size_bytes):>9}  {c.tokens} tok  CR {c.compression_ratio:.2f}\n"
        )
    return text


class SessionPanel(VerticalScroll):
    """Shows one session's compression and checkpoints; the button posts `SaveRequested`."""

    class SaveRequested(Message):
        """The user asked to save the session now."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.per_head = False

    def compose(self) -> ComposeResult:
        """Title, compression chart, checkpoints, save button."""
        yield Label("Session", classes="title", id="panel-title")
        yield Label("", id="panel-numbers")
        yield Label("compression per layer  (h: per head)", classes="subtitle", id="chart-title")
        yield Static(id="chart")
        yield Label("checkpoints", classes="subtitle")
        yield Static(id="checkpoints")
        yield Button("Save now", id="save-now", variant="primary")

    def show(self, name: str, stats: dict[str, Any], checkpoints: list[Any], now: datetime) -> None:
        """Redraw for this session's stats and checkpoints."""
        del now  # times are shown as they are
        tokens = stats.get("tokens", 0)
        self.query_one("#panel-title", Label).update(name)
        self.query_one("#panel-numbers", Label).update(
            f"{tokens} tok · KV {human_bytes(stats.get('kv_bytes', 0))} "
            f"of dense {human_bytes(stats.get('dense_bytes', 0))} · "
            f"CR {stats.get('compression_ratio', 1.0):.2f}×"
        )
        if self.per_head:
            self.query_one("#chart-title", Label).update("compression per KV head  (h: per layer)")
            chart = head_grid(stats.get("compression_per_layer_head") or [])
        else:
            self.query_one("#chart-title", Label).update("compression per layer  (h: per head)")
            chart = layer_bars(stats.get("compression_per_layer") or [])
        self.query_one("#chart", Static).update(
            chart if tokens else Text("empty session", style="dim")
        )
        self.query_one("#checkpoints", Static).update(checkpoint_lines(checkpoints))

    @on(Button.Pressed, "#save-now")
    def _save(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.SaveRequested())
