"""Swapping sessions out of the KV pool: to CPU memory first, then to engine-private disk files.

A swapped session keeps its packed cache state (layout independent of the pool's block
size, see `agentrt.sessions.checkpoint.cache_state`); swapping in restores it into free
blocks. The least recently used idle, unpinned session goes first.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrt.errors import SessionError

log = logging.getLogger(__name__)


@dataclass
class SwapRecord:
    """Where a swapped-out session's cache state lives."""

    tier: str  # "cpu" or "disk"
    nbytes: int
    slots: int
    tokens: int
    blocks: int  # pool blocks needed to restore it
    state: dict | None = None  # CPU tensors while tier == "cpu"
    path: Path | None = None  # safetensors file while tier == "disk"


class SwapManager:
    """Moves idle sessions between the pool, CPU memory and disk."""

    def __init__(self, engine: Any, cpu_budget: int, swap_dir: str | Path | None) -> None:
        self.engine = engine
        self.cpu_budget = cpu_budget
        self._dir = Path(swap_dir) if swap_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.cpu_bytes = 0
        self.swaps_out = 0
        self.swaps_in = 0
        self.spills = 0

    # -- policy --------------------------------------------------------------------------
    def evict_one(self, protected: set[str]) -> bool:
        """Swap out the least recently used idle, unpinned, resident session; False if none."""
        candidates = [
            s
            for s in self.engine.sessions.values()
            if s.cache is not None and not s.pinned and s.active is None and s.id not in protected
        ]
        if not candidates:
            return False
        self.swap_out(min(candidates, key=lambda s: s.last_used))
        return True

    def ensure_resident(
        self, session: Any, protected: set[str] | None = None, reserved: int = 0
    ) -> bool:
        """Bring a swapped session back into the pool (evicting others); False if it cannot fit."""
        record: SwapRecord | None = session.swapped
        if session.cache is not None:
            return True
        if record is None:
            raise SessionError(f"session {session.name!r} has no KV state (closed or lost)")
        pool = self.engine.pool
        guard = set(protected or ()) | {session.id}
        while pool.num_free - reserved < record.blocks:
            if not self.evict_one(guard):
                return False
        self.swap_in(session)
        return True

    # -- moves -----------------------------------------------------------------------------
    def swap_out(self, session: Any) -> None:
        """Pool → CPU (pinned when the pool is on a GPU); may spill older CPU records to disk."""
        from agentrt.sessions.checkpoint import cache_state

        cache = session.cache
        state = cache_state(cache)
        if cache.pool.device.type == "cuda":
            state = {k: v.pin_memory() for k, v in state.items()}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        record = SwapRecord(
            tier="cpu",
            nbytes=nbytes,
            slots=cache.slots_held,
            tokens=cache.next_pos,
            blocks=self._blocks_for(cache),
            state=state,
        )
        cache.free()
        session.cache = None
        session.swapped = record
        self.cpu_bytes += nbytes
        self.swaps_out += 1
        log.info("swapped out session %s (%d slots)", session.name, record.slots)
        self._spill_over_budget()

    def swap_in(self, session: Any) -> None:
        """CPU or disk → pool."""
        from agentrt.sessions.checkpoint import restore_cache

        record: SwapRecord = session.swapped
        if record.tier == "disk":
            from safetensors.torch import load_file

            state = load_file(str(record.path))
            record.path.unlink(missing_ok=True)
        else:
            state = record.state
            self.cpu_bytes -= record.nbytes
        session.cache = restore_cache(state, self.engine.pool, window=self.engine.window)
        session.swapped = None
        self.swaps_in += 1
        log.info("swapped in session %s", session.name)

    def discard(self, session: Any) -> None:
        """Forget a closed session's swapped state."""
        record: SwapRecord | None = session.swapped
        if record is None:
            return
        if record.tier == "cpu":
            self.cpu_bytes -= record.nbytes
        elif record.path is not None:
            record.path.unlink(missing_ok=True)
        session.swapped = None

    def _spill_over_budget(self) -> None:
        while self.cpu_bytes > self.cpu_budget:
            in_cpu = [
                s
                for s in self.engine.sessions.values()
                if s.swapped is not None and s.swapped.tier == "cpu"
            ]
            if not in_cpu:
                return
            victim = min(in_cpu, key=lambda s: s.last_used)
            self._spill(victim)

    def _spill(self, session: Any) -> None:
        from safetensors.torch import save_file

        record: SwapRecord = session.swapped
        path = self.swap_dir / f"{session.id}.safetensors"
        save_file({k: v.contiguous() for k, v in record.state.items()}, str(path))
        path.chmod(0o600)
        record.state, record.path, record.tier = None, path, "disk"
        self.cpu_bytes -= record.nbytes
        self.spills += 1
        log.info("spilled session %s to disk", session.name)

    @property
    def swap_dir(self) -> Path:
        """Folder of swap files (a private temp folder unless the engine was given one)."""
        if self._dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agentrt-swap-")
            self._dir = Path(self._tmp.name)
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._dir

    def _blocks_for(self, cache: Any) -> int:
        bs = cache.pool.block_size
        return sum(-(-n // bs) for row in cache.lens for n in row)

    # -- reporting -------------------------------------------------------------------------
    def blocks_to_restore(self, session: Any) -> int:
        """Pool blocks a swapped session needs to come back."""
        return session.swapped.blocks if session.swapped is not None else 0

    def where(self, session: Any) -> str:
        """ "cpu" or "disk" for a swapped session."""
        return session.swapped.tier if session.swapped is not None else "pool"

    def stats_of(self, session: Any) -> dict[str, Any]:
        """Token and slot counts of a swapped session."""
        r: SwapRecord = session.swapped
        ratio = r.tokens * self._streams() / r.slots if r.slots else 1.0
        return {
            "tokens": r.tokens,
            "slots": r.slots,
            "kv_bytes": 0,
            "swap_bytes": r.nbytes,
            "compression_ratio": ratio,
        }

    def _streams(self) -> int:
        arch = self.engine.model.arch
        return arch.num_layers * arch.num_kv_heads

    def counters(self) -> dict[str, int]:
        """Swap counters for telemetry."""
        return {
            "swaps_out": self.swaps_out,
            "swaps_in": self.swaps_in,
            "spills": self.spills,
            "cpu_swap_bytes": self.cpu_bytes,
        }
