"""Per-step and cumulative engine telemetry, as dicts for the TUI and as structured logs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrt.dms.kv_pool import KVPool
    from agentrt.engine.scheduler import StepPlan

log = logging.getLogger("agentrt.telemetry")


@dataclass
class Telemetry:
    """Counters the engine updates after every step."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    busy_seconds: float = 0.0
    last: dict[str, Any] = field(default_factory=dict)

    def record_step(self, plan: StepPlan, seconds: float, pool: KVPool) -> dict[str, Any]:
        """Account one step and return its numbers."""
        self.steps += 1
        self.prefill_tokens += plan.num_prefill_tokens
        self.decode_tokens += plan.num_decode_tokens
        self.busy_seconds += seconds
        tokens = plan.num_prefill_tokens + plan.num_decode_tokens
        self.last = {
            "step": self.steps,
            "seconds": seconds,
            "sessions": len(plan.items),
            "prefill_tokens": plan.num_prefill_tokens,
            "decode_tokens": plan.num_decode_tokens,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "pool_used_blocks": pool.num_used,
            "pool_blocks": pool.num_blocks,
            "pool_occupancy": pool.num_used / pool.num_blocks,
            "deferred": len(plan.deferred),
            "swapped_out": len(plan.swap_out),
            "swapped_in": len(plan.swap_in),
        }
        log.debug("step", extra={"telemetry": self.last})
        return self.last

    def summary(self) -> dict[str, Any]:
        """Totals since the engine started."""
        total = self.prefill_tokens + self.decode_tokens
        return {
            "steps": self.steps,
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "tokens_per_s": total / self.busy_seconds if self.busy_seconds else 0.0,
            "decode_tokens_per_s": self.decode_tokens / self.busy_seconds
            if self.busy_seconds
            else 0.0,
        }
