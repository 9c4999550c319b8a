"""Progress of `agentrt run`: inputs done, tokens/s, KV memory and compression (rich, on stderr)."""

from __future__ import annotations

from typing import Any

from agentrt.dms.budget import format_bytes


def human_bytes(n: float) -> str:
    """1536 → '1.5 KiB'."""
    return format_bytes(int(n), digits=1)


class NullDisplay:
    """Shows nothing (library use, `--quiet`)."""

    def start(self, total: int, done: int) -> None:
        """A run of `total` inputs starts, `done` of them already finished."""

    def begin(self, input_id: str) -> None:
        """An input starts."""

    def tool_call(self, call: Any) -> None:
        """The model called a tool."""

    def end(self, record: dict[str, Any]) -> None:
        """An input ended with this JSONL record."""

    def note(self, text: str) -> None:
        """A one-line status message."""

    def stop(self) -> None:
        """The run ended."""


class RichDisplay(NullDisplay):
    """A progress bar with tokens/s, KV bytes and compression; one line per input and tool call."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.progress: Any = None
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        """Show the bar."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("inputs", total=total, completed=done, stats="")

    def begin(self, input_id: str) -> None:
        """Name the running input."""
        if self.progress is not None:
            self.progress.update(self.task, description=f"input {input_id}")

    def tool_call(self, call: Any) -> None:
        """Print the call (name and argument names only)."""
        args = ", ".join(sorted(call.arguments)) if call.arguments else ""
        what = (
            f"{call.name}({args})" if call.error is None else f"malformed call: {call.error[:80]}"
        )
        self.console.print(f"  [cyan]tool[/] {what}")

    def end(self, record: dict[str, Any]) -> None:
        """Advance the bar and print the answer's first line."""
        tps = record["timings"]["tokens_per_s"] or 0
        stats = (
            f"{tps:.0f} tok/s  KV {human_bytes(record['kv_bytes'])}  "
            f"×{record['compression_ratio']:.2f}"
        )
        colour = "green" if record["status"] == "done" else "red"
        first = (record["answer"].splitlines() or [""])[0][:100]
        self.console.print(f"[{colour}]{record['id']}[/] {record['status']}: {first}")
        if record["status"] != "done" and record.get("message"):
            self.console.print(f"  {record['message']}")
        if self.progress is not None:
            self.progress.update(self.task, advance=1, stats=stats)

    def note(self, text: str) -> None:
        """Print a status line."""
        self.console.print(text)

    def stop(self) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
