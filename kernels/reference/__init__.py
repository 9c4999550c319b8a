"""Pure-torch references of the kernels (same signatures as agentrt.kernels)."""

from agentrt.kernels.reference.copy_kv_slots import copy_kv_slots
from agentrt.kernels.reference.dms_prefill_attention import dms_prefill_attention
from agentrt.kernels.reference.paged_decode_attention import paged_decode_attention
from agentrt.kernels.reference.write_kv_slots import write_kv_slots

__all__ = [
    "copy_kv_slots",
    "dms_prefill_attention",
    "paged_decode_attention",
    "write_kv_slots",
]
