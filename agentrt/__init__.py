"""agentrt: an agent runtime for long-lived LLM sessions with DMS-compressed, persistent KV caches."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from agentrt.errors import AgentRTError

try:
    __version__ = version("agentrt")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["AgentRTError", "__version__"]
