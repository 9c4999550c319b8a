"""When a save writes a full checkpoint or a delta, and which checkpoints automatic retention removes.

Retention keeps, per session, the newest `keep` restore points (a restore point is any
checkpoint; a kept delta keeps every link its chain needs), every labelled checkpoint
(`agentrt sessions tag NAME LABEL`) with its chain, and everything of a pinned session.
The engine prunes a session right after each save, holding the session's lock; `agentrt
sessions gc --keep N` applies the same rule to sessions no process has open. Rows go before
files (children first), so a crash in between leaves only orphaned files for `gc`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentrt.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agentrt.sessions.layout import SessionLayout
    from agentrt.sessions.records import CheckpointInfo
    from agentrt.sessions.store import SessionStore

DEFAULT_KEEP = 3
DEFAULT_MAX_DELTAS = 64
DEFAULT_CHAIN_RATIO = 0.5


@dataclass(frozen=True)
class CheckpointPolicy:
    """How saves chain and how many restore points a session keeps.

    keep: newest restore points kept per session after every save (None: never prune);
    max_deltas: deltas on one full checkpoint before the next save writes a full one;
    chain_ratio: a full checkpoint is written instead of a delta once the deltas since the
    last full one would exceed this fraction of a full checkpoint's bytes (so a restore
    reads at most 1 + chain_ratio full checkpoints' worth).
    """

    keep: int | None = DEFAULT_KEEP
    max_deltas: int = DEFAULT_MAX_DELTAS
    chain_ratio: float = DEFAULT_CHAIN_RATIO

    def __post_init__(self) -> None:
        if self.keep is not None and self.keep < 1:
            raise ConfigError(
                f"checkpoint retention keep={self.keep} would delete every restore point",
                hint="keep at least 1 (the default is 3), or None to never prune",
            )
        if self.max_deltas < 0 or not 0.0 <= self.chain_ratio <= 10.0:
            raise ConfigError(
                f"bad checkpoint chain settings max_deltas={self.max_deltas}, "
                f"chain_ratio={self.chain_ratio}",
                hint="max_deltas ≥ 0 (0: every save is full) and 0 ≤ chain_ratio ≤ 10",
            )

    def wants_full(self, chain_bytes: int, deltas: int, delta_bytes: int, full_bytes: int) -> bool:
        """Whether the next save should be a full checkpoint rather than this delta."""
        return deltas + 1 > self.max_deltas or chain_bytes + delta_bytes > self.chain_ratio * max(
            full_bytes, 1
        )


def to_prune(rows: Sequence[CheckpointInfo], keep: int) -> list[CheckpointInfo]:
    """The checkpoints of one session that retention removes, newest first (children before
    parents): all but the newest `keep`, the labelled ones and the links their chains need."""
    from agentrt.sessions.chain import needed_by

    newest = sorted(rows, key=lambda c: c.created_at, reverse=True)
    kept = {c.id for c in newest[:keep]} | {c.id for c in rows if c.label}
    need = needed_by(rows, kept)
    return [c for c in newest if c.id not in need]


def prune_session(
    store: SessionStore,
    layout: SessionLayout,
    session_id: str,
    keep: int,
    *,
    dry_run: bool = False,
    say: Callable[[CheckpointInfo, int], None] | None = None,
) -> int:
    """Apply retention to one session (its lock held by the caller); returns bytes freed.

    Skips pinned sessions. Each row is deleted before its file; a row that became the base
    of a newer delta meanwhile (the store refuses it) is kept.
    """
    from agentrt.errors import CheckpointError

    info = store.get_session(session_id)
    if info.pinned:
        return 0
    freed = 0
    for c in to_prune(store.checkpoints(session_id), keep):
        path = layout.resolve(c.file)
        size = path.stat().st_size if path.is_file() else 0
        if not dry_run:
            try:
                store.delete_checkpoint(c.id)
            except CheckpointError:
                continue
            path.unlink(missing_ok=True)
        freed += size
        if say is not None:
            say(c, size)
    return freed


__all__ = [
    "DEFAULT_CHAIN_RATIO",
    "DEFAULT_KEEP",
    "DEFAULT_MAX_DELTAS",
    "CheckpointPolicy",
    "prune_session",
    "to_prune",
]
