"""The runtime core: Engine, Session, scheduler, memory and swap, persistence glue, sampling.

See docs/ENGINE.md for who owns what and the path of one token through these files.
"""

from __future__ import annotations

from agentrt.engine.engine import Engine, resolve_device
from agentrt.engine.persistence import AutosavePolicy
from agentrt.engine.sampling import SamplingParams
from agentrt.engine.scheduler import SchedulerConfig
from agentrt.engine.session import Session, TokenStream

__all__ = [
    "AutosavePolicy",
    "Engine",
    "SamplingParams",
    "SchedulerConfig",
    "Session",
    "TokenStream",
    "resolve_device",
]
