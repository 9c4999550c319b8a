"""The status bar: model, device, tokens/s, KV memory against a dense cache, compression, pool."""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import Static

from agentrt.tui.widgets.format import human_bytes


@dataclass
class Status:
    """What the status bar shows (None: not known yet)."""

    model: str = "loading…"
    device: str = "-"
    tokens_per_s: float | None = None
    kv_bytes: int = 0
    dense_bytes: int = 0
    compression_ratio: float | None = None
    pool_used: float | None = None  # fraction of the pool's blocks in use
    state: str = ""


def status_line(s: Status) -> str:
    """One line: `model · device · tok/s · KV x of dense y · CR · pool n% · state`."""
    tps = f"{s.tokens_per_s:.1f} tok/s" if s.tokens_per_s is not None else "- tok/s"
    cr = f"CR {s.compression_ratio:.2f}×" if s.compression_ratio is not None else "CR -"
    pool = f"pool {s.pool_used * 100:.0f}%" if s.pool_used is not None else "pool -"
    kv = f"KV {human_bytes(s.kv_bytes)} / dense {human_bytes(s.dense_bytes)}"
    parts = [s.model, s.device, tps, kv, cr, pool]
    if s.state:
        parts.append(s.state)
    return " │ ".join(parts)


class StatusBar(Static):
    """A one-line bar under the conversation; `set(**fields)` updates it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(status_line(Status()), markup=False, **kwargs)
        self.status = Status()

    def set(self, **fields) -> None:
        """Change some fields and redraw."""
        for key, value in fields.items():
            setattr(self.status, key, value)
        self.update(status_line(self.status))
