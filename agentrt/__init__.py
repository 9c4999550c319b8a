"""agentrt: an agent runtime for long-lived LLM sessions with DMS-compressed, persistent KV caches."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from agentrt.errors import AgentRTError

if TYPE_CHECKING:
    from agentrt.engine import Engine, SamplingParams, Session

try:
    __version__ = version("agentrt")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

_LAZY = {
    "Engine": "agentrt.engine",
    "Session": "agentrt.engine",
    "SamplingParams": "agentrt.engine",
}


def __getattr__(name: str) -> Any:
    """Import the heavy public classes on first use, so `import agentrt` stays light."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentrt' has no attribute {name!r}")


__all__ = ["AgentRTError", "Engine", "SamplingParams", "Session", "__version__"]
