"""The agent loop on `Session` + `tools.ToolRegistry`, and task files (`agentrt run`)."""

from agentrt.agent.callbacks import AgentCallbacks, ToolCallRecord
from agentrt.agent.loop import (
    Agent,
    AgentResult,
    ContextLimitError,
    ContextPolicy,
    Limits,
    generate_decoder,
    replay_decoder,
)

__all__ = [
    "Agent",
    "AgentCallbacks",
    "AgentResult",
    "ContextLimitError",
    "ContextPolicy",
    "Limits",
    "ToolCallRecord",
    "generate_decoder",
    "replay_decoder",
]
