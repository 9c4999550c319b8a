"""The DMS method: config, eviction decisions, decoder forwards, KV cache, training, baselines.

The public names are imported on first use (PEP 562), so importing a light submodule
(`agentrt.dms.budget`, `agentrt.dms.cache_math`) does not load torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrt.dms.config import DMSConfig
    from agentrt.dms.loader import load_model
    from agentrt.dms.model import DMSModel, add_adapters

_EXPORTS = {
    "DMSConfig": "agentrt.dms.config",
    "DMSModel": "agentrt.dms.model",
    "add_adapters": "agentrt.dms.model",
    "load_model": "agentrt.dms.loader",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentrt.dms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["DMSConfig", "DMSModel", "add_adapters", "load_model"]
