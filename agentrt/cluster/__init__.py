"""Scale-out on Ray: one Engine per replica actor, a sticky router, placements in the catalog.

Nothing here is imported unless a command runs with `--ray` (or a program imports it);
`ray` itself is imported only where actors are started (`agentrt.cluster.actor`).
See docs/SCALE_OUT.md.
"""

from __future__ import annotations

from agentrt.cluster.config import ClusterConfig, ReplicaConfig
from agentrt.cluster.errors import ReplicaLost
from agentrt.cluster.replica import Replica, ReplicaInfo, TurnResult
from agentrt.cluster.router import Router

__all__ = [
    "ClusterConfig",
    "Replica",
    "ReplicaConfig",
    "ReplicaInfo",
    "ReplicaLost",
    "Router",
    "TurnResult",
]
