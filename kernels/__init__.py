"""Paged DMS attention kernels (Triton) with pure-torch references and device dispatch."""

from agentrt.kernels._validate import KEEP_FOREVER
from agentrt.kernels.copy_kv_slots import copy_kv_slots
from agentrt.kernels.dispatch import backend_for
from agentrt.kernels.dms_prefill_attention import dms_prefill_attention
from agentrt.kernels.paged_decode_attention import (
    choose_num_splits,
    num_sms,
    paged_decode_attention,
)
from agentrt.kernels.write_kv_slots import write_kv_slots

__all__ = [
    "KEEP_FOREVER",
    "backend_for",
    "choose_num_splits",
    "copy_kv_slots",
    "dms_prefill_attention",
    "num_sms",
    "paged_decode_attention",
    "write_kv_slots",
]
