"""Training-free KV cache baselines behind the CachePolicy interface (DESIGN.md §2).

Each policy runs on the same paged pool as DMS, with a fixed slot budget per stream for a
fair comparison. Build the session caches with the policy's window:
`model.new_cache(pool, window=policy.window)`, then `model.step(batch, policy=policy)`.
"""

from agentrt.dms.policies.dense import DensePolicy
from agentrt.dms.policies.h2o import H2OPolicy
from agentrt.dms.policies.registry import POLICIES, POLICY_NAMES, make_policy
from agentrt.dms.policies.sliding_window import SlidingWindowPolicy
from agentrt.dms.policies.streaming_llm import StreamingLLMPolicy
from agentrt.dms.policies.tova import TOVAPolicy

__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "DensePolicy",
    "H2OPolicy",
    "SlidingWindowPolicy",
    "StreamingLLMPolicy",
    "TOVAPolicy",
    "make_policy",
]
