"""Swapping sessions out of the KV pool: to CPU memory first, then to engine-private disk files.

A swapped session keeps its packed cache state (`SessionCache.state_dict()`, independent of
the pool's block size); swapping in restores it with `SessionCache.from_state`. The swap
manager gets the pool and the engine's session registry, nothing else; which session to
move is decided by the planner (`agentrt.engine.memory`), not here.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentrt.errors import SessionError

if TYPE_CHECKING:
    import torch

    from agentrt.dms.kv_pool import KVPool
    from agentrt.engine.registry import SessionRegistry
    from agentrt.engine.session import Session

log = logging.getLogger(__name__)


@dataclass
class SwapRecord:
    """Where a swapped-out session's cache state lives."""

    tier: str  # "cpu" or "disk"
    nbytes: int
    tokens: int
    lens: list[list[int]]  # [layers][kv heads] live slots per stream
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # tier "cpu"
    path: Path | None = None  # safetensors file while tier == "disk"

    @property
    def slots(self) -> int:
        """Live slots over all streams."""
        return sum(map(sum, self.lens))


class SwapManager:
    """Moves idle sessions between the pool, CPU memory and disk."""

    def __init__(
        self,
        pool: KVPool,
        registry: SessionRegistry,
        *,
        window: int,
        cpu_budget: int,
        swap_dir: str | Path | None,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.window = window
        self.cpu_budget = cpu_budget
        self._dir = Path(swap_dir) if swap_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.cpu_bytes = 0
        self.swaps_out = 0
        self.swaps_in = 0
        self.spills = 0

    # -- moves -----------------------------------------------------------------------------
    def swap_out(self, session: Session) -> None:
        """Pool → CPU (pinned when the pool is on a GPU); may spill older CPU records to disk."""
        cache = session.cache
        assert cache is not None, f"session {session.name!r} is not resident"
        state = cache.state_dict()
        if self.pool.device.type == "cuda":
            state = {k: v.pin_memory() for k, v in state.items()}
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        record = SwapRecord(
            tier="cpu",
            nbytes=nbytes,
            tokens=cache.next_pos,
            lens=[list(row) for row in cache.lens],
            state=state,
        )
        cache.free()
        session.cache = None
        session.swapped = record
        self.cpu_bytes += nbytes
        self.swaps_out += 1
        log.info("swapped out session %s (%d slots)", session.name, record.slots)
        self._spill_over_budget()

    def swap_in(self, session: Session) -> None:
        """CPU or disk → pool (the caller made room: `blocks_to_restore` blocks are free)."""
        from agentrt.dms.session_cache import SessionCache

        record = session.swapped
        if record is None:
            raise SessionError(f"session {session.name!r} has no KV state (closed or lost)")
        if record.tier == "disk":
            from safetensors.torch import load_file

            assert record.path is not None
            state = load_file(str(record.path))
            record.path.unlink(missing_ok=True)
        else:
            assert record.state is not None
            state = record.state
            self.cpu_bytes -= record.nbytes
        session.cache = SessionCache.from_state(state, self.pool, window=self.window)
        session.swapped = None
        self.swaps_in += 1
        log.info("swapped in session %s", session.name)

    def discard(self, session: Session) -> None:
        """Forget a closed session's swapped state."""
        record = session.swapped
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
                for s in self.registry.values()
                if s.swapped is not None and s.swapped.tier == "cpu"
            ]
            if not in_cpu:
                return
            self._spill(min(in_cpu, key=lambda s: s.last_used))

    def _spill(self, session: Session) -> None:
        from safetensors.torch import save_file

        record = session.swapped
        assert record is not None and record.state is not None
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
        from agentrt.sessions.atomic import ensure_private_dir

        ensure_private_dir(self._dir)
        return self._dir

    # -- reporting -------------------------------------------------------------------------
    def blocks_to_restore(self, session: Session) -> int:
        """Pool blocks a swapped session needs to come back."""
        r = session.swapped
        return self.pool.spec.blocks_for_streams(r.lens) if r is not None else 0

    def where(self, session: Session) -> str:
        """ "cpu" or "disk" for a swapped session."""
        return session.swapped.tier if session.swapped is not None else "pool"

    def stats_of(self, session: Session) -> dict[str, int | float]:
        """Token and slot counts of a swapped session."""
        from agentrt.dms.cache_spec import compression_ratio

        r = session.swapped
        assert r is not None
        return {
            "tokens": r.tokens,
            "slots": r.slots,
            "kv_bytes": 0,
            "swap_bytes": r.nbytes,
            "compression_ratio": compression_ratio(r.tokens, r.lens),
        }

    def counters(self) -> dict[str, int]:
        """Swap counters for telemetry."""
        return {
            "swaps_out": self.swaps_out,
            "swaps_in": self.swaps_in,
            "spills": self.spills,
            "cpu_swap_bytes": self.cpu_bytes,
        }
