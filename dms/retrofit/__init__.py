"""`agentrt retrofit`: teach a Llama-family model DMS by self-distillation (docs/RETROFIT.md)."""

from agentrt.dms.retrofit.config import RetrofitConfig, load_config
from agentrt.dms.retrofit.trainer import REPORT_FILE, Retrofitter, retrofit

__all__ = ["REPORT_FILE", "RetrofitConfig", "Retrofitter", "load_config", "retrofit"]
