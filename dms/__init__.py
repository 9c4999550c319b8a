"""The DMS method: config, eviction decisions, decoder forwards, KV cache, training, baselines."""

from agentrt.dms.config import DMSConfig
from agentrt.dms.loader import load_model
from agentrt.dms.model import DMSModel, add_adapters

__all__ = ["DMSConfig", "DMSModel", "add_adapters", "load_model"]
